//! Paging a history backwards gives every event once, in order, whatever the page size, the
//! streams' interleaving, later events or expired ones.

use super::*;
use crate::history_index::merge_by_time;

fn at(source: Source, sequence: u64, stored_at: i128) -> EventRef {
    EventRef {
        source,
        sequence,
        stored_at,
    }
}

/// A history as the index orders it: webhooks and events (each `(sequence, store time)`, in
/// stream order) merged by store time.
fn history(webhooks: &[(u64, i128)], events: &[(u64, i128)]) -> Vec<EventRef> {
    merge_by_time(
        webhooks
            .iter()
            .map(|&(s, t)| at(Source::Webhooks, s, t))
            .collect(),
        events
            .iter()
            .map(|&(s, t)| at(Source::Events, s, t))
            .collect(),
    )
}

/// Both streams held up to these last sequences, from 1.
fn held(webhooks: u64, events: u64) -> Held {
    Held {
        webhooks: 1..=webhooks,
        events: 1..=events,
    }
}

fn positions(events: &[EventRef]) -> Vec<(Source, u64)> {
    events.iter().map(|e| (e.source, e.sequence)).collect()
}

/// Follows the cursors from the newest page (each page asked of `selection()` as it is then,
/// with what `held()` says the streams hold then) until none is left; the pages' events
/// oldest first.
fn follow(
    mut selection: impl FnMut(usize) -> (Vec<EventRef>, Held),
    limit: usize,
) -> Vec<EventRef> {
    let mut pages = Vec::new();
    let mut before = None;
    for call in 0.. {
        let (selected, held) = selection(call);
        let page = page(selected, &held, before, limit);
        assert!(page.events.len() <= limit);
        assert_eq!(page.next.is_some(), page.older > 0, "{page:?}");
        let next = page.next;
        pages.push(page.events);
        match next {
            Some(next) => {
                if let Some(previous) = before {
                    assert_ne!(next, previous, "the cursor moves");
                }
                before = Some(next);
            }
            None => break,
        }
    }
    pages.into_iter().rev().flatten().collect()
}

/// Webhooks at 1, 3, 5, ... ms, events at 2, 3, 4, ... ms: interleaved, with ties (webhooks
/// first) and runs of one stream (three events alone at the end). In order: W1 E1 W2 E2 E3 W3
/// E4 E5 W4 E6 E7 W5 W6 E8 E9 E10.
fn interleaved() -> Vec<EventRef> {
    let webhooks: Vec<(u64, i128)> = (1..=6).map(|s| (s, 2 * i128::from(s) - 1)).collect();
    let mut events: Vec<(u64, i128)> = (1..=7).map(|s| (s, i128::from(s) + 1)).collect();
    // Past the last webhook: a run of events alone.
    events.extend((8..=10).map(|s| (s, 20 + i128::from(s))));
    history(&webhooks, &events)
}

#[test]
fn every_page_size_gives_every_event_once_in_order() {
    let whole = interleaved();
    for limit in 1..=whole.len() + 2 {
        let paged = follow(|_| (whole.clone(), held(6, 10)), limit);
        assert_eq!(positions(&paged), positions(&whole), "limit {limit}");
    }
}

#[test]
fn the_newest_page_counts_what_is_older_and_the_whole() {
    let whole = interleaved();
    let first = page(whole.clone(), &held(6, 10), None, 3);
    assert_eq!(positions(&first.events), positions(&whole[13..]));
    assert_eq!((first.older, first.total), (13, 16));
    // The page holds events 8-10 only: webhooks stay bounded where the page was cut (every
    // webhook held is older).
    assert_eq!(
        first.next,
        Some(Before {
            webhooks: 7,
            events: 8
        })
    );
    // E6 E7 W5 W6.
    let second = page(whole.clone(), &held(6, 10), first.next, 4);
    assert_eq!(positions(&second.events), positions(&whole[9..13]));
    assert_eq!((second.older, second.total), (9, 16));
    assert_eq!(
        second.next,
        Some(Before {
            webhooks: 5,
            events: 6
        })
    );
}

