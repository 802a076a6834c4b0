//! The state machine end to end: out-of-order and duplicate reports, builds nobody requested,
//! reports that arrive before their request.

use std::time::Duration;

use prx_ci_build_watcher::REPORTS_CONSUMER;
use prx_ci_build_watcher::state::Lifecycle;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::testing::wait_until;

use crate::utils::{
    COMMIT, REPO, WAIT, World, completed, fixture, names, new_build_id, test_config,
};

#[tokio::test]
async fn out_of_order_and_late_reports_do_not_regress_a_build() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    world.request(&build_id).await;

    // The final state arrives first (the start report is delayed)...
    world
        .report(&fixture("state-succeeded.json", &build_id), "sqs")
        .await;
    world.until_completed(&build_id).await;
    // ...then everything older, from several sources, some twice.
    world
        .report(&fixture("phase-change-build.json", &build_id), "sqs")
        .await;
    world
        .report(&fixture("state-in-progress.json", &build_id), "sqs")
        .await;
    world
        .report(&fixture("state-in-progress.json", &build_id), "reconciler")
        .await;
    world
        .report(&fixture("state-failed.json", &build_id), "reconciler")
        .await;
    world
        .report(&fixture("state-succeeded.json", &build_id), "reconciler")
        .await;
    world.until_consumer_idle(REPORTS_CONSUMER).await;

    let events = world.build_events(&build_id).await;
    assert_eq!(names(&events), ["started", "completed:SUCCEEDED"]);
    let record = world.store.get(&build_id).await.unwrap().record.unwrap();
    assert!(matches!(
        record.state.lifecycle,
        Lifecycle::Final {
            status: prx_ci_shared::codebuild::build::FinalStatus::Succeeded
        }
    ));
    assert_eq!(record.final_status.as_deref(), Some("SUCCEEDED"));
    world.stop().await;
}

#[tokio::test]
async fn a_late_phase_never_moves_a_running_build_backwards() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    world.request(&build_id).await;

    world
        .report(&fixture("phase-change-build.json", &build_id), "sqs")
        .await;
    world.until_events(&build_id, 2).await;
    // The IN_PROGRESS report (listing only SUBMITTED as ended) comes after BUILD ended.
    world
        .report(&fixture("state-in-progress.json", &build_id), "sqs")
        .await;
    let mut install = fixture("phase-change-build.json", &build_id);
    install["detail"]["completed-phase"] = "INSTALL".into();
    world.report(&install, "sqs").await;
    world.until_consumer_idle(REPORTS_CONSUMER).await;

    assert_eq!(
        names(&world.build_events(&build_id).await),
        ["started", "phase:BUILD"]
    );
    world.stop().await;
}

#[tokio::test]
async fn a_build_nobody_requested_is_reported_with_what_is_known() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    // Started by hand in the console: no BuildRequested, ever.
    world
        .report(&fixture("state-failed.json", &build_id), "sqs")
        .await;
    let events = world.until_completed(&build_id).await;
    assert_eq!(names(&events), ["started", "completed:FAILED"]);
    let done = completed(&events);
    let b = done.build.unwrap();
    assert_eq!(b.repository, REPO, "from PRX_REPO");
    assert_eq!(b.commit, COMMIT, "from PRX_COMMIT");
    assert_eq!(b.build_request_id, "");
    assert_eq!(b.project, "infrastructure-ci-Runner2");
    assert_eq!(b.architecture, v1::Architecture::X8664 as i32);
    assert_eq!(events[0].push_sequence, 0);
    assert_eq!(events[0].ordering_key, None);
    assert_eq!(done.failed_phase, "BUILD");
    assert_eq!(done.requested, None, "nobody's request to carry");
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!()
    };
    assert_eq!(started.requested, None);

    // A bare event (no variables at all) is reported too, under an empty repository.
    let bare_id = new_build_id();
    let mut bare = fixture("state-in-progress.json", &bare_id);
    bare["detail"]["additional-information"]["environment"]["environment-variables"] =
        serde_json::json!([]);
    bare["detail"]["additional-information"]["source-version"] = "refs/heads/main".into();
    world.report(&bare, "sqs").await;
    let events = world.until_events(&bare_id, 1).await;
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!()
    };
    let b = started.build.as_ref().unwrap();
    assert_eq!((b.repository.as_str(), b.commit.as_str()), ("", ""));
    world.stop().await;
}

