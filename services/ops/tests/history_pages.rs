//! `History` a page at a time, against a real nats-server through the real gRPC client: the
//! newest page by default, a cursor to page backwards that stays exact while events are
//! stored, the page size capped by `max_listed_events`, and the client's whole-history walk.

mod common;

use std::num::NonZeroUsize;

use common::*;
use prx_ci_ops::OpsConfig;
use prx_ci_ops::client::{self, Client};
use prx_ci_proto::v1::{self, envelope::Payload, history_request};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};

/// Where a stored event is: (stream, sequence).
type Position = (String, u64);

fn positions(events: &[v1::StoredEvent]) -> Vec<Position> {
    events
        .iter()
        .map(|e| (e.stream.clone(), e.sequence))
        .collect()
}

/// Stores `envelope`; returns where.
async fn store(h: &Harness, envelope: &v1::Envelope) -> Position {
    let stream = match envelope.payload {
        Some(Payload::WebhookReceived(_)) => WEBHOOKS_STREAM,
        _ => EVENTS_STREAM,
    };
    (stream.to_owned(), h.publish(envelope).await)
}

/// Stores `pushes` pushes to `PRX/app` main (webhook, build requested, started, completed),
/// each followed by a push to a feature branch of the same repository (not in main's
/// history); returns main's history as stored, in order (one event at a time: the store
/// times follow the order), and main's webhooks.
async fn store_main(
    h: &Harness,
    first: usize,
    pushes: usize,
) -> (Vec<Position>, Vec<v1::Envelope>) {
    let mut main = Vec::new();
    let mut webhooks = Vec::new();
    for i in first..first + pushes {
        let commit = format!("{i:040x}");
        let webhook = push(&format!("main-{i}"), "PRX/app", "main", &commit);
        let sequence = store(h, &webhook).await;
        main.push(sequence.clone());
        for event in build_story(
            &webhook,
            sequence.1,
            "main",
            Some(v1::BuildStatus::Succeeded),
        ) {
            main.push(store(h, &event).await);
        }
        webhooks.push(webhook);
        let feature = push(
            &format!("feature-{i}"),
            "PRX/app",
            "feature/x",
            &format!("f{i:039x}"),
        );
        store(h, &feature).await;
    }
    (main, webhooks)
}

fn main_history(limit: u32, before: Option<v1::HistoryCursor>) -> v1::HistoryRequest {
    v1::HistoryRequest {
        repository: "PRX/app".into(),
        filter: Some(history_request::Filter::Branch("main".into())),
        limit,
        before,
    }
}

