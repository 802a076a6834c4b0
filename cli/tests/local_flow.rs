//! End to end, exactly as a newcomer runs it: the in-process system of `prx-ci up` (local
//! runner, KV parameters) against a real nats-server, driven by `prx-ci demo`'s scenario: two
//! pushes to `main` whose builds finish in reverse order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Local, SECRET, stored_events};
use prx_ci::demo::{self, DemoArgs, PARAMETER};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{KvParameterStore, parameter_report};
use prx_ci_shared::testing::wait_until;

#[tokio::test]
async fn an_older_push_finishing_last_never_overwrites_the_deploy_pointer() {
    let local = Local::start().await;
    let js = local.js();

    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        demo::run_scenario(&DemoArgs {
            url: local.url.clone(),
            secret: Some(SECRET.into()),
            data_dir: local.data.path().to_owned(),
            nats_url: local.nats.url(),
        }),
    )
    .await
    .expect("the scenario finishes")
    .unwrap();

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
    let report = parameter_report(&js, &store, "/prx/stag/Spire/")
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
