//! Shadow mode: the original system's builds (nobody's by id) are adopted into the chain of
//! this system's shadow request of the same repository, commit and architecture, whatever
//! their variables; a build matching no shadow request stays nobody's.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::config::Mode;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use serde_json::{Value, json};

use crate::utils::{COMMIT, REPO, World, completed, fixture, names, new_build_id, test_config};

const PUSH_SEQUENCE: u64 = 42;

/// The shadow BuildRequested the dispatcher records in shadow mode.
async fn shadow_request(world: &World, request_id: &str) -> v1::Envelope {
    let key = OrderingKey::branch(RepoName::parse(REPO).unwrap(), Branch::new("main").unwrap());
    let envelope = Chain {
        causation_id: new_event_id(),
        ..Chain::starting("delivery-shadow")
    }
    .with_ordering(&key, PUSH_SEQUENCE)
    .envelope(
        new_event_id(),
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(v1::BuildRef {
                build_id: format!("shadow:{request_id}"),
                build_request_id: request_id.into(),
                repository: REPO.into(),
                commit: COMMIT.into(),
                architecture: v1::Architecture::X8664 as i32,
                backend: "shadow".into(),
                ..v1::BuildRef::default()
            }),
            environment: [
                ("PRX_REPO", REPO),
                ("PRX_COMMIT", COMMIT),
                ("PRX_BRANCH", "main"),
                ("PRX_CI_PUBLISH", "true"),
                ("PRX_TARGET_ARCHITECTURE", "x86_64"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            branch: "main".into(),
            event_name: "push".into(),
            shadow: true,
            ..v1::BuildRequested::default()
        }),
    );
    world.rt.publisher.publish(&envelope).await.unwrap();
    envelope
}

/// Sets a variable of a CodeBuild event's environment.
fn set_variable(event: &mut Value, name: &str, value: &str) {
    let vars = event["detail"]["additional-information"]["environment"]["environment-variables"]
        .as_array_mut()
        .unwrap();
    vars.retain(|v| v["name"] != name);
    vars.push(json!({"name": name, "type": "PLAINTEXT", "value": value}));
}

#[tokio::test]
async fn the_originals_build_is_adopted_into_the_shadow_requests_chain_whatever_its_variables() {
    let mut world = World::nats_only().await;
    world.start(
        prx_ci_build_watcher::BuildWatcherConfig {
            mode: Mode::Shadow,
            ..test_config()
        },
        None,
        None,
    );
    let request = shadow_request(&world, "req-shadow-1").await;

    // The original's build of the same commit, its PRX_CI_PUBLISH disagreeing with ours.
    let original = new_build_id();
    for name in ["state-in-progress.json", "state-succeeded.json"] {
        let mut event = fixture(name, &original);
        set_variable(&mut event, "PRX_CI_PUBLISH", "false");
        world.report(&event, "sqs").await;
    }
    let events = world.until_completed(&original).await;
    assert_eq!(names(&events).first().map(String::as_str), Some("started"));
    for envelope in &events {
        assert_eq!(envelope.correlation_id, request.correlation_id);
        assert_eq!(envelope.push_sequence, PUSH_SEQUENCE, "ordered as our push");
        assert_eq!(envelope.ordering_key, request.ordering_key);
    }
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!("{:?}", events[0]);
    };
    let build = started.build.clone().unwrap();
    assert!(build.shadowed);
    assert!(build.build_id.ends_with(&original), "{}", build.build_id);
    assert_eq!(build.build_request_id, "req-shadow-1");
    assert_eq!(build.retry_of, "");
    assert_eq!(
        started.environment["PRX_CI_PUBLISH"], "false",
        "the original's"
    );
    let requested = started.requested.clone().unwrap();
    assert!(requested.shadow);
    assert_eq!(requested.environment["PRX_CI_PUBLISH"], "true", "ours");
    let done = completed(&events);
    assert!(done.build.unwrap().shadowed);
    assert_eq!(done.status, v1::BuildStatus::Succeeded as i32);
    assert!(done.requested.unwrap().shadow);

    // An original build of a commit we have no shadow request for stays nobody's.
    let stray = new_build_id();
    let mut event = fixture("state-succeeded.json", &stray);
    set_variable(&mut event, "PRX_COMMIT", &"f".repeat(40));
    world.report(&event, "sqs").await;
    let stray_events = world.until_completed(&stray).await;
    assert!(completed(&stray_events).requested.is_none());
    assert_eq!(stray_events[0].push_sequence, 0);

    // The pseudo build is never in flight (the reconciler would ask CodeBuild about it).
    let in_flight = world.store.in_flight().await.unwrap();
    assert!(
        in_flight
            .iter()
            .all(|(e, _)| !e.build_id.starts_with("shadow:")),
        "{in_flight:?}"
    );
    world.stop().await;
}
