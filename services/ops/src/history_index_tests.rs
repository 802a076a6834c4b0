//! The index answers what the scanning query answered: `history::select` over the repository's
//! messages merged by store time.

use prx_ci_proto::v1::{self, envelope::Payload, ordering_key::Lane};

use super::*;
use crate::history::select;

const REPO: &str = "PRX.app";

/// A message as stored: stream, sequence, subject, store time, envelope.
type Stored = (Source, u64, String, i128, Envelope);

fn webhook(delivery: &str, event: &str, json: &str, repo: &str) -> Envelope {
    Envelope {
        event_id: delivery.into(),
        correlation_id: delivery.into(),
        payload: Some(Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: delivery.into(),
            event_name: event.into(),
            payload: json.as_bytes().to_vec().into(),
            repository: repo.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn derived(correlation: &str, lane: Option<Lane>, payload: Payload) -> Envelope {
    Envelope {
        event_id: format!("{correlation}-x"),
        correlation_id: correlation.into(),
        ordering_key: lane.map(|lane| v1::OrderingKey {
            repository: "PRX/app".into(),
            lane: Some(lane),
        }),
        payload: Some(payload),
        ..Default::default()
    }
}

fn requested(commit: &str) -> Payload {
    Payload::BuildRequested(v1::BuildRequested {
        build: Some(v1::BuildRef {
            commit: commit.into(),
            repository: "PRX/app".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Two streams' worth of one repository (and a little of another), with times that
/// interleave and tie.
fn story() -> Vec<Stored> {
    let main = Lane::Branch("main".into());
    let w = |seq: u64, at: i128, e: Envelope, subject: &str| -> Stored {
        (Source::Webhooks, seq, subject.to_owned(), at, e)
    };
    let ev = |seq: u64, at: i128, e: Envelope, subject: &str| -> Stored {
        (Source::Events, seq, subject.to_owned(), at, e)
    };
    vec![
        w(
            1,
            10,
            webhook(
                "d1",
                "push",
                r#"{"ref":"refs/heads/main","after":"AAAAAAA111"}"#,
                "PRX/app",
            ),
            "prx.webhook.push.PRX.app",
        ),
        w(
            2,
            20,
            webhook(
                "d2",
                "push",
                r#"{"ref":"refs/heads/feature/x","after":"bbbbbbb222"}"#,
                "PRX/app",
            ),
            "prx.webhook.push.PRX.app",
        ),
        w(
            3,
            30,
            webhook(
                "d3",
                "pull_request",
                r#"{"number":7,"pull_request":{"number":7,"head":{"sha":"ccccccc333"}}}"#,
                "PRX/app",
            ),
            "prx.webhook.pull_request.PRX.app",
        ),
        w(
            4,
            30,
            webhook(
                "o1",
                "push",
                r#"{"ref":"refs/heads/main","after":"ddddddd444"}"#,
                "PRX/other",
            ),
            "prx.webhook.push.PRX.other",
        ),
        w(
            5,
            50,
            webhook("d4", "push", "not json", "PRX/app"),
            "prx.webhook.push.PRX.app",
        ),
        ev(
            1,
            10,
            derived("d1", Some(main.clone()), requested("aaaaaaa111")),
            "prx.build.requested.PRX.app",
        ),
        // A skip carries no ordering key: it joins its push through the correlation id.
        ev(
            2,
            25,
            derived(
                "d2",
                None,
                Payload::BuildSkipped(v1::BuildSkipped {
                    commit: String::new(),
                    ..Default::default()
                }),
            ),
            "prx.build.skipped.PRX.app",
        ),
        ev(
            3,
            31,
            derived("d3", Some(Lane::PullRequest(7)), requested("ccccccc333")),
            "prx.build.requested.PRX.app",
        ),
        ev(
            4,
            40,
            derived(
                "d1",
                Some(main.clone()),
                Payload::PublishApplied(v1::PublishApplied::default()),
            ),
            "prx.publish.applied.PRX.app",
        ),
        // No correlation id: only its own facts count.
        ev(
            5,
            45,
            derived("", Some(main), requested("eeeeeee555")),
            "prx.build.requested.PRX.app",
        ),
        // Not a repository's subject.
        ev(
            6,
            46,
            derived(
                "d1",
                None,
                Payload::ParameterOwnerChanged(Default::default()),
            ),
            "prx.parameter.owner",
        ),
        // Undecodable (applied as an empty envelope): in the whole history only.
        ev(7, 47, Envelope::default(), "prx.build.started.PRX.app"),
    ]
}

/// What the scanning query answered: the repository's two streams (by subject), merged by
/// time, then `history::select`.
fn scanned(stored: &[Stored], repository: &str, filter: &HistoryFilter) -> Vec<(Source, u64)> {
    let of = |source: Source| -> Vec<EventRef> {
        let mut refs: Vec<_> = stored
            .iter()
            .filter(|(s, _, subject, _, _)| {
                *s == source && repository_of(source, subject) == Some(repository)
            })
            .map(|(s, seq, _, at, _)| EventRef {
                source: *s,
                sequence: *seq,
                stored_at: *at,
            })
            .collect();
        refs.sort_by_key(|r| r.sequence);
        refs
    };
    let merged = merge_by_time(of(Source::Webhooks), of(Source::Events));
    let envelopes: Vec<&Envelope> = merged
        .iter()
        .map(|r| {
            &stored
                .iter()
                .find(|(s, seq, ..)| *s == r.source && *seq == r.sequence)
                .unwrap()
                .4
        })
        .collect();
    select(filter, envelopes.iter().copied())
        .into_iter()
        .map(|i| (merged[i].source, merged[i].sequence))
        .collect()
}

fn indexed(index: &HistoryIndex, repository: &str, filter: &HistoryFilter) -> Vec<(Source, u64)> {
    index
        .select(repository, filter)
        .into_iter()
        .map(|r| (r.source, r.sequence))
        .collect()
}

fn filters() -> Vec<HistoryFilter> {
    vec![
        HistoryFilter::All,
        HistoryFilter::Branch("main".into()),
        HistoryFilter::Branch("feature/x".into()),
        HistoryFilter::Branch("nope".into()),
        HistoryFilter::PullRequest(7),
        HistoryFilter::Commit("aaaaaaa".into()),
        HistoryFilter::Commit("bbbbbbb222".into()),
        HistoryFilter::Commit("ccccccc".into()),
        HistoryFilter::Commit("eeeeeee".into()),
        HistoryFilter::Commit("fffffff".into()),
    ]
}

#[test]
fn the_index_answers_what_the_scan_answered_in_any_interleaving() {
    let stored = story();
    let (webhooks, events): (Vec<&Stored>, Vec<&Stored>) =
        stored.iter().partition(|m| m.0 == Source::Webhooks);
    // Webhooks first, events first, and alternating: the same index each time.
    let orders: Vec<Vec<&Stored>> = vec![
        webhooks.iter().chain(&events).copied().collect(),
        events.iter().chain(&webhooks).copied().collect(),
        {
            let mut v = Vec::new();
            for i in 0..webhooks.len().max(events.len()) {
                v.extend(events.get(i).copied());
                v.extend(webhooks.get(i).copied());
            }
            v
        },
    ];
    let mut indexes = Vec::new();
    for order in orders {
        let mut index = HistoryIndex::default();
        for (source, seq, subject, at, envelope) in order {
            index.apply(*source, *seq, subject, *at, envelope);
        }
        indexes.push(index);
    }
    for filter in filters() {
        for repository in [REPO, "PRX.other", "PRX.none"] {
            let expected = scanned(&stored, repository, &filter);
            for index in &indexes {
                assert_eq!(
                    indexed(index, repository, &filter),
                    expected,
                    "{repository} {filter:?}"
                );
            }
        }
    }
    assert_eq!(
        indexed(&indexes[0], REPO, &HistoryFilter::Branch("main".into())),
        [
            (Source::Webhooks, 1),
            (Source::Events, 1),
            (Source::Events, 4),
            (Source::Events, 5)
        ]
    );
    assert_eq!(
        indexed(
            &indexes[0],
            REPO,
            &HistoryFilter::Branch("feature/x".into())
        ),
        [(Source::Webhooks, 2), (Source::Events, 2)]
    );
    assert_eq!(
        indexes[0].len(),
        11,
        "every message of a repository's subject"
    );
}

#[test]
fn applied_sequences_change_nothing() {
    let mut index = HistoryIndex::default();
    let stored = story();
    for (source, seq, subject, at, envelope) in &stored {
        index.apply(*source, *seq, subject, *at, envelope);
    }
    let before = index.clone();
    let (source, seq, subject, at, envelope) = &stored[0];
    index.apply(*source, *seq, subject, *at, envelope);
    assert_eq!(index, before);
    assert_eq!(index.position(Source::Webhooks), 5);
    assert_eq!(index.position(Source::Events), 7);
}

#[test]
fn subjects_outside_a_repositorys_history_are_not_indexed() {
    assert_eq!(
        repository_of(Source::Webhooks, "prx.webhook.push.PRX.app"),
        Some("PRX.app")
    );
    assert_eq!(
        repository_of(Source::Webhooks, "prx.build.requested.PRX.app"),
        None
    );
    assert_eq!(
        repository_of(Source::Events, "prx.build.requested.PRX.app"),
        Some("PRX.app")
    );
    assert_eq!(repository_of(Source::Events, "prx.parameter.owner"), None);
    assert_eq!(repository_of(Source::Events, "prx.a.b.c.d.e"), None);
    assert_eq!(repository_of(Source::Events, "nats.a.b.c.d"), None);
}

#[test]
fn forgetting_expired_messages_keeps_the_answers_about_the_rest() {
    let stored = story();
    let mut full = HistoryIndex::default();
    for (source, seq, subject, at, envelope) in &stored {
        full.apply(*source, *seq, subject, *at, envelope);
    }
    // Every cut of both streams: the pruned index answers what the full one answered, less
    // what expired (which the query never lists anyway).
    for webhooks_first in 1..=6 {
        for events_first in 1..=8 {
            let mut pruned = full.clone();
            let dropped = pruned.forget_before(Source::Webhooks, webhooks_first)
                + pruned.forget_before(Source::Events, events_first);
            let held = |(source, seq): &(Source, u64)| match source {
                Source::Webhooks => *seq >= webhooks_first,
                Source::Events => *seq >= events_first,
            };
            for filter in filters() {
                for repository in [REPO, "PRX.other"] {
                    let expected: Vec<_> = indexed(&full, repository, &filter)
                        .into_iter()
                        .filter(held)
                        .collect();
                    assert_eq!(
                        indexed(&pruned, repository, &filter),
                        expected,
                        "{repository} {filter:?} webhooks from {webhooks_first}, events from {events_first}"
                    );
                }
            }
            let kept = indexed(&full, REPO, &HistoryFilter::All)
                .into_iter()
                .chain(indexed(&full, "PRX.other", &HistoryFilter::All))
                .filter(held)
                .count() as u64;
            assert_eq!(pruned.len(), kept);
            assert_eq!(full.len() - pruned.len(), dropped);
        }
    }
}

#[test]
fn a_group_keeps_its_branch_after_the_message_that_named_it_expired() {
    let mut index = HistoryIndex::default();
    for (source, seq, subject, at, envelope) in &story() {
        index.apply(*source, *seq, subject, *at, envelope);
    }
    // Webhook 2 (the push to feature/x) expired; its skip decision (events 2) names no branch
    // of its own and is still the branch's history.
    assert_eq!(index.forget_before(Source::Webhooks, 3), 2);
    assert_eq!(
        indexed(&index, REPO, &HistoryFilter::Branch("feature/x".into())),
        [(Source::Events, 2)]
    );
    // Nothing more to forget below the same cut, and a repository left empty is gone.
    assert_eq!(index.forget_before(Source::Webhooks, 3), 0);
    assert_eq!(index.forget_before(Source::Webhooks, 5), 2);
    assert!(indexed(&index, "PRX.other", &HistoryFilter::All).is_empty());
    assert!(!index.repositories.contains_key("PRX.other"));
}
