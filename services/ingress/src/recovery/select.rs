//! Which of the hook's listed deliveries to recover, and where the cursor may move. No I/O.
//!
//! GitHub lists every delivery *attempt* (a redelivery is another entry with the same `guid`),
//! newest first, with ids that only grow. A GUID is recovered when none of its listed attempts
//! succeeded (2xx) and its newest failed attempt is newer than the cursor (the newest delivery
//! id of an earlier round that left nothing behind). Whether it is already in the event log is
//! decided when storing: the `Nats-Msg-Id` is the GUID, so JetStream answers "duplicate".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::webhook::PING_EVENT;

/// An entry of `GET .../hook/deliveries`, as far as the reconciler reads it. Untrusted text:
/// the GUID and event name are checked before use (see [`Delivery::is_well_formed`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
    #[serde(default)]
    pub redelivery: bool,
    /// The receiver's HTTP status; 0 when it could not be reached.
    #[serde(default)]
    pub status_code: u16,
    #[serde(default)]
    pub event: String,
}

/// Longest GUID accepted (it becomes the `Nats-Msg-Id`; GitHub's are 36 characters).
const MAX_GUID_LEN: usize = 128;
/// Longest event name accepted (it becomes a subject token).
const MAX_EVENT_LEN: usize = 64;

impl Delivery {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// A GUID and event name the ingress would accept as headers.
    pub fn is_well_formed(&self) -> bool {
        let token = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        token(&self.guid, MAX_GUID_LEN) && token(&self.event, MAX_EVENT_LEN)
    }
}

/// A GUID to recover, through its newest failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The attempt to fetch (or redeliver).
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub delivered_at: OffsetDateTime,
}

/// What one round found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// To recover, oldest first.
    pub recover: Vec<Candidate>,
    /// Failed, never succeeded, and older than `max_age`: reported, not recovered.
    pub too_old: Vec<Candidate>,
    /// Listed entries that are not well-formed (skipped, reported).
    pub malformed: usize,
    /// The newest delivery id listed (the cursor once everything selected is handled).
    pub newest: Option<u64>,
}

/// Whether paging should stop after a page whose oldest entry is `oldest_listed`: it reached
/// the cursor. (Paging also stops when there is no next page, or at `max_pages`.)
pub fn reached_cursor(oldest_listed: Option<u64>, cursor: Option<u64>) -> bool {
    matches!((oldest_listed, cursor), (Some(oldest), Some(cursor)) if oldest <= cursor)
}

/// Chooses what to recover among `listed` (the entries of every page read this round),
/// given the `cursor` and the event types the ingress stores.
pub fn select(
    listed: &[Delivery],
    cursor: Option<u64>,
    now: OffsetDateTime,
    max_age: Duration,
    allowed_events: &HashSet<String>,
) -> Selection {
    let cutoff = now - max_age;
    let newer = |d: &&Delivery| cursor.is_none_or(|c| d.id > c);
    let mut selection = Selection {
        newest: listed.iter().map(|d| d.id).max(),
        ..Selection::default()
    };
    // Any successful attempt listed (also one older than the cursor) settles a GUID.
    let succeeded: HashSet<&str> = listed
        .iter()
        .filter(|d| d.succeeded())
        .map(|d| d.guid.as_str())
        .collect();
    // The newest failed attempt of each GUID not settled, newer than the cursor.
    let mut failed: HashMap<&str, &Delivery> = HashMap::new();
    for delivery in listed.iter().filter(newer) {
        if delivery.succeeded() || succeeded.contains(delivery.guid.as_str()) {
            continue;
        }
        if !delivery.is_well_formed() {
            selection.malformed += 1;
            continue;
        }
        if delivery.event == PING_EVENT || !allowed_events.contains(&delivery.event) {
            continue;
        }
        failed
            .entry(delivery.guid.as_str())
            .and_modify(|kept| {
                if delivery.id > kept.id {
                    *kept = delivery;
                }
            })
            .or_insert(delivery);
    }
    // Oldest first (by the first attempt's delivery time, then id).
    let mut ordered: BTreeMap<(OffsetDateTime, u64), Candidate> = BTreeMap::new();
    for (guid, newest_attempt) in failed {
        let first = listed
            .iter()
            .filter(|d| d.guid == guid)
            .map(|d| d.delivered_at)
            .min()
            .unwrap_or(newest_attempt.delivered_at);
        let candidate = Candidate {
            id: newest_attempt.id,
            guid: guid.to_owned(),
            event: newest_attempt.event.clone(),
            delivered_at: first,
        };
        ordered.insert((first, newest_attempt.id), candidate);
    }
    for candidate in ordered.into_values() {
        if candidate.delivered_at < cutoff {
            selection.too_old.push(candidate);
        } else {
            selection.recover.push(candidate);
        }
    }
    selection
}

