//! The local runner's reports (published as envelopes, source `local`) go the same way.

use prx_ci_build_watcher::REPORTS_CONSUMER;
use prx_ci_proto::v1::envelope::Payload;
use prx_ci_shared::bus::envelope::new_event_id;
use prx_ci_shared::codebuild::event::{
    self, AdditionalInformation, CodeBuildEvent, Detail, Environment, EnvironmentVariable,
    NameValue, Phase,
};
use prx_ci_shared::testing::wait_until;

use crate::utils::{COMMIT, REPO, WAIT, World, completed, names, test_config};

const PHASES: [&str; 4] = ["INSTALL", "PRE_BUILD", "BUILD", "POST_BUILD"];

/// What the local runner writes: the CodeBuild event shape, `local:` ids, no region.
fn local_event(
    build_id: &str,
    detail_type: &str,
    status: Option<&str>,
    phase: Option<&str>,
    ended: usize,
    exported: bool,
) -> serde_json::Value {
    let at = |s: u32| format!("Nov 26, 2026 8:00:{s:02} AM");
    let phases = PHASES[..ended]
        .iter()
        .enumerate()
        .map(|(i, p)| Phase {
            phase_type: (*p).into(),
            phase_status: Some("SUCCEEDED".into()),
            start_time: Some(at(u32::try_from(i).unwrap() * 2)),
            end_time: Some(at(u32::try_from(i).unwrap() * 2 + 2)),
            duration_in_seconds: Some(2),
            phase_context: vec![],
        })
        .collect();
    let event = CodeBuildEvent {
        version: "0".into(),
        id: new_event_id(),
        detail_type: detail_type.into(),
        source: event::SOURCE.into(),
        time: "2026-11-26T08:00:09Z".into(),
        detail: Detail {
            build_status: status.map(Into::into),
            project_name: "local".into(),
            build_id: build_id.into(),
            completed_phase: phase.map(Into::into),
            completed_phase_status: phase.map(|_| "SUCCEEDED".into()),
            completed_phase_duration_seconds: phase.map(|_| 2),
            additional_information: AdditionalInformation {
                build_start_time: Some(at(0)),
                environment: Environment {
                    environment_variables: vec![
                        EnvironmentVariable {
                            name: "PRX_REPO".into(),
                            value: REPO.into(),
                            kind: "PLAINTEXT".into(),
                        },
                        EnvironmentVariable {
                            name: "PRX_COMMIT".into(),
                            value: COMMIT.into(),
                            kind: "PLAINTEXT".into(),
                        },
                    ],
                    ..Environment::default()
                },
                phases,
                exported_environment_variables: if exported {
                    vec![NameValue {
                        name: "DOVETAIL_INSIGHTS".into(),
                        value: format!("github/prx/dovetail-insights:{COMMIT}-x86_64"),
                    }]
                } else {
                    vec![]
                },
                ..AdditionalInformation::default()
            },
            ..Detail::default()
        },
        ..CodeBuildEvent::default()
    };
    serde_json::to_value(event).unwrap()
}

#[tokio::test]
async fn a_local_build_goes_started_phases_completed_with_exported_variables() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = format!("local:{}", new_event_id());
    let requested = world.request(&build_id).await;

    world
        .report(
            &local_event(
                &build_id,
                event::STATE_CHANGE,
                Some("IN_PROGRESS"),
                None,
                0,
                false,
            ),
            "local",
        )
        .await;
    for (i, phase) in PHASES.iter().enumerate() {
        world
            .report(
                &local_event(
                    &build_id,
                    event::PHASE_CHANGE,
                    None,
                    Some(phase),
                    i + 1,
                    false,
                ),
                "local",
            )
            .await;
    }
    world
        .report(
            &local_event(
                &build_id,
                event::STATE_CHANGE,
                Some("SUCCEEDED"),
                None,
                4,
                true,
            ),
            "local",
        )
        .await;
    let events = world.until_completed(&build_id).await;
    assert_eq!(
        names(&events),
        [
            "started",
            "phase:INSTALL",
            "phase:PRE_BUILD",
            "phase:BUILD",
            "phase:POST_BUILD",
            "completed:SUCCEEDED"
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.correlation_id == requested.correlation_id)
    );
    let done = completed(&events);
    assert_eq!(
        done.variables["DOVETAIL_INSIGHTS"],
        format!("github/prx/dovetail-insights:{COMMIT}-x86_64")
    );
    assert_eq!(done.variables["PRX_REPO"], REPO);
    assert_eq!(done.exported_variables.len(), 1);
    // The dispatcher's request travels with the build (its buildspec left behind).
    let Some(Payload::BuildRequested(asked)) = &requested.payload else {
        panic!()
    };
    let carried = done
        .requested
        .as_ref()
        .expect("the request on BuildCompleted");
    assert_eq!(carried.environment, asked.environment);
    assert_eq!(carried.branch, "main");
    assert_eq!(carried.event_name, "push");
    assert_eq!(carried.source_version, COMMIT);
    assert!(carried.buildspec.is_empty(), "buildspec omitted");
    let carried_build = carried.build.as_ref().unwrap();
    assert_eq!(
        (
            carried_build.repository.as_str(),
            carried_build.commit.as_str()
        ),
        (REPO, COMMIT)
    );
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!()
    };
    assert_eq!(started.requested.as_ref(), Some(carried));
    assert_eq!(done.duration_ms, 8_000);
    assert_eq!(done.phases.len(), 4);
    let b = done.build.unwrap();
    assert_eq!(b.backend, "local");
    assert_eq!(b.build_id, build_id);
    let Some(Payload::BuildPhaseChanged(p)) = &events[3].payload else {
        panic!()
    };
    assert_eq!(p.completed_phase, "BUILD");
    assert_eq!(p.current_phase, "POST_BUILD");
    assert_eq!(p.duration_ms, 2_000);

    world.until_consumer_idle(REPORTS_CONSUMER).await;
    wait_until(WAIT, "the build to leave the in-flight index", || async {
        world
            .store
            .in_flight()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    world.stop().await;
}
