//! Re-runs requested on GitHub (`check_run` / `check_suite` `rerequested`): the dispatcher
//! rebuilds the commit from its own record of the original request (trust, buildspec, push
//! position), once per delivery; a fork pull request's re-run stays a fork's; a commit it never
//! built is skipped.

use std::sync::Arc;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_dispatcher::decision::ForkPolicy;
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::testing::wait_until;
use serde_json::{Value, json};

use crate::utils::*;

const SPEC: &str =
    "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: 1\n    PRX_BUILD_AARCH64: 1\n";
const SHA_OLD: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const SHA_NEW: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const FORK_SHA: &str = "e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5";

fn branch_push(sha: &str, before: &str, pushed_at: i64) -> Value {
    let mut push = recorded("push.json");
    push["after"] = json!(sha);
    push["before"] = json!(before);
    push["repository"]["pushed_at"] = json!(pushed_at);
    push
}

/// GitHub's `check_run` `rerequested` of `sha`'s check run `name`, clicked by `login`.
fn check_run_rerequested(sha: &str, name: &str, external_id: &str, login: &str) -> Value {
    json!({
        "action": "rerequested",
        "check_run": {
            "id": 4,
            "head_sha": sha,
            "name": name,
            "external_id": external_id,
            "status": "completed",
            "conclusion": "failure",
            "pull_requests": [],
        },
        "repository": {"full_name": REPO, "clone_url": "https://attacker.example/x.git"},
        "sender": {"login": login},
    })
}

fn check_suite_rerequested(sha: &str, login: &str) -> Value {
    json!({
        "action": "rerequested",
        "check_suite": {"id": 5, "head_sha": sha, "head_branch": "main"},
        "repository": {"full_name": REPO},
        "sender": {"login": login},
    })
}

fn request_of(e: &Envelope) -> &v1::BuildRequested {
    match &e.payload {
        Some(Payload::BuildRequested(r)) => r,
        _ => panic!("not a BuildRequested: {e:?}"),
    }
}

/// The re-runs among the `BuildRequested` events (those with a `rerun_request`).
async fn reruns(nats: &Nats) -> Vec<Envelope> {
    nats.requested()
        .await
        .into_iter()
        .filter(|(_, r)| r.rerun_request.is_some())
        .map(|(e, _)| e)
        .collect()
}