#[tokio::test]
async fn a_report_that_arrives_before_its_request_waits_for_it() {
    let mut world = World::nats_only().await;
    world.start(
        prx_ci_build_watcher::BuildWatcherConfig {
            unrequested_after: Duration::from_secs(60),
            ..test_config()
        },
        None,
        None,
    );
    let build_id = new_build_id();
    let report = world
        .report(&fixture("state-in-progress.json", &build_id), "sqs")
        .await;
    // The report was handled (and put back) before the dispatcher's request is stored.
    wait_until(WAIT, "the report to be retried", || async {
        let info = consumer_info(&world.rt.js, REPORTS_CONSUMER).await?;
        (info.delivered.stream_sequence >= 1 && (info.num_ack_pending > 0 || info.num_pending > 0))
            .then_some(())
    })
    .await;
    assert!(world.build_events(&build_id).await.is_empty());
    let requested = world.request(&build_id).await;
    let events = world.until_events(&build_id, 2).await;
    assert_eq!(names(&events), ["started", "phase:SUBMITTED"]);
    assert_eq!(events[0].correlation_id, requested.correlation_id);
    assert_eq!(events[0].causation_id, requested.event_id);
    assert_eq!(events[0].push_sequence, 17);
    assert_ne!(events[0].correlation_id, report.correlation_id);
    // The request that arrived after the report still travels with the build's events.
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!()
    };
    let carried = started.requested.as_ref().expect("the request");
    assert_eq!(carried.branch, "main");
    assert_eq!(carried.environment["PRX_REPO"], REPO);
    world.stop().await;
}

/// The state of the build-watcher's consumer `durable`, `None` while it cannot be read.
async fn consumer_info(
    js: &async_nats::jetstream::Context,
    durable: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(prx_ci_shared::bus::subject::EVENTS_STREAM)
        .await
        .ok()?
        .get_consumer(durable)
        .await
        .ok()?;
    consumer.info().await.ok().cloned()
}

#[tokio::test]
async fn a_report_that_beats_its_request_is_applied_on_its_first_delivery_when_the_request_lands() {
    let mut world = World::nats_only().await;
    // A wait far longer than the test: only the service's watch of the builds bucket can end
    // it in time.
    world.start(
        prx_ci_build_watcher::BuildWatcherConfig {
            request_wait: Duration::from_secs(600),
            unrequested_after: Duration::from_secs(600),
            ..test_config()
        },
        None,
        None,
    );
    let build_id = new_build_id();
    world
        .report(&fixture("state-in-progress.json", &build_id), "sqs")
        .await;
    wait_until(WAIT, "the report to wait for its request", || async {
        let info = consumer_info(&world.rt.js, REPORTS_CONSUMER).await?;
        (info.delivered.consumer_sequence == 1 && info.num_ack_pending == 1).then_some(())
    })
    .await;
    let requested = world.request(&build_id).await;
    let events = world.until_events(&build_id, 2).await;
    assert_eq!(names(&events), ["started", "phase:SUBMITTED"]);
    assert_eq!(events[0].causation_id, requested.event_id);
    world.until_consumer_idle(REPORTS_CONSUMER).await;
    assert_eq!(
        consumer_info(&world.rt.js, REPORTS_CONSUMER)
            .await
            .unwrap()
            .delivered
            .consumer_sequence,
        1,
        "handled on its first delivery, never put back"
    );
    world.stop().await;
}

