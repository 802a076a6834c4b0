//! The ops API against a real nats-server, through the real gRPC client.

mod common;

use std::sync::Arc;

use common::*;
use prost::Message as _;
use prx_ci_ops::client;
use prx_ci_ops::replay::ReplayRunner;
use prx_ci_proto::v1::{self, envelope::Payload, history_request, replay_request};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, PARKED_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::testing::git::git;
use prx_ci_shared::testing::wait_until;
use prx_ci_shared::{CancellationToken, Delivery, Handler, HandlerError};
use secrecy::SecretString;
use tokio::sync::Mutex;
use tonic::Code;

fn kinds(events: &[v1::StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let env = e.envelope.as_ref().unwrap();
            format!(
                "{}:{}",
                env.correlation_id,
                subject::EventKind::of(env.payload.as_ref().unwrap()).name()
            )
        })
        .collect()
}

#[tokio::test]
async fn calls_without_the_right_token_are_refused() {
    let h = Harness::start().await;
    for token in [None, Some(SecretString::from("wrong-token-0123456789"))] {
        let mut client = client::connect(&h.url, token.as_ref(), None).await.unwrap();
        let err = client
            .builds(v1::BuildsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut client = h.client().await;
    client.builds(v1::BuildsRequest::default()).await.unwrap();
}

#[tokio::test]
async fn history_of_a_branch_runs_from_delivery_to_completion_in_order() {
    let h = Harness::start().await;
    let main = push("d1", "PRX/app", "main", &sha('a'));
    let feature = push("d2", "PRX/app", "feature/x", &sha('b'));
    let other = push("d3", "PRX/other", "main", &sha('c'));
    let s1 = h.publish(&main).await;
    h.publish(&feature).await;
    let s3 = h.publish(&other).await;
    let skip = Chain::caused_by(&feature).envelope(
        new_event_id(),
        Payload::BuildSkipped(v1::BuildSkipped {
            repository: "PRX/app".into(),
            commit: sha('b'),
            reason: v1::SkipReason::NonDefaultBranch as i32,
            ..Default::default()
        }),
    );
    h.publish(&skip).await;
    for e in build_story(&main, s1, "main", Some(v1::BuildStatus::Succeeded)) {
        h.publish(&e).await;
    }
    for e in build_story(&other, s3, "main", None) {
        h.publish(&e).await;
    }
    let mut client = h.client().await;
    let history = |filter| v1::HistoryRequest {
        repository: "PRX/app".into(),
        filter,
        ..Default::default()
    };

    let branch = client
        .history(history(Some(history_request::Filter::Branch(
            "main".into(),
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&branch.events),
        [
            "d1:webhook.received",
            "d1:build.requested",
            "d1:build.started",
            "d1:build.completed"
        ]
    );
    assert_eq!(branch.events[0].stream, WEBHOOKS_STREAM);
    assert_eq!(branch.events[0].sequence, s1);
    assert_eq!(branch.events[1].stream, EVENTS_STREAM);
    assert_eq!(branch.events[1].subject, "prx.build.requested.PRX.app");

    let feature = client
        .history(history(Some(history_request::Filter::Commit(
            sha('b')[..8].into(),
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&feature.events),
        ["d2:webhook.received", "d2:build.skipped"]
    );

    let all = client.history(history(None)).await.unwrap().into_inner();
    assert_eq!(all.events.len(), 6, "{:?}", kinds(&all.events));
    assert!(kinds(&all.events).iter().all(|k| !k.starts_with("d3")));

    let err = client
        .history(v1::HistoryRequest {
            repository: "not a repo".into(),
            filter: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn history_answers_after_a_restart_when_every_stored_message_has_expired() {
    let h = Harness::start().await;
    let main = push("d1", "PRX/app", "main", &sha('a'));
    let s1 = h.publish(&main).await;
    for e in build_story(&main, s1, "main", Some(v1::BuildStatus::Succeeded)) {
        h.publish(&e).await;
    }
    // Retention removed everything: the streams are empty, their last sequences are not.
    for stream in [EVENTS_STREAM, WEBHOOKS_STREAM] {
        h.rt.js
            .get_stream(stream)
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
    }
    let mut restarted = h.another_ops().await;
    let history = restarted
        .history(v1::HistoryRequest {
            repository: "PRX/app".into(),
            filter: Some(history_request::Filter::Branch("main".into())),
            ..Default::default()
        })
        .await
        .expect("an empty log is an empty history, not a projection that never catches up")
        .into_inner();
    assert!(history.events.is_empty(), "{:?}", kinds(&history.events));
}

#[tokio::test]
async fn builds_lists_in_flight_and_recent_builds_with_log_links() {
    let h = Harness::start().await;
    let first = push("d1", "PRX/app", "main", &sha('a'));
    let second = push("d2", "PRX/app", "main", &sha('b'));
    let s1 = h.publish(&first).await;
    let s2 = h.publish(&second).await;
    for e in build_story(&first, s1, "main", Some(v1::BuildStatus::Failed)) {
        h.publish(&e).await;
    }
    for e in build_story(&second, s2, "main", None) {
        h.publish(&e).await;
    }
    let mut client = h.client().await;
    let builds = wait_until(WAIT, "the builds projection to catch up", || {
        let mut client = client.clone();
        async move {
            let b = client
                .builds(v1::BuildsRequest::default())
                .await
                .ok()?
                .into_inner();
            // Running, not just requested: the projection may be between the two events.
            (b.in_flight.len() == 1
                && b.recent.len() == 1
                && b.in_flight[0].state() == v1::BuildState::Running)
                .then_some(b)
        }
    })
    .await;
    let running = &builds.in_flight[0];
    assert_eq!(running.state(), v1::BuildState::Running);
    assert_eq!(running.build.as_ref().unwrap().commit, sha('b'));
    assert!(
        running
            .build
            .as_ref()
            .unwrap()
            .log_url
            .starts_with("file:///logs/")
    );
    assert_eq!(running.correlation_id, "d2");
    assert_eq!(running.push_sequence, s2);
    let failed = &builds.recent[0];
    assert_eq!(failed.state(), v1::BuildState::Failed);
    assert_eq!(failed.build.as_ref().unwrap().commit, sha('a'));
    let other = client
        .builds(v1::BuildsRequest {
            repository: "PRX/other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.in_flight.is_empty() && other.recent.is_empty());
}

/// A completed build's event, stored, and then parked by the notifier (as the consumer loop
/// parks a message that kept failing): the original, its stream sequence, and where the parked
/// entry was stored.
async fn park_a_completed_build(h: &Harness) -> (v1::Envelope, u64, prx_ci_shared::Stored) {
    let webhook = push("d1", "PRX/app", "main", &sha('a'));
    let seq = h.publish(&webhook).await;
    let original = build_story(&webhook, seq, "main", Some(v1::BuildStatus::Succeeded))
        .pop()
        .unwrap();
    let original_seq = h.publish(&original).await;
    let parked = Chain::caused_by(&original).envelope(
        new_event_id(),
        Payload::MessageParked(v1::MessageParked {
            consumer: "notifier".into(),
            stream: EVENTS_STREAM.into(),
            stream_sequence: original_seq,
            subject: "prx.build.completed.PRX.app".into(),
            data: original.encode_to_vec(),
            error: "slack: 503 Service Unavailable".into(),
            deliveries: 8,
            headers: [
                ("Nats-Msg-Id".to_owned(), original.event_id.clone()),
                (
                    "traceparent".to_owned(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
                ),
            ]
            .into_iter()
            .collect(),
        }),
    );
    let stored =
        h.rt.publisher
            .publish_to(subject::parked_subject("notifier"), &parked)
            .await
            .unwrap();
    (original, original_seq, stored)
}

#[tokio::test]
async fn a_parked_message_is_put_back_once_under_a_new_message_id() {
    let h = Harness::start().await;
    let (original, original_seq, stored) = park_a_completed_build(&h).await;
    assert_eq!(stored.stream, PARKED_STREAM);

    let mut client = h.client().await;
    let listed = client
        .parked(v1::ParkedRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, stored.sequence);
    assert_eq!(listed[0].event_id, original.event_id);
    assert!(!listed[0].retried);
    let p = listed[0].parked.as_ref().unwrap();
    assert_eq!((p.consumer.as_str(), p.deliveries), ("notifier", 8));
    assert!(p.error.contains("503"));

    let retried = client
        .retry_parked(v1::RetryParkedRequest {
            id: stored.sequence,
            requested_by: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.stream, EVENTS_STREAM);
    assert!(
        retried.sequence > original_seq,
        "stored anew, not deduplicated"
    );
    assert_ne!(retried.message_id, original.event_id);
    let events = h.rt.js.get_stream(EVENTS_STREAM).await.unwrap();
    let copy = events.get_raw_message(retried.sequence).await.unwrap();
    assert_eq!(copy.subject.as_str(), "prx.build.completed.PRX.app");
    assert_eq!(v1::Envelope::decode(copy.payload).unwrap(), original);
    let headers = copy.headers;
    assert_eq!(
        headers.get("traceparent").unwrap().as_str(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "the retried message stays in its trace"
    );

    let again = client
        .retry_parked(v1::RetryParkedRequest {
            id: stored.sequence,
            requested_by: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("alice"), "{}", again.message());
    let listed = client
        .parked(v1::ParkedRequest {
            consumer: "notifier".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(listed[0].retried);
    assert_eq!(listed[0].retried_by, "alice");
    let missing = client
        .retry_parked(v1::RetryParkedRequest {
            id: 999,
            requested_by: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn parked_messages_count_as_waiting_until_retried() {
    use prx_ci_ops::parked::waiting;
    let h = Harness::start().await;
    assert_eq!(waiting(&h.rt.js).await.unwrap(), 0);
    let (_, _, first) = park_a_completed_build(&h).await;
    let (_, _, second) = park_a_completed_build(&h).await;
    assert_ne!(first.sequence, second.sequence);
    assert_eq!(waiting(&h.rt.js).await.unwrap(), 2);
    h.client()
        .await
        .retry_parked(v1::RetryParkedRequest {
            id: second.sequence,
            requested_by: "alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        waiting(&h.rt.js).await.unwrap(),
        1,
        "the retried one no longer waits"
    );
}

#[tokio::test]
async fn a_retried_parked_message_records_the_authenticated_operator() {
    let h = Harness::start().await;
    let (_, _, stored) = park_a_completed_build(&h).await;
    let mut bob = h.client_with(BOB_TOKEN).await;
    bob.retry_parked(v1::RetryParkedRequest {
        id: stored.sequence,
        requested_by: "alice".into(),
    })
    .await
    .unwrap();
    let listed = bob
        .parked(v1::ParkedRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed[0].retried_by, "bob");
}

fn drop_request(id: u64, reason: &str) -> v1::DropParkedRequest {
    v1::DropParkedRequest {
        id,
        reason: reason.into(),
    }
}

async fn listed(client: &mut prx_ci_ops::client::Client, id: u64) -> v1::ParkedEntry {
    client
        .parked(v1::ParkedRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .find(|e| e.id == id)
        .unwrap()
}

#[tokio::test]
async fn a_dropped_parked_message_records_the_operator_and_reason_and_stops_waiting() {
    use prx_ci_ops::parked::waiting;
    let h = Harness::start().await;
    let (_, _, first) = park_a_completed_build(&h).await;
    let (_, _, second) = park_a_completed_build(&h).await;
    assert_eq!(waiting(&h.rt.js).await.unwrap(), 2);
    let events_before =
        h.rt.js
            .get_stream(EVENTS_STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .last_sequence;

    let mut bob = h.client_with(BOB_TOKEN).await;
    let dropped = bob
        .drop_parked(drop_request(
            first.sequence,
            "  the Slack channel was archived \n",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dropped.dropped_by, "bob", "the token's operator");
    assert!(dropped.dropped_at.is_some());

    let entry = listed(&mut h.client().await, first.sequence).await;
    assert!(entry.dropped && !entry.retried);
    assert_eq!(entry.dropped_by, "bob");
    assert_eq!(entry.drop_reason, "the Slack channel was archived");
    assert_eq!(entry.dropped_at, dropped.dropped_at);
    let other = listed(&mut bob, second.sequence).await;
    assert!(!other.dropped && other.dropped_by.is_empty() && other.dropped_at.is_none());

    assert_eq!(
        waiting(&h.rt.js).await.unwrap(),
        1,
        "the dropped one no longer waits"
    );
    let parked = h.rt.js.get_stream(PARKED_STREAM).await.unwrap();
    parked
        .get_raw_message(first.sequence)
        .await
        .expect("a dropped message stays in PRX_PARKED");
    let events_after =
        h.rt.js
            .get_stream(EVENTS_STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .last_sequence;
    assert_eq!(events_before, events_after, "a drop publishes nothing");
}

#[tokio::test]
async fn a_dropped_entry_is_not_retried_and_a_retried_one_is_not_dropped() {
    let h = Harness::start().await;
    let (_, _, first) = park_a_completed_build(&h).await;
    let (_, _, second) = park_a_completed_build(&h).await;
    let mut alice = h.client().await;
    let mut bob = h.client_with(BOB_TOKEN).await;
    alice
        .drop_parked(drop_request(first.sequence, "duplicate of a newer build"))
        .await
        .unwrap();
    let events = h.rt.js.get_stream(EVENTS_STREAM).await.unwrap();
    let before = events.get_info().await.unwrap().state.last_sequence;

    let retry = bob
        .retry_parked(v1::RetryParkedRequest {
            id: first.sequence,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition);
    assert!(
        retry.message().contains(&format!(
            "entry {} cannot be retried: it was dropped by alice at ",
            first.sequence
        )) && retry.message().contains("duplicate of a newer build"),
        "{}",
        retry.message()
    );
    assert_eq!(
        events.get_info().await.unwrap().state.last_sequence,
        before,
        "a refused retry publishes nothing"
    );
    let again = bob
        .drop_parked(drop_request(first.sequence, "me too"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("was already dropped by alice"),
        "{}",
        again.message()
    );
    let entry = listed(&mut bob, first.sequence).await;
    assert_eq!(
        (entry.dropped_by.as_str(), entry.drop_reason.as_str()),
        ("alice", "duplicate of a newer build"),
        "the refused calls changed nothing"
    );

    alice
        .retry_parked(v1::RetryParkedRequest {
            id: second.sequence,
            ..Default::default()
        })
        .await
        .unwrap();
    let drop = bob
        .drop_parked(drop_request(second.sequence, "not needed"))
        .await
        .unwrap_err();
    assert_eq!(drop.code(), Code::FailedPrecondition);
    assert!(
        drop.message().contains(&format!(
            "entry {} cannot be dropped: it was retried by alice at ",
            second.sequence
        )),
        "{}",
        drop.message()
    );
    let entry = listed(&mut bob, second.sequence).await;
    assert!(entry.retried && !entry.dropped);
}

#[tokio::test]
async fn a_drop_without_a_reason_is_refused() {
    use prx_ci_ops::parked::waiting;
    let h = Harness::start().await;
    let (_, _, stored) = park_a_completed_build(&h).await;
    let mut client = h.client().await;
    for reason in ["", " \n\t "] {
        let err = client
            .drop_parked(drop_request(stored.sequence, reason))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("needs a reason"),
            "{}",
            err.message()
        );
    }
    let err = client
        .drop_parked(drop_request(stored.sequence, &"x".repeat(1001)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 1000"), "{}", err.message());
    assert!(!listed(&mut client, stored.sequence).await.dropped);
    assert_eq!(waiting(&h.rt.js).await.unwrap(), 1, "still waiting");

    let missing = client
        .drop_parked(drop_request(999, "gone"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("no parked entry 999"),
        "{}",
        missing.message()
    );
}

#[tokio::test]
async fn of_a_concurrent_drop_and_retry_exactly_one_wins() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(park_a_completed_build(&h).await.2.sequence);
    }
    let events = h.rt.js.get_stream(EVENTS_STREAM).await.unwrap();
    let before = events.get_info().await.unwrap().state.last_sequence;
    let mut alice = h.client().await;
    let mut bob = h.client_with(BOB_TOKEN).await;
    let mut retries_won = 0;
    for &id in &ids {
        let (retry, drop) = tokio::join!(
            alice.retry_parked(v1::RetryParkedRequest {
                id,
                ..Default::default()
            }),
            bob.drop_parked(drop_request(id, "racing the retry")),
        );
        let entry = listed(&mut alice, id).await;
        match (retry, drop) {
            (Ok(_), Err(refused)) => {
                retries_won += 1;
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert!(
                    refused.message().contains("retried by alice"),
                    "{}",
                    refused.message()
                );
                assert!(entry.retried && !entry.dropped);
            }
            (Err(refused), Ok(_)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                assert!(
                    refused.message().contains("dropped by bob"),
                    "{}",
                    refused.message()
                );
                assert!(entry.dropped && !entry.retried);
            }
            (retry, drop) => panic!("entry {id}: retry {retry:?}, drop {drop:?}: not exactly one"),
        }
    }
    assert_eq!(
        events.get_info().await.unwrap().state.last_sequence - before,
        retries_won,
        "only the retries that won put a message back"
    );
}

/// The dashboard, signed in with `token`: an HTTP client that follows no redirects and the
/// session cookie it got.
async fn dashboard_session(base: &str, token: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{base}/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::SEE_OTHER);
    let cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (http, cookie)
}

#[tokio::test]
async fn a_parked_message_is_dropped_from_the_dashboard_with_a_reason() {
    let h = Harness::start().await;
    let (_, _, stored) = park_a_completed_build(&h).await;
    let id = stored.sequence;
    let base = h.dashboard.clone();
    let (http, cookie) = dashboard_session(&base, BOB_TOKEN).await;
    let page = http
        .get(format!("{base}/parked"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(&format!("action=\"/parked/{id}/drop\"")),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let drop = |csrf: String, reason: &'static str| {
        http.post(format!("{base}/parked/{id}/drop"))
            .header(reqwest::header::COOKIE, &cookie)
            .form(&[("csrf", csrf), ("reason", reason.to_owned())])
            .send()
    };

    let forged = drop("not-the-csrf-value".into(), "forged").await.unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::FORBIDDEN);
    let no_reason = drop(csrf.clone(), " ").await.unwrap();
    assert_eq!(no_reason.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(no_reason.text().await.unwrap().contains("needs a reason"));
    let mut client = h.client().await;
    assert!(
        !listed(&mut client, id).await.dropped,
        "refused drops record nothing"
    );

    let dropped = drop(csrf.clone(), "superseded by a newer build")
        .await
        .unwrap();
    assert_eq!(dropped.status(), reqwest::StatusCode::SEE_OTHER);
    let entry = listed(&mut client, id).await;
    assert_eq!(
        (
            entry.dropped,
            entry.dropped_by.as_str(),
            entry.drop_reason.as_str()
        ),
        (true, "bob", "superseded by a newer build"),
        "recorded as the signed-in operator"
    );
    let page = http
        .get(format!("{base}/parked"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("dropped by bob"), "{page}");
    assert!(
        !page.contains(&format!("/parked/{id}/retry")),
        "no retry offered"
    );

    let retry = http
        .post(format!("{base}/parked/{id}/retry"))
        .header(reqwest::header::COOKIE, &cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), reqwest::StatusCode::CONFLICT);
    assert!(
        retry
            .text()
            .await
            .unwrap()
            .contains("cannot be retried: it was dropped by bob")
    );
}

#[tokio::test]
async fn a_rebuild_stores_an_operator_push_of_the_branchs_latest_commit() {
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    h.publish(&push("d2", "PRX/app", "main", &sha('b'))).await;
    let mut client = h.client().await;
    let response = client
        .rebuild(v1::RebuildRequest {
            repository: "PRX/app".into(),
            revision: "main".into(),
            requested_by: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.commit, sha('b'));
    assert_eq!(response.branch, "main");
    assert!(response.delivery_id.starts_with("operator-"));
    let stream = h.rt.js.get_stream(WEBHOOKS_STREAM).await.unwrap();
    let raw = stream.get_raw_message(response.sequence).await.unwrap();
    assert_eq!(raw.subject.as_str(), "prx.webhook.push.PRX.app");
    let envelope = v1::Envelope::decode(raw.payload).unwrap();
    assert_eq!(envelope.event_id, response.delivery_id);
    assert_eq!(envelope.correlation_id, response.delivery_id);
    let Some(Payload::WebhookReceived(w)) = envelope.payload else {
        panic!("not a webhook")
    };
    assert_eq!(w.origin(), v1::Origin::Operator);
    assert_eq!(w.requested_by, "alice");
    let body: serde_json::Value = serde_json::from_slice(&w.payload).unwrap();
    assert_eq!(body["ref"], "refs/heads/main");
    assert_eq!(body["after"], sha('b'));
    assert_eq!(body["before"], sha('0'));
    assert_eq!(body["repository"]["full_name"], "PRX/app");
    assert_eq!(body["repository"]["default_branch"], "main");
    assert_eq!(body["head_commit"]["id"], sha('b'));

    // A commit rebuild of the older push (GitHub confirms it is in main's history).
    h.commit("PRX/app", &sha('a'), &[]);
    h.commit("PRX/app", &sha('b'), &[&sha('a')]);
    let older = client
        .rebuild(v1::RebuildRequest {
            repository: "PRX/app".into(),
            revision: sha('a')[..10].into(),
            requested_by: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (older.branch.as_str(), older.commit.as_str()),
        ("main", sha('a').as_str())
    );

    let history = client
        .history(v1::HistoryRequest {
            repository: "PRX/app".into(),
            filter: Some(history_request::Filter::Branch("main".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.events.len(), 4);

    let unknown = client
        .rebuild(v1::RebuildRequest {
            repository: "PRX/unknown".into(),
            revision: "main".into(),
            requested_by: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn a_rebuild_dry_run_makes_every_check_and_stores_nothing() {
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    h.publish(&push("d2", "PRX/app", "main", &sha('b'))).await;
    // b follows a; c branched off a.
    h.commit("PRX/app", &sha('a'), &[]);
    h.commit("PRX/app", &sha('b'), &[&sha('a')]);
    h.commit("PRX/app", &sha('c'), &[&sha('a')]);
    let mut client = h.client().await;
    let dry = |revision: &str| v1::RebuildRequest {
        dry_run: true,
        branch: "main".into(),
        ..rebuild_of("PRX/app", revision)
    };
    let older = client.rebuild(dry(&sha('a'))).await.unwrap().into_inner();
    assert_eq!(
        (older.commit.as_str(), older.head.as_str()),
        (sha('a').as_str(), sha('b').as_str())
    );
    assert_eq!(older.requested_by, OPERATOR);
    assert!(older.delivery_id.is_empty() && older.sequence == 0);
    let refused = client.rebuild(dry(&sha('c'))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        operator_pushes(&h).await.is_empty(),
        "a dry run stores nothing"
    );
    let stored = client
        .rebuild(rebuild_of("PRX/app", "main"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.head, sha('b'));
    assert_eq!(operator_pushes(&h).await.len(), 1);
}

/// The operator pushes stored on PRX_WEBHOOKS.
async fn operator_pushes(h: &Harness) -> Vec<v1::WebhookReceived> {
    let stream = h.rt.js.get_stream(WEBHOOKS_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let raw = stream.get_raw_message(seq).await.unwrap();
        let envelope = v1::Envelope::decode(raw.payload).unwrap();
        if let Some(Payload::WebhookReceived(w)) = envelope.payload
            && w.origin() == v1::Origin::Operator
        {
            out.push(w);
        }
    }
    out
}

fn rebuild_of(repository: &str, revision: &str) -> v1::RebuildRequest {
    v1::RebuildRequest {
        repository: repository.into(),
        revision: revision.into(),
        ..Default::default()
    }
}

/// A pull request from a fork whose head branch is named `head_ref`.
fn fork_pull_request(delivery: &str, repository: &str, head_ref: &str, sha: &str) -> v1::Envelope {
    let payload = serde_json::json!({
        "action": "synchronize",
        "number": 7,
        "repository": repo_json(repository),
        "pull_request": {
            "number": 7,
            "head": {"ref": head_ref, "sha": sha, "repo": {"full_name": "mallory/app"}},
            "base": {"ref": "main", "repo": {"full_name": repository}},
        },
    });
    webhook(delivery, "pull_request", repository, &payload)
}

#[tokio::test]
async fn a_branch_rebuild_never_takes_a_fork_pull_requests_head_branch() {
    let h = Harness::start().await;
    // PRX/app: main was pushed, then a fork's PR arrives from its own branch named `main`.
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    h.publish(&fork_pull_request("d2", "PRX/app", "main", &sha('f')))
        .await;
    // PRX/lib: only the fork's PR; GitHub never reported a push to main.
    h.publish(&fork_pull_request("d3", "PRX/lib", "main", &sha('f')))
        .await;
    // GitHub: the fork's commit is not in main's history (both follow a common root).
    h.commit("PRX/app", &sha('0'), &[]);
    h.commit("PRX/app", &sha('a'), &[&sha('0')]);
    h.commit("PRX/app", &sha('f'), &[&sha('0')]);
    let mut client = h.client().await;

    let rebuilt = client
        .rebuild(rebuild_of("PRX/app", "main"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rebuilt.branch.as_str(), rebuilt.commit.as_str()),
        ("main", sha('a').as_str()),
        "main's pushed head, not the fork's"
    );

    let unknown = client
        .rebuild(rebuild_of("PRX/lib", "main"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("pull request head"),
        "{}",
        unknown.message()
    );
    // The fork's commit by prefix: PR heads are not searched.
    let prefix = client
        .rebuild(rebuild_of("PRX/app", &sha('f')[..10]))
        .await
        .unwrap_err();
    assert_eq!(prefix.code(), Code::NotFound);
    // By full SHA: refused, it is not in main's history.
    let full = client
        .rebuild(rebuild_of("PRX/app", &sha('f')))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(
        full.message().contains("not in the history of"),
        "{}",
        full.message()
    );

    let stored = operator_pushes(&h).await;
    assert_eq!(stored.len(), 1, "only the rebuild of main's own head");
    let body: serde_json::Value = serde_json::from_slice(&stored[0].payload).unwrap();
    assert_eq!(body["after"], sha('a'));
}

#[tokio::test]
async fn a_commit_outside_the_branchs_history_is_refused_and_an_ancestor_is_rebuilt() {
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    h.publish(&push("d2", "PRX/app", "feature", &sha('c')))
        .await;
    h.publish(&push("d3", "PRX/app", "main", &sha('b'))).await;
    // main: a then b; the feature's c branched off a; d is newer than b; GitHub has no e.
    h.commit("PRX/app", &sha('a'), &[]);
    h.commit("PRX/app", &sha('b'), &[&sha('a')]);
    h.commit("PRX/app", &sha('c'), &[&sha('a')]);
    h.commit("PRX/app", &sha('d'), &[&sha('b')]);
    let mut client = h.client().await;

    // The feature branch's commit, rebuilt as a push to main: refused.
    let err = client
        .rebuild(v1::RebuildRequest {
            branch: "main".into(),
            ..rebuild_of("PRX/app", &sha('c'))
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!(
            "commit {} is not in the history of branch \"main\" of PRX/app (head {}); only \
             commits in the branch's history are rebuilt as pushes to it",
            sha('c'),
            sha('b')
        )
    );
    // A commit newer than main's head (main is behind it), and one GitHub does not know.
    let newer = client
        .rebuild(rebuild_of("PRX/app", &sha('d')))
        .await
        .unwrap_err();
    assert_eq!(newer.code(), Code::FailedPrecondition);
    let missing = client
        .rebuild(rebuild_of("PRX/app", &sha('e')))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(
        missing.message().contains("does not exist"),
        "{}",
        missing.message()
    );
    assert!(operator_pushes(&h).await.is_empty(), "nothing stored");

    // An ancestor of main's head, given by hand: rebuilt on main.
    let rebuilt = client
        .rebuild(rebuild_of("PRX/app", &sha('a')))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rebuilt.branch.as_str(), rebuilt.commit.as_str()),
        ("main", sha('a').as_str())
    );
    // The feature branch's commit on its own branch is its head: no question to ask GitHub.
    let own = client
        .rebuild(rebuild_of("PRX/app", &sha('c')[..7]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.branch, "feature");
    let mut compares = h.compares().await;
    compares.sort();
    assert_eq!(
        compares,
        [
            format!("/repos/PRX/app/compare/{}...{}", sha('a'), sha('b')),
            format!("/repos/PRX/app/compare/{}...{}", sha('c'), sha('b')),
            format!("/repos/PRX/app/compare/{}...{}", sha('d'), sha('b')),
            format!("/repos/PRX/app/compare/{}...{}", sha('e'), sha('b')),
        ]
    );
    assert_eq!(operator_pushes(&h).await.len(), 2);
}

#[tokio::test]
async fn a_rebuild_whose_ancestry_github_cannot_answer_is_not_stored() {
    use prx_ci_shared::testing::fault_proxy::{Fault, FaultRule, Match};
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('b'))).await;
    h.github_proxy.add(FaultRule::new(
        Match::any().method("GET"),
        Fault::server_error(502),
    ));
    let err = h
        .client()
        .await
        .rebuild(rebuild_of("PRX/app", &sha('a')))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("ancestry"), "{}", err.message());
    assert!(!h.compares().await.is_empty());
    assert!(operator_pushes(&h).await.is_empty());
}

#[tokio::test]
async fn the_audit_record_names_the_authenticated_operator_not_the_requested_name() {
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    let mut bob = h.client_with(BOB_TOKEN).await;
    let response = bob
        .rebuild(v1::RebuildRequest {
            requested_by: "alice".into(),
            reason: "redeploy after the SSM outage".into(),
            ..rebuild_of("PRX/app", "main")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.requested_by, "bob");

    let stored = operator_pushes(&h).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].requested_by, "bob");
    let body: serde_json::Value = serde_json::from_slice(&stored[0].payload).unwrap();
    assert_eq!(body["prx_ci_operator"]["requested_by"], "bob");
    assert_eq!(
        body["prx_ci_operator"]["reason"],
        "redeploy after the SSM outage"
    );
    assert_eq!(body["sender"]["login"], "bob");
    assert!(!body.to_string().contains("alice"), "{body}");
}

/// A push webhook of a local repository (`prx-ci up`: a `file://` clone URL).
fn local_push(delivery: &str, dir: &std::path::Path, branch: &str, after: &str) -> v1::Envelope {
    let mut envelope = push(delivery, "PRX/local-app", branch, after);
    let Some(Payload::WebhookReceived(w)) = &mut envelope.payload else {
        unreachable!()
    };
    let mut body: serde_json::Value = serde_json::from_slice(&w.payload).unwrap();
    body["repository"]["clone_url"] = format!("file://{}", dir.display()).into();
    w.payload = body.to_string().into_bytes().into();
    envelope
}

#[tokio::test]
async fn local_repositories_are_checked_with_git() {
    let h = Harness::start().await;
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    git(dir, &["init", "--quiet"]);
    git(dir, &["commit", "--quiet", "--allow-empty", "-m", "one"]);
    let first = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["commit", "--quiet", "--allow-empty", "-m", "two"]);
    let head = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "--quiet", "-b", "side", &first]);
    git(dir, &["commit", "--quiet", "--allow-empty", "-m", "side"]);
    let side = git(dir, &["rev-parse", "HEAD"]);
    h.publish(&local_push("d1", dir, "main", &head)).await;
    let mut client = h.client().await;

    let rebuilt = client
        .rebuild(rebuild_of("PRX/local-app", &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rebuilt.branch.as_str(), rebuilt.commit.as_str()),
        ("main", first.as_str())
    );
    let refused = client
        .rebuild(rebuild_of("PRX/local-app", &side))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("not in the history of"),
        "{}",
        refused.message()
    );
    let unknown = client
        .rebuild(rebuild_of("PRX/local-app", &sha('9')))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert!(
        unknown.message().contains("does not exist"),
        "{}",
        unknown.message()
    );
    assert!(h.compares().await.is_empty(), "GitHub is not asked");
}

/// Records the stream sequences it handled.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<u64>>,
}

impl Handler for Recorder {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.handled.lock().await.push(delivery.stream_sequence);
        Ok(())
    }
}

fn skipped(repository: &str, n: usize) -> v1::Envelope {
    Chain::starting(&format!("d{n}")).envelope(
        new_event_id(),
        Payload::BuildSkipped(v1::BuildSkipped {
            repository: repository.into(),
            detail: n.to_string(),
            ..Default::default()
        }),
    )
}

async fn consumer_names(h: &Harness, stream: &str) -> Vec<String> {
    use futures::StreamExt as _;
    let stream = h.rt.js.get_stream(stream).await.unwrap();
    let names: Vec<_> = stream.consumer_names().collect().await;
    names.into_iter().map(Result::unwrap).collect()
}

#[tokio::test]
async fn a_replay_redelivers_exactly_the_range_in_order_to_one_consumer() {
    let h = Harness::start().await;
    let mut sequences = Vec::new();
    for n in 0..10 {
        let repo = if n % 2 == 0 { "PRX/app" } else { "PRX/other" };
        sequences.push(h.publish(&skipped(repo, n)).await);
    }
    // Not consumed by the notifier at all (prx.runner.>).
    h.publish(&Chain::default().envelope(
        new_event_id(),
        Payload::BuildReportReceived(v1::BuildReportReceived {
            repository: "PRX/app".into(),
            ..Default::default()
        }),
    ))
    .await;
    let mut client = h.client().await;
    let request = |dry_run, subject: &str| v1::ReplayRequest {
        stream: EVENTS_STREAM.into(),
        from: Some(replay_request::From::FromSequence(sequences[2])),
        to: Some(replay_request::To::ToSequence(sequences[8])),
        subject: subject.into(),
        consumer: "notifier".into(),
        dry_run,
    };

    let dry = client
        .replay(request(true, "prx.build.skipped.PRX.app"))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<u64> = dry.events.iter().map(|e| e.sequence).collect();
    let expected = vec![sequences[2], sequences[4], sequences[6], sequences[8]];
    assert_eq!(listed, expected);
    assert_eq!(dry.count, 4);
    assert!(dry.replay_consumer.is_empty());
    let before = consumer_names(&h, EVENTS_STREAM).await;
    assert!(!before.iter().any(|n| n.contains("-replay-")), "{before:?}");

    let outside = client
        .replay(request(true, "prx.runner.report.>"))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::InvalidArgument);
    let no_consumer = client
        .replay(v1::ReplayRequest {
            consumer: "nobody".into(),
            ..request(true, "")
        })
        .await
        .unwrap_err();
    assert_eq!(no_consumer.code(), Code::NotFound);

    let handler = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let runner = ReplayRunner::new(
        h.rt.js.clone(),
        h.rt.publisher.clone(),
        h.rt.consumer_metrics.clone(),
        EVENTS_STREAM,
        "notifier",
        std::time::Duration::from_millis(50),
        vec![std::time::Duration::from_millis(50)],
    );
    let runner = tokio::spawn(runner.run(handler.clone(), stop.clone()));

    let created = client
        .replay(request(false, "prx.build.skipped.PRX.app"))
        .await
        .unwrap()
        .into_inner();
    assert!(created.replay_consumer.starts_with("notifier-replay-"));
    wait_until(WAIT, "the replay consumer to be done and removed", || {
        let h = &h;
        let name = created.replay_consumer.clone();
        async move { (!consumer_names(h, EVENTS_STREAM).await.contains(&name)).then_some(()) }
    })
    .await;
    // Something newer arrives after the range; the finished replay does not deliver it.
    h.publish(&skipped("PRX/app", 100)).await;
    assert_eq!(*handler.handled.lock().await, expected);
    stop.cancel();
    runner.await.unwrap();
    assert_eq!(*handler.handled.lock().await, expected);
}
