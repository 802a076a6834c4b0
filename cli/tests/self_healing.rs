//! The self-healing intake end to end (issue 14, part 4): GitHub could not deliver 20 pushes
//! (the ingress was unreachable); the ingress's reconciler recovers them through the (fake)
//! GitHub App API into the system `prx-ci up` runs; each is built once, manual redeliveries of
//! some add nothing, and the deploy pointer ends on the newest push.

mod common;

use common::{Local, Repo, SECRET, publish_outcomes, stored_webhooks};
use prometheus_client::registry::Registry;
use prx_ci_ingress::IngressConfig;
use prx_ci_ingress::config::SelfHealingConfig;
use prx_ci_ingress::recovery::Reconciler;
use prx_ci_proto::v1::envelope::Payload;
use prx_ci_publisher::{KvParameterStore, parameter_views};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeGitHub, TestAppKey};
use prx_ci_shared::testing::free_port;
use secrecy::SecretString;
use serde_json::json;

const APP_ID: u64 = 4242;
const REPOSITORY: &str = "PRX/healed-app";
const PARAMETER: &str = "/prx/stag/Spire/HealedApp/pkg/docker-image-tag";
/// GitHub's time of the first push (seconds).
const T0: i64 = 1_795_000_000;
const PUSHES: usize = 20;

const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: "HEALED_APP=/prx/stag/Spire/HealedApp/pkg/docker-image-tag"
  exported-variables:
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - HEALED_APP
phases:
  post_build:
    commands:
      - export HEALED_APP="github/prx/healed-app:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

fn value_of(commit: &str) -> String {
    format!("github/prx/healed-app:{commit}-x86_64")
}

async fn pointer(local: &Local) -> Option<String> {
    let js = local.js();
    let store = KvParameterStore::new(&js).await.unwrap();
    parameter_views(&js, &store, "/prx/stag/Spire/")
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.parameter == PARAMETER)
        .and_then(|r| r.value)
}

fn requested(events: &[prx_ci_proto::v1::Envelope], commit: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(&e.payload, Some(Payload::BuildRequested(r))
                if r.build.as_ref().is_some_and(|b| b.commit == commit))
        })
        .count()
}

#[tokio::test]
async fn twenty_undelivered_pushes_are_recovered_built_once_and_the_pointer_ends_on_the_newest() {
    let data = tempfile::tempdir().unwrap();
    let repo = Repo::init(data.path());
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;

    // The ingress is down: GitHub cannot reach it, 20 pushes, each delivery failed.
    github.set_webhook(
        &format!("http://127.0.0.1:{}/webhooks/github", free_port()),
        SECRET,
    );
    let mut before = "0".repeat(40);
    let mut commits = Vec::new();
    let mut sent = Vec::new();
    for n in 0..PUSHES {
        let version = n.to_string();
        let files: &[(&str, &str)] = if n == 0 {
            &[("buildspec.yml", BUILDSPEC), ("v", &version)]
        } else {
            &[("v", &version)]
        };
        let commit = repo.commit(files, &format!("push {n}"));
        let pushed_at = T0 + 10 * i64::try_from(n).unwrap();
        let body = common::push_event(REPOSITORY, &repo, &before, &commit, pushed_at, false);
        let delivery = github.send_webhook("push", body).await;
        assert_eq!(delivery.status_code, 0, "the ingress is unreachable");
        sent.push(delivery);
        before.clone_from(&commit);
        commits.push(commit);
    }

    // The system comes back (what `prx-ci up` runs, with `[ingress.self_healing]` on): the
    // ingress's reconciler recovers the 20 in its start-up round, reading 8 per page.
    let github_config = GitHubConfig {
        api_url: github.url(),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    };
    let self_healing = SelfHealingConfig {
        enabled: true,
        per_page: 8,
        ..SelfHealingConfig::default()
    };
    let local = Local::start_in(data, |config| {
        config.github = github_config.clone();
        config.ingress.self_healing = self_healing.clone();
    })
    .await;
    local
        .wait_for(
            "a BuildRequested for each of the 20 recovered pushes",
            |events| {
                commits
                    .iter()
                    .all(|c| requested(events, c) > 0)
                    .then_some(())
            },
        )
        .await;
    let recovered = stored_webhooks(&local.js())
        .await
        .iter()
        .filter(|e| {
            matches!(&e.payload, Some(Payload::WebhookReceived(w))
                if w.origin == i32::from(prx_ci_proto::v1::Origin::Recovered))
        })
        .count();
    assert_eq!(recovered, PUSHES, "each stored once, marked recovered");

    // Someone redelivers five of them by hand, now that the ingress is reachable.
    github.set_webhook(&local.url, SECRET);
    let client = GitHubClient::new(github_config).unwrap();
    for delivery in &sent[..5] {
        let _: serde_json::Value = client
            .post_json(
                &format!("/app/hook/deliveries/{}/attempts", delivery.id),
                &json!({}),
            )
            .await
            .unwrap();
    }
    for delivery in github.deliveries().iter().filter(|d| d.redelivery) {
        assert_eq!(delivery.status_code, 202);
        assert!(
            delivery.response_body.contains("\"duplicate\":true"),
            "{}",
            delivery.response_body
        );
    }
    // And another round (a reconciler on the same cursor, as a second replica would run)
    // finds nothing to do.
    let config = IngressConfig {
        self_healing,
        ..IngressConfig::default()
    };
    let reconciler = Reconciler::new(
        &local.system.runtime,
        &config,
        client.clone(),
        &mut Registry::default(),
    );
    let report = reconciler.round().await.unwrap();
    assert_eq!((report.recovered, report.already_present), (0, 0));

    // Every push built and its publish decided; the newest one's value is the pointer.
    let newest = commits.last().unwrap().clone();
    local
        .wait_for("a publish outcome for each of the 20 pushes", |events| {
            commits
                .iter()
                .all(|c| !publish_outcomes(events, c).is_empty())
                .then_some(())
        })
        .await;
    let events = local.events().await;
    for commit in &commits {
        assert_eq!(requested(&events, commit), 1, "{commit} built once");
        assert_eq!(publish_outcomes(&events, commit).len(), 1, "{commit}");
    }
    assert!(
        publish_outcomes(&events, &newest)
            .iter()
            .any(|o| matches!(o, Payload::PublishApplied(a) if a.value == value_of(&newest))),
        "the newest push is published"
    );
    assert_eq!(
        pointer(&local).await.as_deref(),
        Some(value_of(&newest).as_str())
    );
    local.system.stop().await.unwrap();
}