#[tokio::test]
async fn two_replicas_and_two_sources_emit_each_transition_once() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    // A second replica sharing both durable consumers.
    let replica = prx_ci_build_watcher::BuildWatcher::new(
        world.rt.clone(),
        test_config(),
        None,
        None,
        &mut prometheus_client::registry::Registry::default(),
    )
    .unwrap();
    let replica_stop = prx_ci_shared::CancellationToken::new();
    let replica_task = tokio::spawn(replica.run(replica_stop.clone()));

    let builds: Vec<String> = (0..10).map(|_| new_build_id()).collect();
    for build in &builds {
        world.request(build).await;
    }
    // Every state change reported by SQS and by the reconciler, interleaved across builds.
    for name in [
        "state-in-progress.json",
        "phase-change-build.json",
        "state-succeeded.json",
    ] {
        for build in &builds {
            let event = fixture(name, build);
            world.report(&event, "sqs").await;
            world.report(&event, "reconciler").await;
        }
    }
    for build in &builds {
        world.until_completed(build).await;
    }
    world.until_consumer_idle(REPORTS_CONSUMER).await;
    for build in &builds {
        let events = names(&world.build_events(build).await);
        assert_eq!(
            events.first().map(String::as_str),
            Some("started"),
            "{build}"
        );
        let count = |name: &str| events.iter().filter(|e| *e == name).count();
        assert_eq!(count("started"), 1, "{build}: {events:?}");
        assert_eq!(count("completed:SUCCEEDED"), 1, "{build}: {events:?}");
        // Phases at most once each (a replica may see a phase only after the completion, and
        // then rightly drops it).
        assert!(
            count("phase:SUBMITTED") <= 1 && count("phase:BUILD") <= 1,
            "{events:?}"
        );
        assert!(events.len() <= 4, "{events:?}");
    }
    replica_stop.cancel();
    replica_task.await.unwrap().unwrap();
    world.stop().await;
}

/// Publishes the dispatcher's cancellation of `build_id` (superseded by push 18); returns its
/// stream sequence.
async fn cancel(world: &World, build_id: &str) -> u64 {
    let envelope = prx_ci_shared::Chain::starting("cancel-delivery").envelope(
        format!("cancel-{build_id}"),
        Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(v1::BuildRef {
                build_id: crate::utils::arn_of(build_id),
                repository: REPO.into(),
                commit: COMMIT.into(),
                ..v1::BuildRef::default()
            }),
            superseded_by_sequence: 18,
            superseded_by_commit: "b".repeat(40),
            superseded_by_event_id: "newer-push".into(),
        }),
    );
    world
        .rt
        .publisher
        .publish(&envelope)
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn a_cancellation_that_overtakes_its_request_is_recorded_once_the_request_is() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    // The dispatcher's cancellation of the build, handled before its request: requests and
    // cancellations are handled several at once, on different subjects.
    let sequence = cancel(&world, &build_id).await;
    let js = world.rt.js.clone();
    wait_until(WAIT, "the cancellation's first delivery", || async {
        (consumer_info(&js, prx_ci_build_watcher::REQUESTS_CONSUMER)
            .await?
            .delivered
            .stream_sequence
            >= sequence)
            .then_some(())
    })
    .await;

    world.request(&build_id).await;
    let store = world.store.clone();
    let record = wait_until(WAIT, "the cancellation on the build's record", || async {
        store
            .get(&build_id)
            .await
            .ok()?
            .record
            .filter(|r| r.cancelled.is_some())
    })
    .await;
    let cancelled = record.cancelled.unwrap();
    assert_eq!(cancelled.superseded_by_sequence, 18);
    assert!(record.requested);
    world.stop().await;
}

#[tokio::test]
async fn a_cancellation_of_a_build_nobody_requested_is_left_after_its_retries_not_parked() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    cancel(&world, &build_id).await;
    let js = world.rt.js.clone();
    // Retried on the consumer's backoff (1 s, 5 s), then acknowledged.
    wait_until(WAIT, "the cancellation to be settled", || {
        prx_ci_shared::testing::durable_drained(
            &js,
            prx_ci_shared::bus::subject::EVENTS_STREAM,
            prx_ci_build_watcher::REQUESTS_CONSUMER,
        )
    })
    .await;
    // The consumer's only message, delivered three times (each delivery takes a consumer
    // sequence).
    assert_eq!(
        consumer_info(&js, prx_ci_build_watcher::REQUESTS_CONSUMER)
            .await
            .unwrap()
            .delivered
            .consumer_sequence,
        3,
        "delivered until its attempts ran out"
    );
    let parked = js
        .get_stream(prx_ci_shared::bus::subject::PARKED_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(parked.state.messages, 0, "nothing parked");
    assert!(world.store.get(&build_id).await.unwrap().record.is_none());
    world.stop().await;
}
