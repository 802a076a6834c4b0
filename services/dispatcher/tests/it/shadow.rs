//! Shadow mode: every decision recorded as live, with `BuildRequested.shadow` and a pseudo
//! build id, and the backend never asked to start or stop anything.

use std::sync::Arc;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_proto::v1::SkipReason;
use prx_ci_shared::config::Mode;
use serde_json::{Value, json};

use crate::utils::*;
use prx_ci_shared::testing::wait_until;

const PLAIN: &str = "version: 0.2\nenv:\n  variables:\n    PRX_X: 1\n";
const SHA_2: &str = "2222222222222222222222222222222222222222";
const SHA_3: &str = "3333333333333333333333333333333333333333";
const SHA_4: &str = "4444444444444444444444444444444444444444";

fn pr_push(sha: &str) -> Value {
    let mut pr = recorded("pull_request-synchronize.json");
    pr["pull_request"]["head"]["sha"] = json!(sha);
    pr
}

#[tokio::test]
async fn shadow_mode_records_every_decision_and_starts_or_stops_nothing() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, SHA_2, PLAIN);
    buildspec(&github, REPO, SHA_3, PLAIN);
    // SHA_4 has no buildspec: a NO_BUILDSPEC skip, recorded as live records it.
    let backend = Arc::new(FakeBackend::default());
    let config = DispatcherConfig {
        mode: Mode::Shadow,
        ..DispatcherConfig::default()
    };
    let running = start(&nats, config, source(&github.url()), backend.clone());

    // Two pushes to one pull request (live would stop the first push's build) and one push
    // with nothing to build.
    nats.webhook("pull_request", &pr_push(SHA_2), "delivery-1")
        .await;
    nats.webhook("pull_request", &pr_push(SHA_3), "delivery-2")
        .await;
    nats.webhook("pull_request", &pr_push(SHA_4), "delivery-3")
        .await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;
    let skipped = nats.wait_for("BuildSkipped", 1, is_skipped).await;
    assert_eq!(skipped[0].reason, SkipReason::NoBuildspec as i32);
    assert_eq!(skipped[0].commit, SHA_4);
    assert!(skipped[0].shadow, "a shadow decision, for the report");
    for request in &requested {
        let build = request.build.as_ref().unwrap();
        assert!(request.shadow, "{request:?}");
        assert!(!build.shadowed);
        assert_eq!(build.backend, "shadow");
        assert_eq!(build.build_id, format!("shadow:{}", build.build_request_id));
        assert_eq!(request.environment["PRX_COMMIT"], build.commit);
    }
    // Every decision is in the log before the last webhook's skip; nothing reached the
    // backend, and nothing was cancelled.
    assert!(backend.started().await.is_empty());
    assert!(backend.stopped().await.is_empty());
    assert!(nats.cancelled().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_repository_cut_over_is_built_and_superseded_live_in_shadow_mode() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, SHA_2, PLAIN);
    buildspec(&github, REPO, SHA_3, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let config = DispatcherConfig {
        mode: Mode::Shadow,
        // Named with another case than the webhook's: GitHub's names compare without case.
        live_repositories: vec![REPO.to_ascii_uppercase()],
        ..DispatcherConfig::default()
    };
    let running = start(&nats, config, source(&github.url()), backend.clone());

    nats.webhook("pull_request", &pr_push(SHA_2), "delivery-1")
        .await;
    nats.webhook("pull_request", &pr_push(SHA_3), "delivery-2")
        .await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;
    for request in &requested {
        assert!(!request.shadow, "{request:?}");
        assert_ne!(request.build.as_ref().unwrap().backend, "shadow");
    }
    // Both started, and the first stopped when the second superseded it, as live does.
    wait_until(
        WAIT,
        "both builds started and the first stopped",
        || async {
            (backend.started().await.len() == 2 && backend.stopped().await.len() == 1).then_some(())
        },
    )
    .await;
    running.stop().await;
}
