//! End to end, exactly as a newcomer runs it: the in-process system of `prx-ci up` (local
//! runner, KV parameters) against a real nats-server, driven by `prx-ci demo`'s scenario: two
//! pushes to `main` whose builds finish in reverse order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Local, stored_events, stored_messages};
use prx_ci::demo::{self, PARAMETER};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{KvParameterStore, parameter_views};
use prx_ci_shared::testing::wait_until;

#[tokio::test]
async fn an_older_push_finishing_last_never_overwrites_the_deploy_pointer() {
    let local = Local::start().await;
    let js = local.js();

    let outcome = local.run_demo().await;

    // Both pushes built, each exactly once, and both succeeded.
    let requested: Vec<&v1::BuildRequested> = outcome
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::BuildRequested(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 2);
    let completed: BTreeMap<String, i32> = outcome
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::BuildCompleted(c)) => {
                Some((c.build.clone().unwrap_or_default().commit, c.status))
            }
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 2);
    assert!(
        completed
            .values()
            .all(|s| *s == v1::BuildStatus::Succeeded as i32)
    );

    // The newer push was published; the older one, finishing last, was skipped as superseded.
    let push_sequence = |commit: &str| {
        outcome
            .events
            .iter()
            .find(|e| matches!(&e.payload, Some(Payload::BuildRequested(r)) if r.build.as_ref().is_some_and(|b| b.commit == commit)))
            .map(|e| e.push_sequence)
            .unwrap()
    };
    assert!(push_sequence(&outcome.first) < push_sequence(&outcome.second));
    let applied: Vec<&v1::PublishApplied> = outcome
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::PublishApplied(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].parameter, PARAMETER);
    assert!(applied[0].value.contains(&outcome.second));
    let skipped = outcome
        .events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::PublishSkipped(p)) => Some(p),
            _ => None,
        })
        .expect("the stale publish is reported");
    assert_eq!(skipped.reason(), v1::PublishSkipReason::Superseded);
    assert_eq!(
        skipped.superseded_by_sequence,
        push_sequence(&outcome.second)
    );
    assert_eq!(skipped.build.as_ref().unwrap().commit, outcome.first);

    // The parameter store holds the newest push's value.
    let store = KvParameterStore::new(&js).await.unwrap();
    let report = parameter_views(&js, &store, "/prx/stag/Spire/")
        .await
        .unwrap();
    let parameter = report.iter().find(|r| r.parameter == PARAMETER).unwrap();
    assert_eq!(
        parameter.value.as_deref(),
        Some(format!("github/prx/demo-app:{}-x86_64", outcome.second).as_str())
    );

    // Every build got exactly one Slack message, posted once and then updated.
    let posted = wait_until(Duration::from_secs(30), "both Slack messages", || {
        let js = js.clone();
        async move {
            let posts = notifications(&js, "posted").await;
            (posts.len() == 2).then_some(posts)
        }
    })
    .await;
    let mut builds: Vec<_> = posted
        .iter()
        .map(|n| n.build.clone().unwrap_or_default().build_id)
        .collect();
    builds.sort();
    builds.dedup();
    assert_eq!(builds.len(), 2, "one message per build: {posted:?}");

    local.system.stop().await.unwrap();
}

/// Slack `NotificationDelivered` events with the given action, from the stream.
async fn notifications(
    js: &async_nats::jetstream::Context,
    action: &str,
) -> Vec<v1::NotificationDelivered> {
    stored_events(js)
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::NotificationDelivered(n))
                if n.channel() == v1::NotificationChannel::Slack && n.action == action =>
            {
                Some(n)
            }
            _ => None,
        })
        .collect()
}

