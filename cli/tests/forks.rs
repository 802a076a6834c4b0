//! Fork pull requests, end to end through what `prx-ci up` runs: skipped by default; when fork
//! builds are enabled, built without the right to publish, whatever their buildspec says and
//! whatever they export.

mod common;

use common::{Local, Repo, publish_outcomes};
use prx_ci_dispatcher::decision::ForkPolicy;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{KvParameterStore, parameter_views};

const REPOSITORY: &str = "PRX/fork-target";

/// A buildspec that opts in to publishing (the literal a same-repository PR may use), exports
/// `PRX_CI_PUBLISH=true` on top, and maps an image to the app's parameter.
const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_CI_PUBLISH: true
    PRX_SPIRE_ECR_PKG_PARAMETERS: "APP=/prx/stag/Spire/ForkTarget/pkg/docker-image-tag"
  exported-variables:
    - PRX_CI_PUBLISH
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - APP
phases:
  post_build:
    commands:
      - export PRX_CI_PUBLISH=true
      - export APP="github/prx/fork-target:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

/// A `pull_request` event whose head lives in `head_repository`.
fn pull_request(repo: &Repo, head: &str, head_repository: &str) -> serde_json::Value {
    serde_json::json!({
        "action": "opened",
        "number": 9,
        "pull_request": {
            "number": 9,
            "title": "Improve things",
            "draft": false,
            "updated_at": "2026-11-30T10:00:00Z",
            "head": {"sha": head, "ref": "main", "repo": {"full_name": head_repository}},
            "base": {"ref": "main", "repo": {"full_name": REPOSITORY}},
            "user": {"login": "outsider"},
        },
        "repository": {
            "name": "fork-target",
            "full_name": REPOSITORY,
            "owner": {"login": "PRX"},
            "default_branch": "main",
            "clone_url": repo.url(),
            "html_url": repo.url(),
        },
        "sender": {"login": "outsider"},
    })
}

#[tokio::test]
async fn a_fork_pull_request_is_skipped_by_default() {
    let local = Local::start().await;
    let repo = Repo::init(local.data.path());
    let head = repo.commit(&[("buildspec.yml", BUILDSPEC)], "from a fork");
    let body = pull_request(&repo, &head, "outsider/fork-target");
    assert_eq!(local.send("pull_request", "d-fork", &body).await, 202);
    let skip = local
        .wait_for("the fork's skip", |events| {
            events.iter().find_map(|e| match &e.payload {
                Some(Payload::BuildSkipped(s)) => Some(s.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(skip.reason(), v1::SkipReason::Fork);
    assert!(
        skip.detail.contains("outsider/fork-target"),
        "{}",
        skip.detail
    );
    let events = local.events().await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.payload, Some(Payload::BuildRequested(_)))),
        "nothing was built"
    );
    local.system.stop().await.unwrap();
}

#[tokio::test]
async fn a_built_fork_pull_request_with_the_opt_in_and_an_exported_publish_writes_nothing() {
    let local = Local::start_with(|config| {
        config.dispatcher.rules.fork_pull_requests = ForkPolicy::Build;
    })
    .await;
    let repo = Repo::init(local.data.path());
    let head = repo.commit(&[("buildspec.yml", BUILDSPEC)], "from a fork");
    // A deleted fork (`head.repo` null) is a fork too; this one still exists.
    let body = pull_request(&repo, &head, "outsider/fork-target");
    assert_eq!(local.send("pull_request", "d-fork-built", &body).await, 202);

    // The publisher reports the contradicted variable first and the fork skip after it: wait
    // for the fork skip, the last word on the build.
    let outcomes = local
        .wait_for("the fork's publish skip", |events| {
            let outcomes = publish_outcomes(events, &head);
            outcomes
                .iter()
                .any(|o| {
                    matches!(o, Payload::PublishSkipped(s)
                        if s.reason() == v1::PublishSkipReason::Fork)
                })
                .then_some(outcomes)
        })
        .await;
    let events = local.events().await;
    let requested = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::BuildRequested(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("the fork was built");
    assert!(requested.fork);
    assert_eq!(requested.environment["PRX_CI_PUBLISH"], "false");
    let completed = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::BuildCompleted(c)) => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(completed.status(), v1::BuildStatus::Succeeded);
    assert_eq!(completed.exported_variables["PRX_CI_PUBLISH"], "true");
    // The build tried; nothing was written, and the outcome says why.
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Payload::PublishSkipped(_))),
        "{outcomes:?}"
    );
    // The exported `PRX_CI_PUBLISH=true` is reported as the contradiction it is.
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Payload::PublishSkipped(s)
            if s.reason() == v1::PublishSkipReason::UntrustedOverride)),
        "{outcomes:?}"
    );
    let js = local.js();
    let store = KvParameterStore::new(&js).await.unwrap();
    let report = parameter_views(&js, &store, "/prx/stag/Spire/")
        .await
        .unwrap();
    assert!(
        report.iter().all(|r| r.value.is_none()),
        "nothing written: {report:?}"
    );
    local.system.stop().await.unwrap();
}