/// The cursor after a round: the newest listed id when every selected delivery was handled,
/// else just below the oldest that failed (so the next round sees it again); never behind
/// `cursor`. A round that did not reach the cursor (`complete` false) keeps it.
pub fn next_cursor(
    cursor: Option<u64>,
    selection: &Selection,
    failed_ids: &[u64],
    complete: bool,
) -> Option<u64> {
    if !complete {
        return cursor;
    }
    let proposed = match failed_ids.iter().min() {
        Some(oldest_failed) => oldest_failed.checked_sub(1),
        None => selection.newest,
    };
    match (cursor, proposed) {
        (Some(c), Some(p)) => Some(c.max(p)),
        (c, p) => c.or(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-12-01 08:00 UTC);

    fn delivery(id: u64, guid: &str, status_code: u16, minutes_ago: i64) -> Delivery {
        Delivery {
            id,
            guid: guid.to_owned(),
            delivered_at: NOW - time::Duration::minutes(minutes_ago),
            redelivery: false,
            status_code,
            event: "push".to_owned(),
        }
    }

    fn allowed() -> HashSet<String> {
        ["push".to_owned(), "pull_request".to_owned()].into()
    }

    fn guids(candidates: &[Candidate]) -> Vec<&str> {
        candidates.iter().map(|c| c.guid.as_str()).collect()
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn failed_deliveries_without_a_success_are_recovered_oldest_first() {
        // Newest first, as GitHub lists them.
        let listed = [
            delivery(15, "e", 202, 1),
            delivery(14, "d", 503, 2),
            delivery(13, "c", 0, 3),
            delivery(12, "b", 202, 4),
            delivery(11, "a", 0, 5),
        ];
        let selection = select(&listed, None, NOW, DAY, &allowed());
        assert_eq!(guids(&selection.recover), ["a", "c", "d"]);
        assert_eq!(selection.newest, Some(15));
        assert!(selection.too_old.is_empty());
    }

    #[test]
    fn a_successful_redelivery_settles_the_guid() {
        let mut redelivered = delivery(20, "a", 202, 1);
        redelivered.redelivery = true;
        let listed = [
            redelivered,
            delivery(19, "b", 0, 2),
            delivery(18, "b", 0, 3),
            delivery(11, "a", 0, 5),
        ];
        let selection = select(&listed, None, NOW, DAY, &allowed());
        // "b" once, through its newest attempt, dated by its first.
        assert_eq!(selection.recover.len(), 1);
        assert_eq!(selection.recover[0].guid, "b");
        assert_eq!(selection.recover[0].id, 19);
        assert_eq!(
            selection.recover[0].delivered_at,
            NOW - time::Duration::minutes(3)
        );
    }

    #[test]
    fn the_cursor_bounds_what_is_looked_at() {
        let listed = [
            delivery(13, "c", 0, 1),
            delivery(12, "b", 0, 2),
            delivery(11, "a", 0, 3),
        ];
        let selection = select(&listed, Some(12), NOW, DAY, &allowed());
        assert_eq!(guids(&selection.recover), ["c"]);
        assert!(reached_cursor(Some(11), Some(12)));
        assert!(!reached_cursor(Some(13), Some(12)));
        assert!(!reached_cursor(Some(13), None));
        assert!(!reached_cursor(None, Some(12)));
    }

    #[test]
    fn old_failures_are_reported_not_recovered() {
        let listed = [delivery(12, "new", 0, 10), delivery(11, "old", 0, 25 * 60)];
        let selection = select(&listed, None, NOW, DAY, &allowed());
        assert_eq!(guids(&selection.recover), ["new"]);
        assert_eq!(guids(&selection.too_old), ["old"]);
    }

    #[test]
    fn pings_other_events_and_malformed_entries_are_skipped() {
        let mut ping = delivery(14, "p", 0, 1);
        ping.event = "ping".into();
        let mut issues = delivery(13, "i", 0, 1);
        issues.event = "issues".into();
        let malformed = delivery(12, "a guid with spaces", 0, 1);
        let mut no_event = delivery(11, "x", 0, 1);
        no_event.event = String::new();
        let selection = select(
            &[ping, issues, malformed, no_event],
            None,
            NOW,
            DAY,
            &allowed(),
        );
        assert!(selection.recover.is_empty());
        assert_eq!(selection.malformed, 2);
    }

    #[test]
    fn the_cursor_moves_only_past_what_was_handled() {
        let listed = [
            delivery(15, "e", 0, 1),
            delivery(14, "d", 0, 2),
            delivery(13, "c", 0, 3),
        ];
        let selection = select(&listed, Some(10), NOW, DAY, &allowed());
        assert_eq!(next_cursor(Some(10), &selection, &[], true), Some(15));
        assert_eq!(next_cursor(Some(10), &selection, &[14, 15], true), Some(13));
        // Never backwards, and an incomplete scan keeps it.
        assert_eq!(next_cursor(Some(14), &selection, &[13], true), Some(14));
        assert_eq!(next_cursor(Some(10), &selection, &[], false), Some(10));
        assert_eq!(next_cursor(None, &selection, &[], false), None);
        assert_eq!(next_cursor(None, &Selection::default(), &[], true), None);
    }

    #[test]
    fn github_entries_decode() {
        let entry: Delivery = serde_json::from_str(
            r#"{"id":12345678,"guid":"0b989ba4-242f-11e5-81e1-c7b6966d2516","delivered_at":"2019-06-03T00:57:16Z","redelivery":false,"duration":0.27,"status":"failed to connect","status_code":0,"event":"push","action":null,"installation_id":123,"repository_id":456,"throttled_at":null}"#,
        )
        .unwrap();
        assert_eq!(entry.id, 12_345_678);
        assert!(!entry.succeeded());
        assert!(entry.is_well_formed());
    }
}
