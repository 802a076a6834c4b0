//! The reconciler against CodeBuild in the AWS emulator (moto: `StartBuild` gives a build id;
//! the first `BatchGetBuilds` reports it SUCCEEDED with all its phases).

use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_build_watcher::metrics::Metrics;
use prx_ci_build_watcher::reconciler::Reconciler;
use prx_ci_build_watcher::{BuildWatcherConfig, REPORTS_CONSUMER, REQUESTS_CONSUMER};
use prx_ci_proto::v1::envelope::Payload;
use prx_ci_shared::testing::wait_until;

use crate::utils::{PROJECT, WAIT, World, completed, fixture, names, test_config};

/// Creates the project and starts a build; returns its id (`project:uuid`).
async fn start_build(world: &World) -> String {
    world.moto().create_codebuild_project(PROJECT).await;
    world
        .codebuild()
        .start_build()
        .project_name(PROJECT)
        .send()
        .await
        .unwrap()
        .build_value()
        .unwrap()
        .id()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_transition_whose_message_was_lost_is_found_by_the_reconciler() {
    let mut world = World::with_aws().await;
    let codebuild = world.codebuild();
    let sqs = world.sqs();
    let queue_url = crate::sqs::create_queue(&sqs, "codebuild-lost").await;
    let build_id = start_build(&world).await;
    let config = BuildWatcherConfig {
        queue_url: Some(queue_url.clone()),
        reconcile_after: Duration::from_secs(3600),
        ..test_config()
    };
    // The start arrives through SQS...
    world.start(config.clone(), None, Some(sqs.clone()));
    let requested = world.request(&build_id).await;
    crate::sqs::send(
        &sqs,
        &queue_url,
        &fixture("state-in-progress.json", &build_id),
    )
    .await;
    world.until_events(&build_id, 2).await;
    // ...the final state change is lost (never delivered). After a restart the reconciler
    // looks up every build in flight and finds it.
    world.stop().await;
    world.start(config, Some(codebuild), Some(sqs));
    let events = world.until_completed(&build_id).await;
    assert_eq!(
        names(&events),
        ["started", "phase:SUBMITTED", "completed:SUCCEEDED"]
    );
    assert!(events.iter().all(|e| e.causation_id == requested.event_id));
    let done = completed(&events);
    let b = done.build.unwrap();
    assert_eq!(b.build_request_id, format!("req-{build_id}"));
    assert!(!b.log_url.is_empty());
    assert!(done.phases.iter().any(|p| p.name == "COMPLETED"));
    let sources: Vec<_> = world
        .events()
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::BuildReportReceived(r)) => Some(r.source),
            _ => None,
        })
        .collect();
    assert_eq!(sources.first().map(String::as_str), Some("sqs"));
    assert_eq!(sources.last().map(String::as_str), Some("reconciler"));
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

#[tokio::test]
async fn a_build_not_heard_of_for_a_while_is_looked_up() {
    let mut world = World::with_aws().await;
    let codebuild = world.codebuild();
    let build_id = start_build(&world).await;
    world.start(
        BuildWatcherConfig {
            reconcile_after: Duration::from_millis(200),
            ..test_config()
        },
        Some(codebuild),
        None,
    );
    // No report at all after the request: once `reconcile_after` has passed, the periodic
    // pass asks CodeBuild.
    world.request(&build_id).await;
    let events = world.until_completed(&build_id).await;
    assert_eq!(names(&events), ["started", "completed:SUCCEEDED"]);
    world.stop().await;
}

#[tokio::test]
async fn every_build_in_flight_is_looked_up_at_start_up_and_finished_ones_never_again() {
    let mut world = World::with_aws().await;
    let codebuild = world.codebuild();
    let first = start_build(&world).await;
    let second = start_build(&world).await;
    // Requests recorded while the service was down: the requests consumer catches up, and the
    // start-up pass looks every build in flight up although none is overdue (1h).
    world.request(&first).await;
    world.request(&second).await;
    let config = BuildWatcherConfig {
        reconcile_interval: Duration::from_secs(3600),
        ..test_config()
    };
    world.start(config.clone(), None, None);
    world.until_consumer_idle(REQUESTS_CONSUMER).await;
    assert_eq!(world.store.in_flight().await.unwrap().len(), 2);

    let reconciler = Reconciler::new(
        codebuild,
        world.store.clone(),
        world.rt.publisher.clone(),
        &config,
        Metrics::register(&mut Registry::default()),
    );
    let recent = reconciler.reconcile(false).await.unwrap();
    assert_eq!(
        (recent.in_flight, recent.due, recent.calls),
        (2, 0, 0),
        "nothing overdue"
    );
    let start_up = reconciler.reconcile(true).await.unwrap();
    assert_eq!(
        (start_up.due, start_up.calls, start_up.reported),
        (2, 1, 2),
        "one BatchGetBuilds for both"
    );
    for build in [&first, &second] {
        let events = world.until_completed(build).await;
        assert_eq!(names(&events), ["started", "completed:SUCCEEDED"]);
    }
    world.until_consumer_idle(REPORTS_CONSUMER).await;
    // Finished builds are out of the index: the AWS calls follow builds in flight, not history.
    let after = reconciler.reconcile(true).await.unwrap();
    assert_eq!((after.in_flight, after.calls), (0, 0));
    world.stop().await;
}

#[tokio::test]
async fn local_builds_are_never_looked_up_in_aws() {
    let mut world = World::with_aws().await;
    let config = test_config();
    world.start(config.clone(), None, None);
    let build_id = format!("local:{}", prx_ci_shared::bus::envelope::new_event_id());
    world.request(&build_id).await;
    world.until_consumer_idle(REQUESTS_CONSUMER).await;
    let reconciler = Reconciler::new(
        world.codebuild(),
        world.store.clone(),
        world.rt.publisher.clone(),
        &config,
        Metrics::register(&mut Registry::default()),
    );
    let pass = reconciler.reconcile(true).await.unwrap();
    assert_eq!((pass.in_flight, pass.due, pass.calls), (1, 0, 0));
    world.stop().await;
}
