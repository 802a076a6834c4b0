//! The self-healing intake: deliveries GitHub could not make while the ingress was down are
//! recovered by the reconciler through the (fake) GitHub API, each stored once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_ingress::config::{HookKind, RecoveryMode, SelfHealingConfig};
use prx_ci_ingress::recovery::{CURSOR_BUCKET, Cursor, Reconciler};
use prx_ci_ingress::{Ingress, IngressConfig, WEBHOOK_PATH};
use prx_ci_proto::v1::Origin;
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::kv::Records;
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeGitHub, TestAppKey};
use prx_ci_shared::testing::{NatsServer, free_port, metrics_text, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::utils::{SECRET, WAIT, webhook_received};

const APP_ID: u64 = 4242;

fn app_config(github: &FakeGitHub) -> GitHubConfig {
    GitHubConfig {
        api_url: github.url(),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    }
}

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: 2,
    }
}

/// The `n`th push to `PRX/app`'s main branch, one commit after the previous one.
fn push(n: u64) -> Value {
    let sha = |i: u64| format!("{i:040x}");
    json!({
        "ref": "refs/heads/main",
        "before": sha(n),
        "after": sha(n + 1),
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": {"id": 9, "full_name": "PRX/app", "default_branch": "main",
                       "pushed_at": 1_764_576_000 + n},
        "head_commit": {"id": sha(n + 1), "timestamp": "2026-12-01T08:00:00Z"},
        "pusher": {"name": "octocat"},
    })
}

fn self_healing(per_page: u32) -> SelfHealingConfig {
    SelfHealingConfig {
        enabled: true,
        // One round at start-up; the test runs the others itself.
        interval: Duration::from_secs(3600),
        per_page,
        ..SelfHealingConfig::default()
    }
}

fn series(text: &str, series: &str) -> Option<f64> {
    crate::utils::metric(text, series)
}

