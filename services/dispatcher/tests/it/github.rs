//! The buildspec lookup through the shared fake GitHub (a fault proxy in front for 5xx and rate
//! limits): retries, not-enrolled skips, visible failures, skips that never ask GitHub; and
//! backend errors (retried, or parked with the error).

use std::sync::Arc;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_proto::v1::SkipReason;
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::testing::fault_proxy::{Fault, FaultProxy, FaultRule, Match};

use crate::utils::*;

const PLAIN: &str = "version: 0.2\nenv:\n  variables:\n    PRX_X: 1\n";
const CONTENTS: &str = "/repos/PRX/example-app/contents/buildspec.yml";

#[tokio::test]
async fn a_github_500_is_retried_then_the_build_starts() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    let pr = recorded("pull_request-opened.json");
    let sha = pr["pull_request"]["head"]["sha"].as_str().unwrap();
    let contents = Match::any().method("GET").path_prefix(CONTENTS);
    proxy.add(FaultRule::new(contents.clone(), Fault::server_error(500)).times(2));
    buildspec(&github, REPO, sha, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&proxy.url()),
        backend.clone(),
    );
    nats.webhook("pull_request", &pr, "delivery-500").await;
    let requested = nats.wait_for("BuildRequested", 1, is_requested).await;
    assert_eq!(proxy.count(&contents), 3, "two 500s, then the answer");
    assert_eq!(
        requests_for(&github, sha),
        1,
        "only the answered one reached GitHub"
    );
    assert_eq!(requested[0].environment["PRX_GITHUB_PR"], "142");
    assert_eq!(backend.started().await.len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn rate_limits_are_waited_out() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    let push = recorded("push.json");
    let sha = push["after"].as_str().unwrap();
    let contents = Match::any().method("GET").path_prefix(CONTENTS);
    let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 1).to_string();
    proxy.add(
        FaultRule::new(
            contents.clone(),
            Fault::answer(
                403,
                &[
                    ("content-type", "application/json"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ],
                r#"{"message":"API rate limit exceeded"}"#,
            ),
        )
        .times(1),
    );
    buildspec(&github, REPO, sha, PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&proxy.url()),
        backend.clone(),
    );
    nats.webhook("push", &push, "delivery-rate-limited").await;
    nats.wait_for("BuildRequested", 1, is_requested).await;
    assert_eq!(
        proxy.count(&contents),
        2,
        "the limited read, then the answer"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_404_is_a_no_buildspec_skip() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let push = recorded("push.json");
    // The commit exists, without a buildspec.yml.
    github.add_commit(REPO, FakeCommit::new(push["after"].as_str().unwrap()));
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    let (_, stored) = nats.webhook("push", &push, "delivery-404").await;
    let skipped = nats.wait_for("BuildSkipped", 1, is_skipped).await;
    assert_eq!(skipped[0].reason, SkipReason::NoBuildspec as i32);
    assert_eq!(skipped[0].repository, REPO);
    assert_eq!(skipped[0].commit, push["after"].as_str().unwrap());
    assert_eq!(skipped[0].r#ref, "refs/heads/main");
    assert!(skipped[0].detail.contains("404"), "{}", skipped[0].detail);
    let (envelope, _) = nats.skipped().await.remove(0);
    assert_eq!(arrival_of(envelope.push_sequence), stored.sequence);
    assert_eq!(envelope.correlation_id, "delivery-404");
    assert!(backend.started().await.is_empty());
    assert!(nats.requested().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_buildspec_without_the_marker_is_skipped() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let push = recorded("push.json");
    buildspec(
        &github,
        REPO,
        push["after"].as_str().unwrap(),
        "version: 0.2\n",
    );
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    nats.webhook("push", &push, "delivery-no-marker").await;
    let skipped = nats.wait_for("BuildSkipped", 1, is_skipped).await;
    assert_eq!(skipped[0].reason, SkipReason::NoMarker as i32);
    assert!(backend.started().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn skips_decided_from_the_payload_never_ask_github() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    let cases = [
        (
            "push",
            "push-non-default-branch.json",
            SkipReason::NonDefaultBranch,
        ),
        ("push", "push-tag.json", SkipReason::TagPush),
        (
            "push",
            "push-branch-deleted.json",
            SkipReason::BranchDeleted,
        ),
        (
            "pull_request",
            "pull_request-closed.json",
            SkipReason::PullRequestActionNotBuilt,
        ),
        ("ping", "ping.json", SkipReason::EventTypeNotBuilt),
    ];
    for (i, (event, file, _)) in cases.iter().enumerate() {
        nats.webhook(event, &recorded(file), &format!("delivery-skip-{i}"))
            .await;
    }
    let skipped = nats.wait_for("every skip", cases.len(), is_skipped).await;
    let reasons: Vec<i32> = skipped.iter().map(|s| s.reason).collect();
    let expected: Vec<i32> = cases.iter().map(|(_, _, r)| *r as i32).collect();
    assert_eq!(reasons, expected);
    // Skips of a known lane carry its ordering key.
    let (envelope, _) = nats.skipped().await.remove(0);
    assert_eq!(
        envelope.ordering_key.unwrap().lane,
        Some(prx_ci_proto::v1::ordering_key::Lane::Branch(
            "feat/healthcheck".into()
        ))
    );
    assert_eq!(github.requests(), []);
    assert!(backend.started().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_github_error_that_persists_parks_the_webhook_with_the_error() {
    let nats = Nats::start().await;
    // GitHub refuses the configured token on every call.
    let github = FakeGitHub::start(FakeAuth::Token("ghp_current".into())).await;
    let push = recorded("push.json");
    buildspec(&github, REPO, push["after"].as_str().unwrap(), PLAIN);
    let backend = Arc::new(FakeBackend::default());
    let config = DispatcherConfig::default();
    let settings = fast_settings(&config, 3);
    let dispatcher = prx_ci_dispatcher::Dispatcher::new(
        nats.rt.clone(),
        config,
        source_with(GitHubConfig {
            api_url: github.url(),
            token: Some("ghp_revoked".to_owned().into()),
            ..GitHubConfig::default()
        }),
        backend.clone(),
        &mut prometheus_client::registry::Registry::default(),
    )
    .unwrap()
    .with_consumer_settings(settings);
    let shutdown = prx_ci_shared::CancellationToken::new();
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    nats.webhook("push", &push, "delivery-401").await;
    let parked = prx_ci_shared::testing::wait_until(WAIT, "the webhook to be parked", || async {
        let parked = nats.parked().await;
        (!parked.is_empty()).then_some(parked)
    })
    .await;
    assert_eq!(parked[0].consumer, "dispatcher");
    assert_eq!(parked[0].deliveries, 3);
    assert!(parked[0].error.contains("401"), "{}", parked[0].error);
    assert_eq!(github.requests().len(), 3);
    assert!(
        nats.events()
            .await
            .iter()
            .all(|e| is_requested(e).is_none() && is_skipped(e).is_none())
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Fails the first `failures` starts with the given kind, then delegates.
#[derive(Debug)]
struct Flaky {
    inner: FakeBackend,
    failures: std::sync::atomic::AtomicU32,
    permanent: bool,
}

#[async_trait::async_trait]
impl prx_ci_shared::codebuild::backend::BuildBackend for Flaky {
    async fn start(
        &self,
        request: prx_ci_shared::codebuild::backend::StartBuild,
    ) -> Result<
        prx_ci_shared::codebuild::backend::StartedBuild,
        prx_ci_shared::codebuild::backend::BackendError,
    > {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let err = anyhow::anyhow!("CodeBuild said no");
            return Err(if self.permanent {
                prx_ci_shared::codebuild::backend::BackendError::Permanent(err)
            } else {
                prx_ci_shared::codebuild::backend::BackendError::Transient(err)
            });
        }
        self.inner.start(request).await
    }

    async fn find(
        &self,
        request: &prx_ci_shared::codebuild::backend::StartBuild,
        since: time::OffsetDateTime,
    ) -> Result<
        Option<prx_ci_shared::codebuild::backend::StartedBuild>,
        prx_ci_shared::codebuild::backend::BackendError,
    > {
        self.inner.find(request, since).await
    }

    async fn stop(
        &self,
        build_id: &str,
    ) -> Result<
        prx_ci_shared::codebuild::backend::StopOutcome,
        prx_ci_shared::codebuild::backend::BackendError,
    > {
        self.inner.stop(build_id).await
    }
}

#[tokio::test]
async fn backend_errors_are_retried_or_parked_never_dropped() {
    for permanent in [false, true] {
        let nats = Nats::start().await;
        let github = fake_github().await;
        let push = recorded("push.json");
        buildspec(&github, REPO, push["after"].as_str().unwrap(), PLAIN);
        let backend = Arc::new(Flaky {
            inner: FakeBackend::default(),
            failures: std::sync::atomic::AtomicU32::new(1),
            permanent,
        });
        let running = start(
            &nats,
            DispatcherConfig::default(),
            source(&github.url()),
            backend.clone(),
        );
        nats.webhook("push", &push, "delivery-flaky").await;
        if permanent {
            let parked = prx_ci_shared::testing::wait_until(WAIT, "the webhook parked", || async {
                let parked = nats.parked().await;
                (!parked.is_empty()).then_some(parked)
            })
            .await;
            assert_eq!(parked[0].deliveries, 1, "a permanent error is not retried");
            assert!(
                parked[0].error.contains("CodeBuild said no"),
                "{}",
                parked[0].error
            );
            assert!(nats.requested().await.is_empty());
        } else {
            nats.wait_for("BuildRequested", 1, is_requested).await;
            assert_eq!(backend.inner.started().await.len(), 1);
        }
        running.stop().await;
    }
}

/// The production source in GitHub App mode against the stateful fake GitHub: the contents
/// answer decodes, a missing file is the no-buildspec skip, and a repository the App is not
/// installed on is an error (retried, then parked), never taken for "no buildspec".
#[tokio::test]
async fn the_buildspec_source_reads_through_a_github_app() {
    use prx_ci_dispatcher::buildspec::{Buildspec, BuildspecError, BuildspecRequest};
    use prx_ci_dispatcher::{BuildspecSource as _, GitHubBuildspecSource};
    use prx_ci_shared::domain::{CommitSha, RepoName};
    use prx_ci_shared::github::GitHubClient;
    use prx_ci_shared::testing::fake_github::TestAppKey;

    let key = TestAppKey::shared();
    let github = FakeGitHub::start(FakeAuth::App(key.app(31))).await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    github.add_commit(REPO, FakeCommit::new(sha).file("buildspec.yml", PLAIN));
    github.add_commit("prx/elsewhere", FakeCommit::new(sha));
    github.install(5, &[REPO]);
    let source = GitHubBuildspecSource::new(
        GitHubClient::new(GitHubConfig {
            api_url: github.url(),
            app_id: Some(31),
            private_key: Some(key.private_pem.clone().into()),
            ..GitHubConfig::default()
        })
        .unwrap(),
    );
    let fetch = |repository: &str, sha: &str| {
        let (repository, commit) = (
            RepoName::parse(repository).unwrap(),
            CommitSha::parse(sha).unwrap(),
        );
        let source = source.clone();
        async move {
            source
                .fetch(BuildspecRequest {
                    repository: &repository,
                    commit: &commit,
                    clone_url: "https://github.com/x.git",
                })
                .await
        }
    };

    assert_eq!(
        fetch(REPO, sha).await.unwrap(),
        Buildspec::Found(PLAIN.to_owned())
    );
    let empty = "f".repeat(40);
    github.add_commit(REPO, FakeCommit::new(&empty));
    let missing = fetch(REPO, &empty).await.unwrap();
    assert!(matches!(missing, Buildspec::NotFound { .. }), "{missing:?}");
    let not_installed = fetch("prx/elsewhere", sha).await.unwrap_err();
    assert!(
        matches!(not_installed, BuildspecError::Transient(_)),
        "{not_installed:?}"
    );
    assert_eq!(
        github.mints(),
        1,
        "one token for both calls to the installed repository"
    );
}
