//! Superseded builds: a newer push to a pull request stops the older push's builds; never the
//! other way round; the default branch only when configured.

use std::sync::Arc;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_shared::codebuild::backend::StopOutcome;
use serde_json::{Value, json};

use crate::utils::*;

const PLAIN: &str = "version: 0.2\nenv:\n  variables:\n    PRX_X: 1\n";
const SHA_2: &str = "2222222222222222222222222222222222222222";
const SHA_3: &str = "3333333333333333333333333333333333333333";

fn pr_push(action: &str, sha: &str) -> Value {
    let mut pr = recorded("pull_request-synchronize.json");
    pr["action"] = json!(action);
    pr["pull_request"]["head"]["sha"] = json!(sha);
    pr
}

fn branch_push(sha: &str) -> Value {
    let mut push = recorded("push.json");
    push["after"] = json!(sha);
    push
}

#[tokio::test]
async fn a_newer_pull_request_push_stops_the_older_builds() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let first = recorded("pull_request-opened.json");
    let first_sha = first["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    buildspec(&github, REPO, &first_sha, PLAIN);
    buildspec(&github, REPO, SHA_2, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );

    // Two quick pushes to PR #142.
    let (_, first_stored) = nats.webhook("pull_request", &first, "delivery-pr-1").await;
    let (second_webhook, second_stored) = nats
        .webhook(
            "pull_request",
            &pr_push("synchronize", SHA_2),
            "delivery-pr-2",
        )
        .await;
    let cancelled = nats.wait_for("BuildCancelled", 1, is_cancelled).await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;
    let first_build = requested
        .iter()
        .find(|r| r.build.as_ref().unwrap().commit == first_sha)
        .unwrap()
        .build
        .clone()
        .unwrap();
    let second_build = requested
        .iter()
        .find(|r| r.build.as_ref().unwrap().commit == SHA_2)
        .unwrap()
        .build
        .clone()
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].build.as_ref().unwrap(), &first_build);
    assert_eq!(
        arrival_of(cancelled[0].superseded_by_sequence),
        second_stored.sequence
    );
    assert_eq!(cancelled[0].superseded_by_commit, SHA_2);
    assert_eq!(cancelled[0].superseded_by_event_id, second_webhook.event_id);
    let (envelope, _) = nats.cancelled().await.remove(0);
    assert_eq!(
        arrival_of(envelope.push_sequence),
        first_stored.sequence,
        "the cancelled build's push"
    );
    assert_eq!(envelope.correlation_id, "delivery-pr-1");
    assert_eq!(
        backend.stopped().await,
        [(first_build.build_id.clone(), StopOutcome::Stopped)]
    );

    // Replaying every webhook (the old one included) starts nothing and never stops the
    // newer push's build.
    running.stop().await;
    nats.reset_consumer().await;
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    prx_ci_shared::testing::wait_until(WAIT, "the replay", || async {
        (nats.acked_up_to().await >= second_stored.sequence).then_some(())
    })
    .await;
    assert_eq!(backend.started().await.len(), 2);
    assert!(
        backend
            .stopped()
            .await
            .iter()
            .all(|(id, _)| *id != second_build.build_id),
        "{:?}",
        backend.stopped().await
    );
    assert_eq!(nats.cancelled().await.len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_newer_push_handled_first_still_supersedes_the_older_one() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, SHA_2, PLAIN);
    buildspec(&github, REPO, SHA_3, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    // The older push's start blocks until the newer push has been fully dispatched.
    let gate = Arc::new(tokio::sync::Notify::new());
    *backend.gate.lock().await = Some((SHA_2.to_owned(), gate.clone()));
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );

    let (_, older) = nats
        .webhook(
            "pull_request",
            &pr_push("synchronize", SHA_2),
            "delivery-older",
        )
        .await;
    let (newer_webhook, newer) = nats
        .webhook(
            "pull_request",
            &pr_push("synchronize", SHA_3),
            "delivery-newer",
        )
        .await;
    nats.wait_for("the newer BuildRequested", 1, is_requested)
        .await;
    gate.notify_one();
    let cancelled = nats.wait_for("BuildCancelled", 1, is_cancelled).await;
    assert!(older.sequence < newer.sequence);
    assert_eq!(cancelled[0].build.as_ref().unwrap().commit, SHA_2);
    assert_eq!(
        arrival_of(cancelled[0].superseded_by_sequence),
        newer.sequence
    );
    assert_eq!(cancelled[0].superseded_by_event_id, newer_webhook.event_id);
    let stopped = backend.stopped().await;
    assert_eq!(stopped.len(), 1);
    let started = backend.started().await;
    let newer_build = started
        .iter()
        .find(|b| b.request.commit.as_str() == SHA_3)
        .unwrap();
    assert_ne!(stopped[0].0, newer_build.build_id);
    running.stop().await;
}

#[tokio::test]
async fn default_branch_builds_are_not_cancelled_unless_configured() {
    for cancel in [false, true] {
        let nats = Nats::start().await;
        let github = fake_github().await;
        buildspec(&github, REPO, SHA_2, PLAIN);
        buildspec(&github, REPO, SHA_3, PLAIN);
        let backend = Arc::new(FakeBackend::default());
        let config = DispatcherConfig {
            cancel_superseded_default_branch: cancel,
            concurrency: 1,
            ..DispatcherConfig::default()
        };
        let running = start(&nats, config, source(&github.url()), backend.clone());
        nats.webhook("push", &branch_push(SHA_2), "delivery-main-1")
            .await;
        let (_, second) = nats
            .webhook("push", &branch_push(SHA_3), "delivery-main-2")
            .await;
        nats.wait_for("two BuildRequested", 2, is_requested).await;
        prx_ci_shared::testing::wait_until(WAIT, "both webhooks handled", || async {
            (nats.acked_up_to().await >= second.sequence).then_some(())
        })
        .await;
        let cancelled = nats.cancelled().await;
        if cancel {
            assert_eq!(cancelled.len(), 1);
            assert_eq!(cancelled[0].1.build.as_ref().unwrap().commit, SHA_2);
        } else {
            assert!(cancelled.is_empty());
            assert!(backend.stopped().await.is_empty());
        }
        running.stop().await;
    }
}

#[tokio::test]
async fn a_finished_build_is_not_reported_cancelled() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, SHA_2, PLAIN);
    buildspec(&github, REPO, SHA_3, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let config = DispatcherConfig {
        concurrency: 1,
        ..DispatcherConfig::default()
    };
    let running = start(&nats, config, source(&github.url()), backend.clone());
    nats.webhook("pull_request", &pr_push("synchronize", SHA_2), "delivery-a")
        .await;
    nats.wait_for("the first BuildRequested", 1, is_requested)
        .await;
    backend.builds.lock().await[0].finished = true;
    let (_, second) = nats
        .webhook("pull_request", &pr_push("synchronize", SHA_3), "delivery-b")
        .await;
    prx_ci_shared::testing::wait_until(WAIT, "the second webhook handled", || async {
        (nats.acked_up_to().await >= second.sequence).then_some(())
    })
    .await;
    assert_eq!(backend.stopped().await.len(), 1);
    assert_eq!(backend.stopped().await[0].1, StopOutcome::AlreadyFinished);
    assert!(nats.cancelled().await.is_empty());
    running.stop().await;
}