#[test]
fn a_limit_above_the_history_returns_it_whole_without_a_cursor() {
    let whole = interleaved();
    for limit in [whole.len(), whole.len() + 1, usize::MAX] {
        let page = page(whole.clone(), &held(6, 10), None, limit);
        assert_eq!(positions(&page.events), positions(&whole));
        assert_eq!((page.next, page.older, page.total), (None, 0, 16));
    }
    let empty = page(Vec::new(), &held(6, 10), None, 5);
    assert_eq!((empty.events.len(), empty.next, empty.total), (0, None, 0));
}

#[test]
fn events_stored_between_pages_never_reach_the_older_pages() {
    let first = interleaved();
    // After the first call: more of both streams, one webhook stored with an earlier time
    // than events already held (another server's clock), which the merge puts before events
    // the first page returned.
    let mut webhooks: Vec<(u64, i128)> = (1..=6).map(|s| (s, 2 * i128::from(s) - 1)).collect();
    webhooks.extend([(7, 4), (8, 40)]);
    let mut events: Vec<(u64, i128)> = (1..=7).map(|s| (s, i128::from(s) + 1)).collect();
    events.extend((8..=10).map(|s| (s, 20 + i128::from(s))));
    events.extend([(11, 41), (12, 42)]);
    let later = history(&webhooks, &events);
    for limit in 1..=first.len() {
        let paged = follow(
            |call| {
                if call == 0 {
                    (first.clone(), held(6, 10))
                } else {
                    (later.clone(), held(8, 12))
                }
            },
            limit,
        );
        assert_eq!(positions(&paged), positions(&first), "limit {limit}");
    }
    // A fresh call sees them.
    let fresh = page(later.clone(), &held(8, 12), None, 100);
    assert_eq!(fresh.total, 20);
    assert_eq!(positions(&fresh.events), positions(&later));
}

#[test]
fn expired_events_leave_the_cursor_exact_for_the_rest() {
    let whole = interleaved();
    let first = page(whole.clone(), &held(6, 10), None, 6);
    // Before the next call the streams dropped their oldest messages, the page's too.
    let now = Held {
        webhooks: 3..=6,
        events: 9..=10,
    };
    let second = page(whole.clone(), &now, first.next, 100);
    let expected: Vec<(Source, u64)> = positions(&whole[..whole.len() - 6])
        .into_iter()
        .filter(|(source, s)| match source {
            Source::Webhooks => *s >= 3,
            Source::Events => *s >= 9,
        })
        .collect();
    assert_eq!(positions(&second.events), expected);
    assert_eq!(second.next, None);
}

#[test]
fn only_what_the_streams_held_when_the_call_began_is_returned() {
    let whole = interleaved();
    // Webhooks 1-2 expired; events 9-10 were stored after the call read the streams' state.
    let now = Held {
        webhooks: 3..=6,
        events: 1..=8,
    };
    let page = page(whole.clone(), &now, None, 100);
    let expected: Vec<(Source, u64)> = positions(&whole)
        .into_iter()
        .filter(|(source, s)| match source {
            Source::Webhooks => *s >= 3,
            Source::Events => *s <= 8,
        })
        .collect();
    assert_eq!(positions(&page.events), expected);
    assert_eq!(page.total, expected.len() as u64);
    // A stream whose every message expired holds nothing, whatever its last sequence was.
    let empty = Held {
        webhooks: Held::range(0, 7, 6),
        events: Held::range(10, 1, 10),
    };
    let events_only = super::page(whole, &empty, None, 100);
    assert!(
        events_only
            .events
            .iter()
            .all(|e| e.source == Source::Events)
    );
    assert_eq!(events_only.total, 10);
}

#[test]
fn a_page_holds_the_requested_size_the_default_for_zero_and_never_more_than_the_cap() {
    assert_eq!(page_size(0, 200, 10_000), 200);
    assert_eq!(page_size(50, 200, 10_000), 50);
    assert_eq!(page_size(50_000, 200, 10_000), 10_000);
    assert_eq!(page_size(u32::MAX, 200, 10_000), 10_000);
    // A default above the cap (refused by the config's validation) is still capped.
    assert_eq!(page_size(0, 200, 100), 100);
}