#[tokio::test]
async fn twenty_pushes_made_while_ingress_was_down_are_recovered_once() {
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.expect("provision");
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;

    // Ingress is down: GitHub records 20 failed push deliveries.
    let port = free_port();
    github.set_webhook(&format!("http://127.0.0.1:{port}{WEBHOOK_PATH}"), SECRET);
    let mut sent = Vec::new();
    for n in 0..20 {
        let delivery = github.send_webhook("push", push(n)).await;
        assert_eq!(delivery.status_code, 0, "ingress is down");
        sent.push(delivery);
    }

    // Ingress returns, with the reconciler (pages of 7, so the cursor is paged back to).
    let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
    config.self_healing = self_healing(7);
    let client = GitHubClient::new(app_config(&github))
        .unwrap()
        .with_backoff(backoff());
    let reconciler = Reconciler::new(&rt, &config, client.clone(), &mut registry);
    let ingress = Ingress::new(rt.clone(), config, &mut registry)
        .unwrap()
        .with_reconciler(reconciler.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let registry = Arc::new(registry);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingress.serve(listener, None, Arc::clone(&registry), shutdown.clone()));

    // The start-up round recovers all 20.
    wait_until(WAIT, "the start-up round", || {
        let registry = Arc::clone(&registry);
        async move {
            let text = metrics_text(&registry);
            (series(
                &text,
                r#"prx_ci_ingress_recovery_rounds_total{outcome="complete"}"#,
            ) == Some(1.0))
            .then_some(())
        }
    })
    .await;
    let text = metrics_text(&registry);
    assert_eq!(
        series(
            &text,
            r#"prx_ci_ingress_recovery_deliveries_total{outcome="recovered"}"#
        ),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            r#"prx_ci_ingress_recovery_deliveries_total{outcome="error"}"#
        ),
        Some(0.0)
    );
    let stored = stored_webhooks(&rt).await;
    assert_eq!(stored.len(), 20);
    let expected: BTreeSet<&str> = sent.iter().map(|d| d.guid.as_str()).collect();
    let got: BTreeSet<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(got, expected, "each delivery once, under its own id");
    for (guid, (origin, event, repository, payload, time)) in &stored {
        assert_eq!(*origin, Origin::Recovered, "{guid}");
        // Dated when GitHub first tried to deliver it, not when it was recovered.
        let attempted = &sent.iter().find(|d| &d.guid == guid).unwrap().delivered_at;
        let attempted =
            time::OffsetDateTime::parse(attempted, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(*time, attempted.unix_timestamp(), "{guid}");
        assert_eq!(event, "push");
        assert_eq!(repository, "PRX/app");
        let original = &sent.iter().find(|d| &d.guid == guid).unwrap().payload;
        assert_eq!(payload, original, "GitHub's payload, as the API gave it");
    }

    // The cursor is the newest delivery.
    let cursors: Records<Cursor> = Records::open(&rt.js, CURSOR_BUCKET).await.unwrap();
    let newest = sent.last().unwrap().id;
    assert_eq!(
        cursors
            .get("app")
            .await
            .unwrap()
            .record
            .map(|c| c.delivery_id),
        Some(newest)
    );

    // Someone redelivers five of them by hand: the ingress answers, JetStream deduplicates.
    for delivery in &sent[..5] {
        let _: Value = client
            .post_json(
                &format!("/app/hook/deliveries/{}/attempts", delivery.id),
                &json!({}),
            )
            .await
            .unwrap();
    }
    let redelivered: Vec<_> = github
        .deliveries()
        .into_iter()
        .filter(|d| d.redelivery)
        .collect();
    assert_eq!(redelivered.len(), 5);
    for delivery in &redelivered {
        assert_eq!(delivery.status_code, 202, "{}", delivery.response_body);
        assert!(
            delivery.response_body.contains("\"duplicate\":true"),
            "{}",
            delivery.response_body
        );
    }
    assert_eq!(stored_webhooks(&rt).await.len(), 20);

    // The next round finds nothing new; the cursor moves past the redeliveries.
    let report = reconciler.round().await.unwrap();
    assert_eq!(
        (report.recovered, report.already_present, report.errors),
        (0, 0, 0)
    );
    assert!(report.complete);
    let newest = github.deliveries().last().unwrap().id;
    assert_eq!(report.cursor, Some(newest));

    // A reconciler without a cursor (a lost bucket, another deployment) finds the 15 never
    // delivered and stores them again as duplicates: nothing new in the log.
    cursors.purge("app").await.unwrap();
    let report = reconciler.round().await.unwrap();
    assert_eq!(
        (report.recovered, report.already_present, report.errors),
        (0, 15, 0)
    );
    assert_eq!(stored_webhooks(&rt).await.len(), 20);
    assert_eq!(
        cursors
            .get("app")
            .await
            .unwrap()
            .record
            .map(|c| c.delivery_id),
        Some(newest)
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("ingress stops")
        .unwrap()
        .expect("ingress ran without error");
}

#[tokio::test]
async fn redeliver_mode_asks_github_and_the_ingress_stores_the_signed_redelivery() {
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.expect("provision");
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;
    let port = free_port();
    github.set_webhook(&format!("http://127.0.0.1:{port}{WEBHOOK_PATH}"), SECRET);
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(github.send_webhook("push", push(n)).await);
    }

    let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
    config.self_healing = SelfHealingConfig {
        mode: RecoveryMode::Redeliver,
        ..self_healing(100)
    };
    let client = GitHubClient::new(app_config(&github))
        .unwrap()
        .with_backoff(backoff());
    let reconciler = Reconciler::new(&rt, &config, client, &mut registry);
    let ingress = Ingress::new(rt.clone(), config, &mut registry).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingress.serve(listener, None, Arc::new(registry), shutdown.clone()));

    let report = reconciler.round().await.unwrap();
    assert_eq!((report.redelivery_requested, report.errors), (3, 0));
    let stored = stored_webhooks(&rt).await;
    assert_eq!(stored.len(), 3);
    // Redelivered by GitHub, signed: an ordinary GitHub delivery under its own id.
    for delivery in &sent {
        assert_eq!(stored[&delivery.guid].0, Origin::Github);
    }
    // Settled by the successful redeliveries: the next round asks nothing.
    let report = reconciler.round().await.unwrap();
    assert_eq!(report.redelivery_requested, 0);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_organisation_hook_is_reconciled_with_a_token() {
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.expect("provision");
    let github = FakeGitHub::start(FakeAuth::Token("t0ken".into())).await;
    let port = free_port();
    github.set_webhook(&format!("http://127.0.0.1:{port}{WEBHOOK_PATH}"), SECRET);
    let mut sent = Vec::new();
    for n in 0..4 {
        sent.push(github.send_webhook("push", push(n)).await);
    }

    let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
    config.self_healing = SelfHealingConfig {
        hook: HookKind::Org,
        org: Some("PRX".into()),
        hook_id: Some(1),
        ..self_healing(3)
    };
    let github_config = GitHubConfig {
        api_url: github.url(),
        token: Some(SecretString::from("t0ken")),
        ..GitHubConfig::default()
    };
    config
        .self_healing
        .check_credentials(&github_config)
        .unwrap();
    let client = GitHubClient::new(github_config)
        .unwrap()
        .with_backoff(backoff());
    let reconciler = Reconciler::new(&rt, &config, client, &mut registry);
    let report = reconciler.round().await.unwrap();
    assert_eq!((report.recovered, report.errors), (4, 0));
    assert_eq!(report.cursor, Some(sent.last().unwrap().id));
    let stored = stored_webhooks(&rt).await;
    for delivery in &sent {
        assert_eq!(stored[&delivery.guid].0, Origin::Recovered);
    }
    // Paged under the organisation's path, with the cursor from the Link header.
    let listed: Vec<_> = github
        .requests()
        .into_iter()
        .filter(|r| r.path == "/orgs/PRX/hooks/1/deliveries")
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let cursors: Records<Cursor> = Records::open(&rt.js, CURSOR_BUCKET).await.unwrap();
    assert!(cursors.get("org.prx.1").await.unwrap().record.is_some());
}

