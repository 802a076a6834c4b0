//! Re-runs of builds lost to the system: a `FAULT` build is started again once, as the same
//! push, from the dispatcher's own record of its request; a redelivered `BuildCompleted` starts
//! nothing more; the re-run's own `FAULT` is the end (default limit 1); a build that failed by
//! its own fault is never re-run.

use std::sync::Arc;
use std::time::Duration;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::testing::wait_until;
use serde_json::{Value, json};

use crate::utils::*;

const PLAIN: &str = "version: 0.2\nenv:\n  variables:\n    PRX_X: 1\n";
const SHA_2: &str = "2222222222222222222222222222222222222222";
const SHA_3: &str = "3333333333333333333333333333333333333333";

fn branch_push(sha: &str) -> Value {
    let mut push = recorded("push.json");
    push["after"] = json!(sha);
    push
}

/// The `BuildCompleted` the build-watcher announces for the build `requested` announced
/// (its request without the buildspec, its chain), under `event_id`.
fn completed(requested: &Envelope, status: v1::BuildStatus, event_id: &str) -> Envelope {
    let Some(Payload::BuildRequested(mut request)) = requested.payload.clone() else {
        panic!("not a BuildRequested: {requested:?}")
    };
    request.buildspec.clear();
    let mut chain = Chain::caused_by(requested);
    chain.causation_id = format!("report-of-{event_id}");
    chain.envelope(
        event_id.to_owned(),
        Payload::BuildCompleted(v1::BuildCompleted {
            build: request.build.clone(),
            status: status as i32,
            requested: Some(request),
            ..v1::BuildCompleted::default()
        }),
    )
}

/// Waits until the `dispatcher-reruns` consumer acknowledged everything in `PRX_EVENTS`.
async fn reruns_caught_up(nats: &Nats) {
    wait_until(
        Duration::from_secs(30),
        "dispatcher-reruns to catch up",
        || async {
            let mut stream = nats.rt.js.get_stream(subject::EVENTS_STREAM).await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("dispatcher-reruns").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
}

/// A dispatcher (with `config`) that has started one build of a push of `sha`.
struct OneBuild {
    nats: Nats,
    _github: FakeGitHub,
    backend: Arc<FakeBackend>,
    running: Running,
    /// The build's `BuildRequested` envelope.
    requested: Envelope,
}

impl OneBuild {
    async fn start(config: DispatcherConfig, sha: &str, delivery: &str) -> Self {
        let nats = Nats::start().await;
        let github = fake_github().await;
        buildspec(&github, REPO, sha, PLAIN);
        let backend = Arc::new(FakeBackend::default());
        let running = start(&nats, config, source(&github.url()), backend.clone());
        nats.webhook("push", &branch_push(sha), delivery).await;
        nats.wait_for("the BuildRequested", 1, is_requested).await;
        let (requested, _) = nats.requested().await.remove(0);
        Self {
            nats,
            _github: github,
            backend,
            running,
            requested,
        }
    }

    /// Announces the build finished with `status` (event `event_id`).
    async fn completed(&self, status: v1::BuildStatus, event_id: &str) {
        self.nats
            .rt
            .publisher
            .publish(&completed(&self.requested, status, event_id))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_build_lost_to_the_system_is_rerun_once_as_the_same_push() {
    let fx = OneBuild::start(DispatcherConfig::default(), SHA_2, "delivery-lost").await;
    let OneBuild {
        nats,
        backend,
        requested: first_envelope,
        ..
    } = &fx;
    let Some(Payload::BuildRequested(first)) = &first_envelope.payload else {
        unreachable!()
    };
    let first_build = first.build.clone().unwrap();

    // CodeBuild (or the local runner's restart) reports it FAULT.
    fx.completed(v1::BuildStatus::Fault, "completed-1").await;
    let requested = nats.wait_for("the re-run", 2, is_requested).await;
    let rerun = &requested[1];
    let rerun_build = rerun.build.clone().unwrap();
    assert_eq!(rerun_build.retry_of, first_build.build_id);
    assert_eq!(rerun.rerun, 1);
    assert_ne!(rerun_build.build_id, first_build.build_id);
    assert_ne!(rerun_build.build_request_id, first_build.build_request_id);
    assert_eq!(rerun_build.commit, SHA_2);
    assert_eq!(rerun.buildspec, PLAIN, "from the dispatcher's record");
    assert_eq!(
        rerun.environment[env::CI_REQUEST_ID],
        rerun_build.build_request_id
    );
    let envelopes = nats.requested().await;
    let rerun_envelope = &envelopes[1].0;
    assert_eq!(rerun_envelope.push_sequence, first_envelope.push_sequence);
    assert_eq!(rerun_envelope.correlation_id, first_envelope.correlation_id);
    assert_eq!(rerun_envelope.causation_id, "completed-1");
    let started = backend.started().await;
    assert_eq!(started.len(), 2);
    assert_eq!(started[1].request.buildspec, PLAIN);
    assert_eq!(
        started[1].request.environment[env::CI_REQUEST_ID],
        rerun_build.build_request_id
    );

    // The same report again (a build-watcher redelivery past the duplicate window): the
    // recorded re-run is announced again, nothing is started.
    nats.rt
        .publisher
        .publish(&completed(
            first_envelope,
            v1::BuildStatus::Fault,
            "completed-1-again",
        ))
        .await
        .unwrap();
    reruns_caught_up(nats).await;
    assert_eq!(backend.started().await.len(), 2);
    assert_eq!(
        nats.requested().await.len(),
        2,
        "re-announced, same event id"
    );

    // The re-run is lost too: the limit (1) is reached, nothing more.
    nats.rt
        .publisher
        .publish(&completed(
            rerun_envelope,
            v1::BuildStatus::Fault,
            "completed-2",
        ))
        .await
        .unwrap();
    reruns_caught_up(nats).await;
    assert_eq!(backend.started().await.len(), 2);
    assert!(nats.parked().await.is_empty());
    fx.running.stop().await;
}

#[tokio::test]
async fn a_build_that_failed_by_its_own_fault_or_was_stopped_is_never_rerun() {
    let fx = OneBuild::start(DispatcherConfig::default(), SHA_3, "delivery-failed").await;
    for (status, id) in [
        (v1::BuildStatus::Failed, "failed"),
        (v1::BuildStatus::TimedOut, "timed-out"),
        (v1::BuildStatus::Stopped, "stopped"),
        (v1::BuildStatus::Succeeded, "succeeded"),
    ] {
        fx.completed(status, id).await;
    }
    reruns_caught_up(&fx.nats).await;
    assert_eq!(fx.backend.started().await.len(), 1);
    assert_eq!(fx.nats.requested().await.len(), 1);
    fx.running.stop().await;
}

#[tokio::test]
async fn reruns_zero_turns_reruns_off() {
    let config = DispatcherConfig {
        reruns: 0,
        ..DispatcherConfig::default()
    };
    let fx = OneBuild::start(config, SHA_2, "delivery-off").await;
    fx.completed(v1::BuildStatus::Fault, "fault-off").await;
    reruns_caught_up(&fx.nats).await;
    assert_eq!(fx.backend.started().await.len(), 1);
    fx.running.stop().await;
}