/// Pages through main's history backwards with `limit`, checking each answer's counts;
/// returns the pages' events oldest first.
async fn follow(client: &mut Client, limit: u32, total: usize) -> Vec<Position> {
    let mut pages = Vec::new();
    let mut before = None;
    let mut seen = 0;
    loop {
        let page = client
            .history(main_history(limit, before))
            .await
            .unwrap()
            .into_inner();
        seen += page.events.len();
        assert!(page.events.len() <= limit as usize);
        assert_eq!(page.total as usize, total, "the whole selection, each time");
        assert_eq!(page.older as usize, total - seen, "limit {limit}");
        assert_eq!(page.next.is_some(), page.older > 0);
        pages.push(positions(&page.events));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    pages.into_iter().rev().flatten().collect()
}

#[tokio::test]
async fn paging_through_a_history_gives_every_event_once_in_order() {
    let h = Harness::start().await;
    let (main, _) = store_main(&h, 0, 6).await;
    let mut client = h.client().await;
    for limit in [1, 3, 4, 7, 23] {
        assert_eq!(
            follow(&mut client, limit, main.len()).await,
            main,
            "limit {limit}"
        );
    }
}

#[tokio::test]
async fn a_limit_at_or_above_the_history_returns_it_whole_without_a_cursor() {
    let h = Harness::start().await;
    let (main, _) = store_main(&h, 0, 3).await;
    let mut client = h.client().await;
    for limit in [main.len() as u32, main.len() as u32 + 1, u32::MAX] {
        let page = client
            .history(main_history(limit, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(positions(&page.events), main, "limit {limit}");
        assert_eq!(
            (page.next, page.older, page.total),
            (None, 0, main.len() as u64)
        );
    }
}

#[tokio::test]
async fn the_cursor_stays_exact_when_events_are_stored_between_pages() {
    let h = Harness::start().await;
    let (before_first, webhooks) = store_main(&h, 0, 4).await;
    let mut client = h.client().await;
    let first = client
        .history(main_history(5, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        positions(&first.events),
        before_first[before_first.len() - 5..]
    );

    // Between the pages: more pushes to main, and a late event of the first push (its
    // delivery's group, so part of main's history, after everything the first call saw).
    let (newer, _) = store_main(&h, 4, 2).await;
    let late = Chain::caused_by(&webhooks[0]).envelope(
        new_event_id(),
        Payload::NotificationDelivered(v1::NotificationDelivered {
            channel: v1::NotificationChannel::Slack as i32,
            // The subject names the build's repository.
            build: Some(build_ref("PRX/app", &format!("{:040x}", 0), "late")),
            action: "posted".into(),
            ..Default::default()
        }),
    );
    let late = store(&h, &late).await;

    let mut pages = vec![positions(&first.events)];
    let mut before = first.next;
    while let Some(cursor) = before {
        let page = client
            .history(main_history(5, Some(cursor)))
            .await
            .unwrap()
            .into_inner();
        pages.push(positions(&page.events));
        before = page.next;
    }
    let paged: Vec<Position> = pages.into_iter().rev().flatten().collect();
    assert_eq!(paged, before_first, "the history as the first call saw it");

    // A new first page sees what came since.
    let fresh = client
        .history(main_history(1000, None))
        .await
        .unwrap()
        .into_inner();
    let mut now = before_first.clone();
    now.extend(newer);
    now.push(late);
    assert_eq!(positions(&fresh.events), now);
}

#[tokio::test]
async fn a_limit_is_capped_by_max_listed_events() {
    let h = Harness::start_with(OpsConfig {
        max_listed_events: 5,
        history_page: 3,
        ..OpsConfig::default()
    })
    .await;
    let (main, _) = store_main(&h, 0, 3).await;
    let mut client = h.client().await;
    let page = client
        .history(main_history(100, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(positions(&page.events), main[main.len() - 5..]);
    assert_eq!(
        (page.older, page.total),
        (main.len() as u64 - 5, main.len() as u64)
    );
    assert!(page.next.is_some());
}

#[tokio::test]
async fn without_a_limit_a_call_returns_the_default_page_the_newest() {
    let h = Harness::start_with(OpsConfig {
        history_page: 3,
        ..OpsConfig::default()
    })
    .await;
    let (main, _) = store_main(&h, 0, 2).await;
    let mut client = h.client().await;
    let page = client
        .history(main_history(0, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(positions(&page.events), main[main.len() - 3..]);
    assert_eq!(
        (page.older, page.total),
        (main.len() as u64 - 3, main.len() as u64)
    );
    let older = client
        .history(main_history(0, page.next))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        positions(&older.events),
        main[main.len() - 6..main.len() - 3]
    );
}

#[tokio::test]
async fn the_clients_page_walk_reads_the_whole_history_or_the_newest_n() {
    let h = Harness::start_with(OpsConfig {
        max_listed_events: 5,
        history_page: 3,
        ..OpsConfig::default()
    })
    .await;
    let (main, _) = store_main(&h, 0, 4).await;
    let mut client = h.client().await;
    let whole = client::history_pages(&mut client, main_history(0, None), None)
        .await
        .unwrap();
    assert_eq!(positions(&whole.events), main, "pages of 5, every one");
    assert_eq!(whole.older, 0);
    let newest = client::history_pages(&mut client, main_history(0, None), NonZeroUsize::new(7))
        .await
        .unwrap();
    assert_eq!(positions(&newest.events), main[main.len() - 7..]);
    assert_eq!(newest.older, main.len() as u64 - 7);
}

#[tokio::test]
async fn a_cursor_with_a_bound_of_zero_is_refused_not_answered_empty() {
    let h = Harness::start().await;
    store_main(&h, 0, 1).await;
    let mut client = h.client().await;
    for cursor in [
        v1::HistoryCursor::default(),
        v1::HistoryCursor {
            webhooks_before: 5,
            events_before: 0,
        },
    ] {
        let status = client
            .history(main_history(10, Some(cursor)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("cursor"), "{status:?}");
    }
}