/// A pull-request author's buildspec for `prx-ci up`: it knows the NATS port and the data
/// dir's path, and tries to read the secrets, dump its environment, and publish a forged
/// event with the NATS protocol over bash's `/dev/tcp`.
fn attacking_buildspec(nats_port: u16, data_dir: &std::path::Path) -> String {
    format!(
        r#"version: 0.2
env:
  exported-variables: [STOLEN, ENVIRONMENT, NATS_REPLY]
phases:
  build:
    commands:
      - echo "building $PRX_COMMIT"
      - STOLEN="$(cat {data}/ops-token {data}/webhook-secret {data}/nats-credentials {data}/nats/nats-server.conf 2>&1; ls -A {data} 2>&1)" || true
      - ENVIRONMENT="$(env)" || true
      # Pipelined, as a forger would; the server's reply may be lost to the reset that closing
      # a connection with unread input sends.
      - (exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'CONNECT {{"verbose":false}}\r\nPUB prx.build.completed.PRX.forged 6\r\nforged\r\nPING\r\n' >&3 && timeout 10 cat <&3) || true
      # CONNECT alone: the reply is read in full.
      - NATS_REPLY="$({{ exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'CONNECT {{"verbose":false}}\r\n' >&3 && timeout 10 cat <&3; }} 2>&1)" || true
      - echo "stolen $STOLEN nats $NATS_REPLY"
"#,
        data = data_dir.display(),
        port = nats_port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_build_can_neither_read_the_secrets_of_prx_ci_up_nor_publish_to_its_nats() {
    use prx_ci::local_nats::LocalNats;
    use prx_ci::system::{LocalSystem, SystemConfig};
    use prx_ci_shared::testing::{free_port, tool_path};
    use secrecy::ExposeSecret as _;
    use tokio::net::TcpListener;

    // What `prx-ci up` does: private data dir with generated secrets, then its nats-server.
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join(".prx-ci");
    let mut config = SystemConfig::default();
    let secrets = config.prepare_local(&data_dir).unwrap();
    let port = free_port();
    let nats = LocalNats::start_with(
        &tool_path("nats-server"),
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &data_dir,
    )
    .await
    .unwrap();
    nats.apply(&mut config.nats);
    let nats_password = config.nats.password.clone().unwrap();
    let webhook_secret = secrets.generated_webhook_secret.clone().unwrap();
    let ops_token = config.ops.token.clone().unwrap();
    let webhooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", webhooks.local_addr().unwrap());
    let system = LocalSystem::start(config, webhooks, ops, None)
        .await
        .unwrap();
    let js = system.runtime.js.clone();

    // Without the credentials, no client gets in.
    assert!(async_nats::connect(&nats.url).await.is_err());

    // The attacker's repository, pushed to main.
    let repo = root.path().join("attacker");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@a",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("buildspec.yml"),
        attacking_buildspec(port, &data_dir.canonicalize().unwrap()),
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "innocent change"]);
    let commit = git(&["rev-parse", "HEAD"]);
    let body = demo::push_payload(&repo, &"0".repeat(40), &commit, "innocent change");
    let response = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header(
            "X-Hub-Signature-256",
            prx_ci_ingress::signature_256(webhook_secret.expose_secret(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let completed = wait_until(Duration::from_secs(90), "the build to complete", || {
        let js = js.clone();
        async move {
            stored_messages(&js)
                .await
                .into_iter()
                .find_map(|(_, e)| match e.payload {
                    Some(Payload::BuildCompleted(c)) => Some(c),
                    Some(Payload::BuildSkipped(s)) => panic!("the build was skipped: {s:?}"),
                    _ => None,
                })
        }
    })
    .await;
    assert_eq!(completed.status(), v1::BuildStatus::Succeeded);
    let exported = &completed.exported_variables;
    let uuid = completed
        .build
        .as_ref()
        .unwrap()
        .build_id
        .replace("local:", "");
    let log = std::fs::read_to_string(data_dir.join(format!("runner/builds/{uuid}.log"))).unwrap();

    // The publish attempt reached the server and was refused; nothing landed in the stream.
    assert!(
        exported["NATS_REPLY"].contains("Authorization Violation"),
        "{exported:?}\n{log}\n{}",
        std::fs::read_to_string(data_dir.join("nats-server.log")).unwrap_or_default()
    );
    for (subject, envelope) in stored_messages(&js).await {
        assert!(!subject.contains("forged"), "{subject}: {envelope:?}");
    }
    // The secrets were not readable, by path or from the environment.
    assert!(
        exported["STOLEN"].contains("No such file or directory"),
        "{exported:?}"
    );
    for secret in [
        nats_password.expose_secret(),
        webhook_secret.expose_secret(),
        ops_token.expose_secret(),
    ] {
        for (name, value) in exported {
            assert!(!value.contains(secret), "{name} holds a secret");
        }
        assert!(!log.contains(secret), "the build log holds a secret");
    }
    assert!(log.contains("Authorization Violation"), "{log}");

    system.stop().await.unwrap();
    nats.stop().await;
}