async fn handled(nats: &Nats, sequence: u64) {
    wait_until(WAIT, "the dispatcher to handle the webhook", || async {
        (nats.acked_up_to().await >= sequence).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rerun_rebuilds_the_recorded_request_once_per_delivery_as_its_push() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, SHA_OLD, SPEC);
    buildspec(&github, REPO, SHA_NEW, SPEC);
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    nats.webhook(
        "push",
        &branch_push(SHA_OLD, SHA_NEW, 1_795_000_000),
        "push-old",
    )
    .await;
    nats.webhook(
        "push",
        &branch_push(SHA_NEW, SHA_OLD, 1_795_000_100),
        "push-new",
    )
    .await;
    nats.wait_for("both pushes' builds", 4, is_requested).await;
    let originals = nats.requested().await;
    let original = originals
        .iter()
        .find(|(_, r)| {
            let b = r.build.as_ref().unwrap();
            b.commit == SHA_OLD && b.architecture == v1::Architecture::Aarch64 as i32
        })
        .map(|(e, _)| e.clone())
        .unwrap();
    let newer_sequence = originals
        .iter()
        .find(|(_, r)| r.build.as_ref().unwrap().commit == SHA_NEW)
        .unwrap()
        .0
        .push_sequence;
    let github_requests = requests_for(&github, SHA_OLD);

    // "Re-run" on the old commit's aarch64 check run. Its external_id names a request id that
    // is not this commit's: it selects nothing.
    nats.webhook(
        "check_run",
        &check_run_rerequested(SHA_OLD, "prx-ci/aarch64", "not-ours", "octo"),
        "rerun-1",
    )
    .await;
    let rerun = wait_until(WAIT, "the re-run", || async {
        reruns(&nats).await.into_iter().next()
    })
    .await;
    let (orig, new) = (request_of(&original), request_of(&rerun));
    assert_eq!(
        rerun.push_sequence, original.push_sequence,
        "ordered as its push"
    );
    assert!(rerun.push_sequence < newer_sequence);
    assert_eq!(rerun.ordering_key, original.ordering_key);
    assert_eq!(rerun.correlation_id, "rerun-1", "the re-run's own chain");
    assert_eq!(rerun.causation_id, "rerun-1");
    let (ob, nb) = (orig.build.clone().unwrap(), new.build.clone().unwrap());
    assert_eq!(nb.commit, SHA_OLD);
    assert_eq!(
        nb.architecture,
        v1::Architecture::Aarch64 as i32,
        "that check run's only"
    );
    assert_eq!(nb.retry_of, ob.build_id);
    assert_ne!(nb.build_request_id, ob.build_request_id);
    assert_eq!(new.buildspec, orig.buildspec, "the recorded buildspec");
    assert_eq!(new.clone_url, orig.clone_url, "never the payload's");
    assert_eq!((new.fork, new.rerun), (false, 0));
    let mut environment = new.environment.clone();
    assert_eq!(environment[env::CI_REQUEST_ID], nb.build_request_id);
    environment.insert(env::CI_REQUEST_ID.into(), ob.build_request_id.clone());
    assert_eq!(environment, orig.environment);
    assert_eq!(
        new.rerun_request,
        Some(v1::RerunRequest {
            event_name: "check_run".into(),
            requested_by: "octo".into(),
            delivery_id: "rerun-1".into(),
            original_request_id: ob.build_request_id.clone(),
            original_build_id: ob.build_id.clone(),
        })
    );
    let started = backend.started().await;
    assert_eq!(started.len(), 5);
    assert_eq!(started[4].request.request_id, nb.build_request_id);
    assert!(!started[4].request.untrusted);
    assert_eq!(requests_for(&github, SHA_OLD), github_requests, "no lookup");

    // The same delivery stored again (a redelivery): announced again, nothing started.
    let (_, stored) = nats
        .webhook_with_id(
            "check_run",
            &check_run_rerequested(SHA_OLD, "prx-ci/aarch64", "not-ours", "octo"),
            "rerun-1",
            "rerun-1-stored-again",
        )
        .await;
    handled(&nats, stored.sequence).await;
    assert_eq!(backend.started().await.len(), 5);
    assert_eq!(reruns(&nats).await.len(), 1);

    // Another click (another delivery), on the whole suite: both architectures of the old
    // push again.
    nats.webhook(
        "check_suite",
        &check_suite_rerequested(SHA_OLD, "hubot"),
        "rerun-2",
    )
    .await;
    let all = wait_until(WAIT, "the second re-run", || async {
        let all = reruns(&nats).await;
        (all.len() >= 3).then_some(all)
    })
    .await;
    assert_eq!(backend.started().await.len(), 7);
    // The newest push of the commit is the old push (the only one that built it).
    for rerun in &all[1..] {
        assert_eq!(rerun.push_sequence, original.push_sequence);
        let request = request_of(rerun);
        assert_eq!(request.build.as_ref().unwrap().commit, SHA_OLD);
        let asked = request.rerun_request.as_ref().unwrap();
        assert_eq!(
            (asked.event_name.as_str(), asked.requested_by.as_str()),
            ("check_suite", "hubot")
        );
    }
    assert!(nats.parked().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn a_fork_pull_requests_rerun_stays_fork_restricted() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    buildspec(&github, REPO, FORK_SHA, SPEC);
    let backend = Arc::new(FakeBackend::default());
    let config = DispatcherConfig {
        rules: prx_ci_dispatcher::decision::DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..Default::default()
        },
        ..DispatcherConfig::default()
    };
    let running = start(&nats, config, source(&github.url()), backend.clone());
    nats.webhook(
        "pull_request",
        &recorded("pull_request-fork.json"),
        "fork-pr",
    )
    .await;
    nats.wait_for("the fork's builds", 2, is_requested).await;
    let original = nats.requested().await.remove(0).0;

    nats.webhook(
        "check_suite",
        &check_suite_rerequested(FORK_SHA, "maintainer"),
        "fork-rerun",
    )
    .await;
    let reruns = wait_until(WAIT, "the fork's re-run", || async {
        let all = reruns(&nats).await;
        (all.len() >= 2).then_some(all)
    })
    .await;
    for rerun in &reruns {
        let request = request_of(rerun);
        assert!(request.fork, "still a fork pull request");
        assert_eq!(request.pull_request, 144);
        assert_eq!(request.environment[env::CI_PUBLISH], "false");
        assert_eq!(rerun.ordering_key, original.ordering_key);
        assert_eq!(rerun.push_sequence, original.push_sequence);
    }
    let started = backend.started().await;
    assert_eq!(started.len(), 4);
    assert!(
        started.iter().all(|b| b.request.untrusted),
        "untrusted project, every time"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_rerun_of_a_commit_the_dispatcher_never_built_is_skipped() {
    let nats = Nats::start().await;
    let github = fake_github().await;
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    nats.webhook(
        "check_run",
        &check_run_rerequested(SHA_NEW, "prx-ci/x86_64", "", "octo"),
        "rerun-unknown",
    )
    .await;
    // Not a re-run: a check run GitHub announces as created.
    let mut created = check_run_rerequested(SHA_NEW, "prx-ci/x86_64", "", "octo");
    created["action"] = json!("created");
    nats.webhook("check_run", &created, "check-created").await;
    let skips = nats.wait_for("both skips", 2, is_skipped).await;
    let unknown = skips.iter().find(|s| s.action == "rerequested").unwrap();
    assert_eq!(unknown.reason(), v1::SkipReason::RerunNotDispatched);
    assert_eq!(unknown.commit, SHA_NEW);
    assert_eq!(unknown.event_name, "check_run");
    assert!(
        unknown.detail.contains("no record of building"),
        "{}",
        unknown.detail
    );
    let other = skips.iter().find(|s| s.action == "created").unwrap();
    assert_eq!(other.reason(), v1::SkipReason::EventTypeNotBuilt);
    assert!(backend.started().await.is_empty());
    assert_eq!(github.requests(), []);
    running.stop().await;
}
