//! CodeBuild events through the (emulated) SQS queue.

use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_build_watcher::metrics::Metrics;
use prx_ci_build_watcher::sqs::SqsSource;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::testing::wait_until;
use serde_json::Value;

use crate::utils::{
    COMMIT, REPO, WAIT, World, completed, fixture, names, new_build_id, test_config,
};

pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

pub async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, event: &Value) {
    sqs.send_message()
        .queue_url(queue_url)
        .message_body(event.to_string())
        .send()
        .await
        .unwrap();
}

/// Messages still in the queue (visible or in flight).
async fn messages_in(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let map = attrs.attributes().cloned().unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        map.get(a)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

async fn world_with_queue(name: &str) -> (World, aws_sdk_sqs::Client, String) {
    let mut world = World::with_aws().await;
    let sqs = world.sqs();
    let queue_url = create_queue(&sqs, name).await;
    let config = prx_ci_build_watcher::BuildWatcherConfig {
        queue_url: Some(queue_url.clone()),
        ..test_config()
    };
    world.start(config, None, Some(sqs.clone()));
    (world, sqs, queue_url)
}

#[tokio::test]
async fn events_delivered_through_the_queue_produce_the_build_events() {
    let (mut world, sqs, queue_url) = world_with_queue("codebuild-events").await;
    let build_id = new_build_id();
    let requested = world.request(&build_id).await;

    send(
        &sqs,
        &queue_url,
        &fixture("state-in-progress.json", &build_id),
    )
    .await;
    world.until_events(&build_id, 2).await;
    send(
        &sqs,
        &queue_url,
        &fixture("phase-change-build.json", &build_id),
    )
    .await;
    world.until_events(&build_id, 3).await;
    send(
        &sqs,
        &queue_url,
        &fixture("state-succeeded.json", &build_id),
    )
    .await;
    let events = world.until_completed(&build_id).await;

    assert_eq!(
        names(&events),
        [
            "started",
            "phase:SUBMITTED",
            "phase:BUILD",
            "completed:SUCCEEDED"
        ]
    );
    for event in &events {
        // Every build event is in the chain of the request.
        assert_eq!(event.correlation_id, requested.correlation_id);
        assert_eq!(event.causation_id, requested.event_id);
        assert_eq!(event.ordering_key, requested.ordering_key);
        assert_eq!(event.push_sequence, 17);
    }
    let Some(Payload::BuildStarted(started)) = &events[0].payload else {
        panic!("not started first")
    };
    assert_eq!(started.environment["PRX_REPO"], REPO);
    let b = started.build.as_ref().unwrap();
    assert_eq!(b.build_request_id, format!("req-{build_id}"));
    assert!(b.log_url.contains("cloudwatch"), "{}", b.log_url);
    let Some(Payload::BuildPhaseChanged(phase)) = &events[2].payload else {
        panic!()
    };
    assert_eq!(phase.completed_phase_status, "SUCCEEDED");
    assert_eq!(phase.current_phase, "POST_BUILD");
    assert_eq!(phase.duration_ms, 186_000);

    let done = completed(&events);
    assert_eq!(done.status, v1::BuildStatus::Succeeded as i32);
    assert_eq!(
        done.variables["DOVETAIL_INSIGHTS"],
        format!("github/prx/dovetail-insights:{COMMIT}-x86_64")
    );
    assert_eq!(done.variables["PRX_CI_PUBLISH"], "true");
    assert_eq!(done.exported_variables.len(), 3);
    assert_eq!(done.failed_phase, "");
    assert_eq!(done.duration_ms, 259_000);
    assert_eq!(done.phases.len(), 11);
    assert!(done.finished_at.is_some());

    // Every message was deleted once its report was stored.
    wait_until(WAIT, "the queue to be empty", || async {
        (messages_in(&sqs, &queue_url).await == 0).then_some(())
    })
    .await;
    // The build left the in-flight index.
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
async fn the_same_message_delivered_twice_yields_one_event() {
    let (mut world, sqs, queue_url) = world_with_queue("codebuild-twice").await;
    let build_id = new_build_id();
    world.request(&build_id).await;
    let event = fixture("state-failed.json", &build_id);
    send(&sqs, &queue_url, &event).await;
    send(&sqs, &queue_url, &event).await;
    world.until_completed(&build_id).await;
    wait_until(WAIT, "both messages to be deleted", || async {
        (messages_in(&sqs, &queue_url).await == 0).then_some(())
    })
    .await;
    world
        .until_consumer_idle(prx_ci_build_watcher::REPORTS_CONSUMER)
        .await;

    let reports = world
        .events()
        .await
        .into_iter()
        .filter(|e| matches!(&e.payload, Some(Payload::BuildReportReceived(r)) if r.build_id.ends_with(&build_id)))
        .count();
    assert_eq!(reports, 1, "the second delivery was dropped by JetStream");
    let events = world.build_events(&build_id).await;
    assert_eq!(names(&events), ["started", "completed:FAILED"]);
    let done = completed(&events);
    assert_eq!(done.failed_phase, "BUILD");
    assert!(
        done.failure_message
            .starts_with("COMMAND_EXECUTION_ERROR: ")
    );
    world.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_a_codebuild_event_is_parked_and_deleted() {
    let (mut world, sqs, queue_url) = world_with_queue("codebuild-junk").await;
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(
            serde_json::json!({
                "id": "e-1", "detail-type": "EC2 Instance State-change Notification",
                "source": "aws.ec2", "detail": {"instance-id": "i-1", "state": "running"}
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    wait_until(WAIT, "the junk message to be deleted", || async {
        (messages_in(&sqs, &queue_url).await == 0).then_some(())
    })
    .await;
    let parked = wait_until(WAIT, "the junk report to be parked", || async {
        let stream = world
            .rt
            .js
            .get_stream(prx_ci_shared::bus::subject::PARKED_STREAM)
            .await
            .ok()?;
        let raw = stream
            .get_last_raw_message_by_subject("prx.parked.build-watcher-reports")
            .await
            .ok()?;
        use prost::Message as _;
        match v1::Envelope::decode(raw.payload).ok()?.payload {
            Some(Payload::MessageParked(p)) => Some(p),
            _ => None,
        }
    })
    .await;
    assert!(
        parked
            .error
            .contains("EC2 Instance State-change Notification"),
        "{}",
        parked.error
    );
    world.stop().await;
}

#[tokio::test]
async fn messages_are_not_deleted_when_the_store_fails() {
    let mut world = World::with_aws().await;
    let sqs = world.sqs();
    let queue_url = create_queue(&sqs, "codebuild-outage").await;
    let build_id = new_build_id();
    send(
        &sqs,
        &queue_url,
        &fixture("state-succeeded.json", &build_id),
    )
    .await;

    // JetStream is down: the report cannot be stored.
    world.nats.stop();
    let publisher =
        EventPublisher::new(world.rt.js.clone()).with_ack_timeout(Duration::from_millis(300));
    let config = prx_ci_build_watcher::BuildWatcherConfig {
        queue_url: Some(queue_url.clone()),
        ..test_config()
    };
    let source = SqsSource::new(
        sqs.clone(),
        queue_url.clone(),
        publisher,
        &config,
        Metrics::register(&mut Registry::default()),
    );
    let outcome = source.poll_once().await.unwrap();
    assert_eq!(outcome.received, 1);
    assert_eq!(outcome.stored, 0);
    assert_eq!(outcome.deleted, 0);
    assert_eq!(outcome.kept, 1);

    // After its visibility timeout the message is back, body intact.
    let body = wait_until(WAIT, "the message to be visible again", || async {
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .visibility_timeout(30)
            .send()
            .await
            .ok()?;
        got.messages()
            .first()
            .and_then(|m| m.body().map(str::to_owned))
    })
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["detail"]["build-id"].as_str().unwrap(),
        crate::utils::arn_of(&build_id)
    );
    world.stop().await;
}
