//! A broker outage under every consumer loop: nats-server is killed (SIGKILL) while a build
//! runs, the build finishes during the outage, the server comes back on the same store. The
//! runner's reports, the build-watcher, the publisher, the notifier, ingress and the
//! dispatcher all resume on their own: the build's result reaches the deploy pointer and Slack,
//! and a push sent after the outage builds and publishes as usual.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Local, Repo, stored_events};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{KvParameterStore, parameter_views};
use prx_ci_shared::testing::wait_until;

const REPOSITORY: &str = "PRX/outage-app";
const PARAMETER: &str = "/prx/stag/Spire/OutageApp/pkg/docker-image-tag";
const T0: i64 = 1_797_000_000;
const WAIT: Duration = Duration::from_secs(120);

/// A build that takes two seconds (long enough to kill the broker while it runs).
const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: "OUTAGE_APP=/prx/stag/Spire/OutageApp/pkg/docker-image-tag"
  exported-variables:
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - OUTAGE_APP
phases:
  build:
    commands:
      - sleep 2
  post_build:
    commands:
      - export OUTAGE_APP="github/prx/outage-app:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

fn push(repo: &Repo, before: &str, after: &str, pushed_at: i64) -> serde_json::Value {
    common::push_event(REPOSITORY, repo, before, after, pushed_at, false)
}

fn value_of(commit: &str) -> String {
    format!("github/prx/outage-app:{commit}-x86_64")
}

async fn pointer(js: &async_nats::jetstream::Context) -> Option<String> {
    let store = KvParameterStore::new(js).await.ok()?;
    parameter_views(js, &store, "/prx/stag/Spire/")
        .await
        .ok()?
        .into_iter()
        .find(|r| r.parameter == PARAMETER)
        .and_then(|r| r.value)
}

async fn wait_for_pointer(local: &Local, commit: &str) {
    let js = local.js();
    let expected = value_of(commit);
    wait_until(WAIT, &format!("the pointer on {commit}"), || {
        let js = js.clone();
        let expected = expected.clone();
        async move { (pointer(&js).await? == expected).then_some(()) }
    })
    .await;
}

/// The build requested for `commit`, once it is.
async fn build_of(local: &Local, commit: &str) -> v1::BuildRef {
    local
        .wait_for(&format!("the build of {commit}"), |events| {
            events.iter().find_map(|e| match &e.payload {
                Some(Payload::BuildRequested(r))
                    if r.build.as_ref().is_some_and(|b| b.commit == commit) =>
                {
                    r.build.clone()
                }
                _ => None,
            })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_loop_resumes_after_nats_server_is_killed_mid_build() {
    let mut local = Local::start().await;
    let repo = Repo::init(local.data.path());
    let first = repo.commit(&[("buildspec.yml", BUILDSPEC), ("v", "1")], "first");
    let second = repo.commit(&[("v", "2")], "second");
    let third = repo.commit(&[("v", "3")], "third");
    let zero = "0".repeat(40);

    assert_eq!(
        local
            .send("push", "outage-1", &push(&repo, &zero, &first, T0))
            .await,
        202
    );
    wait_for_pointer(&local, &first).await;

    // The second push's build is running when the broker dies, and finishes during the outage.
    assert_eq!(
        local
            .send("push", "outage-2", &push(&repo, &first, &second, T0 + 10))
            .await,
        202
    );
    let build = build_of(&local, &second).await;
    let log = local.data.path().join("runner/builds").join(format!(
        "{}.log",
        build.build_id.trim_start_matches("local:")
    ));
    let phase_running = log.clone();
    wait_until(WAIT, "the second build to run its commands", || {
        let log = phase_running.clone();
        async move {
            let text = std::fs::read_to_string(log).ok()?;
            text.contains("Running command sleep 2").then_some(())
        }
    })
    .await;
    local.nats.stop();
    wait_until(
        WAIT,
        "the second build to finish while the broker is down",
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(log).ok()?;
                text.contains("Build SUCCEEDED").then_some(())
            }
        },
    )
    .await;
    local.nats.restart().await;

    // Its result gets through once the broker is back.
    wait_for_pointer(&local, &second).await;
    // A push after the outage goes through ingress and the dispatcher as usual.
    let status = wait_until(WAIT, "ingress to store webhooks again", || async {
        let status = local
            .send("push", "outage-3", &push(&repo, &second, &third, T0 + 20))
            .await;
        (status == 202).then_some(status)
    })
    .await;
    assert_eq!(status, 202);
    wait_for_pointer(&local, &third).await;

    // Every build finished exactly once, and each got its Slack message.
    let events = local
        .wait_for("a Slack message for each of the three builds", |events| {
            let posted: std::collections::BTreeSet<String> = events
                .iter()
                .filter_map(|e| match &e.payload {
                    Some(Payload::NotificationDelivered(n))
                        if n.channel() == v1::NotificationChannel::Slack
                            && n.action == "posted" =>
                    {
                        n.build.as_ref().map(|b| b.commit.clone())
                    }
                    _ => None,
                })
                .collect();
            (posted.len() == 3).then(|| events.to_vec())
        })
        .await;
    let mut completed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in &events {
        if let Some(Payload::BuildCompleted(c)) = &e.payload {
            completed
                .entry(c.build.clone().unwrap_or_default().commit)
                .or_default()
                .push(c.status);
        }
    }
    for commit in [&first, &second, &third] {
        assert_eq!(
            completed.get(commit.as_str()),
            Some(&vec![v1::BuildStatus::Succeeded as i32]),
            "{commit}: {completed:?}"
        );
    }
    let parked = stored_events(&local.js())
        .await
        .into_iter()
        .filter(|e| matches!(e.payload, Some(Payload::MessageParked(_))))
        .count();
    assert_eq!(parked, 0, "nothing parked");
    local.system.stop().await.unwrap();
}
