//! GitHub's push order, end to end through what `prx-ci up` runs: deliveries that arrive late
//! (out of order, redelivered, recovered under a new delivery id) order where GitHub pushed
//! them, and a force push back to an older commit is a newer push.

mod common;

use common::{Local, Repo, publish_outcomes};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{KvParameterStore, parameter_views};

const REPOSITORY: &str = "PRX/order-app";
const PARAMETER: &str = "/prx/stag/Spire/OrderApp/pkg/docker-image-tag";
/// GitHub's time of the first push (seconds).
const T0: i64 = 1_795_000_000;

const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: "ORDER_APP=/prx/stag/Spire/OrderApp/pkg/docker-image-tag"
  exported-variables:
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - ORDER_APP
phases:
  post_build:
    commands:
      - export ORDER_APP="github/prx/order-app:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

fn push(repo: &Repo, before: &str, after: &str, pushed_at: i64, forced: bool) -> serde_json::Value {
    common::push_event(REPOSITORY, repo, before, after, pushed_at, forced)
}

fn value_of(commit: &str) -> String {
    format!("github/prx/order-app:{commit}-x86_64")
}

/// Waits until the builds of `commit` have recorded `count` publish outcomes.
async fn outcomes(local: &Local, commit: &str, count: usize) -> Vec<Payload> {
    local
        .wait_for(
            &format!("{count} publish outcome(s) of {commit}"),
            |events| {
                let outcomes = publish_outcomes(events, commit);
                (outcomes.len() >= count).then_some(outcomes)
            },
        )
        .await
}

async fn pointer(local: &Local) -> Option<String> {
    let js = local.js();
    let store = KvParameterStore::new(&js).await.unwrap();
    let report = parameter_views(&js, &store, "/prx/stag/Spire/")
        .await
        .unwrap();
    report
        .into_iter()
        .find(|r| r.parameter == PARAMETER)
        .and_then(|r| r.value)
}

fn superseded(outcome: &Payload) -> &v1::PublishSkipped {
    match outcome {
        Payload::PublishSkipped(s) if s.reason() == v1::PublishSkipReason::Superseded => s,
        other => panic!("expected a SUPERSEDED skip, got {other:?}"),
    }
}

fn requested_count(events: &[v1::Envelope], commit: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(&e.payload, Some(Payload::BuildRequested(r))
                if r.build.as_ref().is_some_and(|b| b.commit == commit))
        })
        .count()
}

#[tokio::test]
async fn a_late_delivery_of_an_older_push_never_moves_the_pointer_back() {
    let local = Local::start().await;
    let repo = Repo::init(local.data.path());
    let older = repo.commit(&[("buildspec.yml", BUILDSPEC), ("v", "1")], "older");
    let newer = repo.commit(&[("v", "2")], "newer");
    let zero = "0".repeat(40);

    // GitHub delivers the newer push first; it builds and publishes.
    let newer_push = push(&repo, &older, &newer, T0 + 30, false);
    assert_eq!(local.send("push", "d-newer", &newer_push).await, 202);
    let published = outcomes(&local, &newer, 1).await;
    assert!(matches!(&published[0], Payload::PublishApplied(a) if a.value == value_of(&newer)));

    // The older push arrives late: it builds, but its publish is skipped as superseded.
    let older_push = push(&repo, &zero, &older, T0, false);
    assert_eq!(local.send("push", "d-older", &older_push).await, 202);
    let late = outcomes(&local, &older, 1).await;
    let skip = superseded(&late[0]);
    assert_eq!(skip.superseded_by_commit, newer);
    assert_eq!(
        pointer(&local).await.as_deref(),
        Some(value_of(&newer).as_str())
    );

    // Redelivered later under its original delivery id: stored once, nothing new happens.
    assert_eq!(local.send("push", "d-older", &older_push).await, 202);
    // Recovered under a new delivery id: the same push, so the same position; it builds again
    // and is skipped again.
    assert_eq!(
        local.send("push", "d-older-recovered", &older_push).await,
        202
    );
    let again = outcomes(&local, &older, 2).await;
    superseded(&again[1]);
    let events = local.events().await;
    assert_eq!(
        requested_count(&events, &older),
        2,
        "the original delivery id collapsed; the new one built once"
    );
    let positions: Vec<u64> = events
        .iter()
        .filter(|e| {
            matches!(&e.payload, Some(Payload::BuildRequested(r))
                if r.build.as_ref().is_some_and(|b| b.commit == older))
        })
        .map(|e| e.push_sequence)
        .collect();
    assert_eq!(positions[0], positions[1], "one push, one position");
    assert_eq!(
        pointer(&local).await.as_deref(),
        Some(value_of(&newer).as_str())
    );
    local.system.stop().await.unwrap();
}

#[tokio::test]
async fn a_force_push_back_to_an_older_commit_is_a_newer_push() {
    let local = Local::start().await;
    let repo = Repo::init(local.data.path());
    let first = repo.commit(&[("buildspec.yml", BUILDSPEC), ("v", "1")], "first");
    let second = repo.commit(&[("v", "2")], "second");
    let zero = "0".repeat(40);

    assert_eq!(
        local
            .send("push", "d1", &push(&repo, &zero, &first, T0, false))
            .await,
        202
    );
    outcomes(&local, &first, 1).await;
    assert_eq!(
        local
            .send("push", "d2", &push(&repo, &first, &second, T0 + 60, false))
            .await,
        202
    );
    outcomes(&local, &second, 1).await;
    assert_eq!(
        pointer(&local).await.as_deref(),
        Some(value_of(&second).as_str())
    );

    // `git push --force` back to the first commit: an older commit, a newer push.
    let back = push(&repo, &second, &first, T0 + 120, true);
    assert_eq!(local.send("push", "d3", &back).await, 202);
    let outcomes = outcomes(&local, &first, 2).await;
    assert!(
        matches!(&outcomes[1], Payload::PublishApplied(a) if a.value == value_of(&first)),
        "{outcomes:?}"
    );
    assert_eq!(
        pointer(&local).await.as_deref(),
        Some(value_of(&first).as_str())
    );
    local.system.stop().await.unwrap();
}
