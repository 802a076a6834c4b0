//! Placing a push in GitHub's push order, the pure part (see
//! [`prx_ci_shared::domain::push_position`] for what a position is made of).
//!
//! GitHub's time of the push orders pushes of different seconds. Within one second the
//! `before`/`after` chain does: a push whose `before` is another push's `after` came after it.
//! The record of an ordering key remembers the last [`KEEP`] pushes placed on it, so a push can
//! be linked to one placed earlier, whichever of the two was delivered first. The same push
//! delivered again under another delivery id (same time, `before` and `after`) gets the very
//! position the first delivery got: it is the same push.
//!
//! Residual (documented in `docs/ordering.md`): three or more pushes of one ordering key within
//! one second, delivered out of order, can be placed in a wrong order among themselves (a
//! position, once given, is never renumbered); pushes GitHub timed in different seconds are
//! always ordered by their seconds, even if GitHub's hosts' clocks disagree.

use prx_ci_shared::domain::push_position::PushPosition;
use serde::{Deserialize, Serialize};

/// How many placed pushes a record keeps (only pushes of the same second are ever linked).
pub const KEEP: usize = 64;

/// What GitHub says about one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFacts {
    /// GitHub's time of the push, seconds since the epoch.
    pub pushed_at: i64,
    /// The head before the push ("" when unknown: an opened pull request, a new branch).
    pub before: String,
    /// The head after the push.
    pub after: String,
}

/// A push placed on an ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedPush {
    pub dispatch_id: String,
    pub pushed_at: i64,
    pub before: String,
    pub after: String,
    /// The position given (the envelope's `push_sequence`).
    pub position: u64,
}

/// The record of one ordering key, oldest placement first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub pushes: Vec<PlacedPush>,
}

/// The position of the push `facts` delivered under `dispatch_id` (arrival: its webhook's
/// stream sequence), and the record with it placed.
pub fn place(
    record: &OrderRecord,
    dispatch_id: &str,
    facts: &PushFacts,
    arrival: u64,
) -> (PushPosition, OrderRecord) {
    let same_push = record.pushes.iter().find(|p| {
        p.dispatch_id == dispatch_id
            || (p.pushed_at == facts.pushed_at
                && p.before == facts.before
                && p.after == facts.after)
    });
    if let Some(position) = same_push.and_then(|p| PushPosition::from_wire(p.position)) {
        return (position, record.clone());
    }
    let same_second = || {
        record
            .pushes
            .iter()
            .filter(|p| p.pushed_at == facts.pushed_at)
            .filter_map(|p| Some((p, chain_of(PushPosition::from_wire(p.position)?))))
    };
    let chain = if let Some((_, next)) =
        same_second().find(|(p, _)| !facts.after.is_empty() && p.before == facts.after)
    {
        next.saturating_sub(1)
    } else if let Some((_, previous)) =
        same_second().find(|(p, _)| !facts.before.is_empty() && p.after == facts.before)
    {
        previous.saturating_add(1)
    } else {
        PushPosition::CHAIN_MIDDLE
    };
    let position = PushPosition::new(facts.pushed_at, chain, arrival);
    let mut next = record.clone();
    next.pushes.push(PlacedPush {
        dispatch_id: dispatch_id.to_owned(),
        pushed_at: facts.pushed_at,
        before: facts.before.clone(),
        after: facts.after.clone(),
        position: position.wire(),
    });
    if next.pushes.len() > KEEP {
        let excess = next.pushes.len() - KEEP;
        next.pushes.drain(..excess);
    }
    (position, next)
}

fn chain_of(position: PushPosition) -> u8 {
    u8::try_from(position.chain_offset() + i16::from(PushPosition::CHAIN_MIDDLE)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pushed_at: i64, before: &str, after: &str) -> PushFacts {
        PushFacts {
            pushed_at,
            before: before.into(),
            after: after.into(),
        }
    }

    /// Places `pushes` (id, facts, arrival) in the given delivery order.
    fn deliver(pushes: &[(&str, PushFacts, u64)]) -> Vec<(String, PushPosition)> {
        let mut record = OrderRecord::default();
        pushes
            .iter()
            .map(|(id, f, arrival)| {
                let (position, next) = place(&record, id, f, *arrival);
                record = next;
                ((*id).to_owned(), position)
            })
            .collect()
    }

    fn position_of(placed: &[(String, PushPosition)], id: &str) -> PushPosition {
        placed.iter().find(|(i, _)| i == id).unwrap().1
    }

    #[test]
    fn github_time_wins_over_arrival() {
        let placed = deliver(&[
            ("newer", facts(200, "b", "c"), 1),
            ("older", facts(100, "a", "b"), 2),
        ]);
        assert!(position_of(&placed, "newer") > position_of(&placed, "older"));
    }

    #[test]
    fn within_one_second_the_chain_orders_whichever_arrives_first() {
        for order in [["first", "second"], ["second", "first"]] {
            let all = [
                ("first", facts(100, "a", "b")),
                ("second", facts(100, "b", "c")),
            ];
            let pushes: Vec<_> = order
                .iter()
                .enumerate()
                .map(|(arrival, id)| {
                    let f = all.iter().find(|(i, _)| i == id).unwrap().1.clone();
                    (*id, f, arrival as u64)
                })
                .collect();
            let placed = deliver(&pushes);
            assert!(
                position_of(&placed, "second") > position_of(&placed, "first"),
                "delivered {order:?}"
            );
        }
    }

    #[test]
    fn unlinked_pushes_of_one_second_fall_back_to_arrival() {
        let placed = deliver(
            &[("x", facts(100, "a", "b")), ("y", facts(100, "p", "q"))]
                .map(|(id, f)| (id, f, if id == "x" { 7 } else { 9 })),
        );
        assert!(position_of(&placed, "y") > position_of(&placed, "x"));
    }

    #[test]
    fn the_same_push_again_gets_the_same_position() {
        let mut record = OrderRecord::default();
        let (first, next) = place(&record, "d1", &facts(100, "a", "b"), 5);
        record = next;
        let (newer, next) = place(&record, "d2", &facts(200, "b", "c"), 6);
        record = next;
        // Redelivered under its original id, and recovered under a new one, much later.
        let (again, unchanged) = place(&record, "d1", &facts(100, "a", "b"), 900);
        assert_eq!(again, first);
        assert_eq!(unchanged, record);
        let (recovered, _) = place(&record, "d3", &facts(100, "a", "b"), 901);
        assert_eq!(recovered, first);
        assert!(recovered < newer);
    }

    #[test]
    fn a_force_push_back_to_an_older_commit_is_a_newer_push() {
        let placed = deliver(&[
            ("forward", facts(100, "a", "b"), 1),
            ("back", facts(160, "b", "a"), 2),
        ]);
        assert!(position_of(&placed, "back") > position_of(&placed, "forward"));
    }

    #[test]
    fn the_record_stays_bounded() {
        let mut record = OrderRecord::default();
        for i in 0..(KEEP as i64 + 10) {
            record = place(&record, &format!("d{i}"), &facts(i, "", &i.to_string()), 1).1;
        }
        assert_eq!(record.pushes.len(), KEEP);
        assert_eq!(record.pushes[0].dispatch_id, "d10");
    }
}