#[tokio::test]
async fn a_github_outage_fails_the_round_and_stores_nothing() {
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.expect("provision");
    let unreachable = GitHubConfig {
        api_url: format!("http://127.0.0.1:{}", free_port()),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    };
    let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
    config.self_healing = self_healing(100);
    let client = GitHubClient::new(unreachable)
        .unwrap()
        .with_backoff(backoff());
    let reconciler = Reconciler::new(&rt, &config, client, &mut registry);
    assert!(reconciler.round().await.is_err());
    // `run` logs it and carries on until shut down.
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(reconciler.run(shutdown.clone()));
    wait_until(WAIT, "a failed round is counted", || {
        let text = metrics_text(&registry);
        async move {
            (series(
                &text,
                r#"prx_ci_ingress_recovery_rounds_total{outcome="failed"}"#,
            ) == Some(1.0))
            .then_some(())
        }
    })
    .await;
    assert!(!run.is_finished());
    shutdown.cancel();
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    let cursors: Records<Cursor> = Records::open(&rt.js, CURSOR_BUCKET).await.unwrap();
    assert_eq!(cursors.get("app").await.unwrap().record, None);
}

/// PRX_WEBHOOKS' webhooks by delivery id: origin, event, repository, payload, envelope time
/// (seconds). Panics on a
/// delivery id stored twice.
async fn stored_webhooks(rt: &Runtime) -> HashMap<String, (Origin, String, String, Value, i64)> {
    let stream = rt
        .js
        .get_stream(prx_ci_shared::bus::subject::WEBHOOKS_STREAM)
        .await
        .unwrap();
    let state = stream.get_info().await.unwrap().state;
    let mut out = HashMap::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let envelope = <prx_ci_proto::v1::Envelope as prost::Message>::decode(message.payload)
            .expect("stored envelope decodes");
        let webhook = webhook_received(&envelope);
        let payload: Value = serde_json::from_slice(&webhook.payload).unwrap();
        let previous = out.insert(
            webhook.delivery_id.clone(),
            (
                webhook.origin(),
                webhook.event_name.clone(),
                webhook.repository.clone(),
                payload,
                envelope.time.as_ref().map_or(0, |t| t.seconds),
            ),
        );
        assert!(previous.is_none(), "{} stored twice", webhook.delivery_id);
    }
    out
}
