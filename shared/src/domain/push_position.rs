//! A push's place in GitHub's push order: what the envelope's `push_sequence` carries.
//!
//! Webhook deliveries arrive in any order (GitHub does not promise one; a redelivery or a
//! recovered delivery arrives late by construction), so the order in which ingress stored them
//! says nothing about the order of the pushes. GitHub's own data does: `repository.pushed_at`
//! of a push event (`pull_request.updated_at` of a pull-request event) in seconds, and within
//! one second the `before`/`after` chain (a push whose `before` is another's `after` came
//! after it). Arrival breaks what is left: exact ties GitHub's data cannot order.
//!
//! One `u64` holds the three, so that comparing two positions compares the pushes and every
//! place that kept the old stream sequence (fence records, lane records, build records) orders
//! by GitHub's order unchanged:
//!
//! | bits  | what |
//! |-------|------|
//! | 63-32 | GitHub's time of the push, seconds since the Unix epoch (to 2106) |
//! | 31-24 | place within that second by the `before`/`after` chain, [`PushPosition::CHAIN_MIDDLE`] when unlinked |
//! | 23-0  | arrival: the webhook's stream sequence modulo 2^24 (ties only) |
//!
//! Events written before positions existed carry the bare stream sequence (below 2^32): they
//! read as [`PushPosition::is_legacy`] and order before every packed position.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A push's position in GitHub's order (see the module docs for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PushPosition(u64);

const ARRIVAL_BITS: u32 = 24;
const CHAIN_BITS: u32 = 8;
const ARRIVAL_MASK: u64 = (1 << ARRIVAL_BITS) - 1;

impl PushPosition {
    /// The chain place of a push linked to no other push of its second.
    pub const CHAIN_MIDDLE: u8 = 128;

    /// A position from GitHub's time of the push (seconds; clamped to the representable
    /// range, which ends in 2106), its place in the chain of that second, and its arrival.
    pub fn new(pushed_at: i64, chain: u8, arrival: u64) -> Self {
        let seconds = u64::try_from(pushed_at.clamp(1, i64::from(u32::MAX))).unwrap_or(1);
        Self(
            (seconds << (CHAIN_BITS + ARRIVAL_BITS))
                | (u64::from(chain) << ARRIVAL_BITS)
                | (arrival & ARRIVAL_MASK),
        )
    }

    /// The position an envelope's `push_sequence` carries (`None` for 0: no push).
    pub fn from_wire(value: u64) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// The value for the envelope's `push_sequence`.
    pub fn wire(self) -> u64 {
        self.0
    }

    /// A bare stream sequence written before positions existed.
    pub fn is_legacy(self) -> bool {
        self.0 >> (CHAIN_BITS + ARRIVAL_BITS) == 0
    }

    /// GitHub's time of the push, in seconds (`None` for a legacy sequence).
    pub fn pushed_at(self) -> Option<i64> {
        (!self.is_legacy())
            .then(|| i64::try_from(self.0 >> (CHAIN_BITS + ARRIVAL_BITS)).unwrap_or(0))
    }

    /// The place within the second, relative to an unlinked push (negative: before it).
    pub fn chain_offset(self) -> i16 {
        if self.is_legacy() {
            return 0;
        }
        let chain = (self.0 >> ARRIVAL_BITS) & ((1 << CHAIN_BITS) - 1);
        i16::try_from(chain).unwrap_or(0) - i16::from(Self::CHAIN_MIDDLE)
    }

    /// The arrival tie-breaker (the whole sequence for a legacy value).
    pub fn arrival(self) -> u64 {
        if self.is_legacy() {
            self.0
        } else {
            self.0 & ARRIVAL_MASK
        }
    }
}

/// How a `push_sequence` reads for people: the position, or `-` for none.
pub fn display_wire(value: u64) -> String {
    PushPosition::from_wire(value).map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// `2026-11-30T11:35:49Z` (`+1`/`-1` for a place in that second's chain) `#17` (arrival);
/// a legacy value is `#<sequence>`.
impl fmt::Display for PushPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(seconds) = self.pushed_at() else {
            return write!(f, "#{}", self.0);
        };
        match OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
        {
            Some(time) => f.write_str(&time)?,
            None => write!(f, "{seconds}s")?,
        }
        match self.chain_offset() {
            0 => {}
            n => write!(f, "{n:+}")?,
        }
        write!(f, "#{}", self.arrival())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_by_time_then_chain_then_arrival() {
        let t = 1_764_502_549;
        let base = PushPosition::new(t, PushPosition::CHAIN_MIDDLE, 500);
        assert!(PushPosition::new(t + 1, 0, 0) > base, "a later second wins");
        assert!(
            PushPosition::new(t, PushPosition::CHAIN_MIDDLE + 1, 1) > base,
            "later in the chain wins over arrival"
        );
        assert!(PushPosition::new(t, PushPosition::CHAIN_MIDDLE, 501) > base);
        assert!(PushPosition::new(t, PushPosition::CHAIN_MIDDLE - 1, 9_999) < base);
    }

    #[test]
    fn legacy_sequences_order_before_positions() {
        let legacy = PushPosition::from_wire(4_000_000_000).unwrap();
        assert!(legacy.is_legacy());
        assert_eq!(legacy.arrival(), 4_000_000_000);
        assert_eq!(legacy.pushed_at(), None);
        assert!(legacy < PushPosition::new(1, 0, 0));
        assert_eq!(PushPosition::from_wire(0), None);
        assert_eq!(legacy.to_string(), "#4000000000");
    }

    #[test]
    fn displays_time_chain_and_arrival() {
        let p = PushPosition::new(1_764_502_549, PushPosition::CHAIN_MIDDLE, 17);
        assert_eq!(p.to_string(), "2025-11-30T11:35:49Z#17");
        let q = PushPosition::new(1_764_502_549, PushPosition::CHAIN_MIDDLE + 2, 3);
        assert_eq!(q.to_string(), "2025-11-30T11:35:49Z+2#3");
    }

    proptest! {
        #[test]
        fn parts_round_trip_and_order_is_lexicographic(
            t1 in 1i64..4_000_000_000, c1: u8, a1 in 0u64..(1 << 24),
            t2 in 1i64..4_000_000_000, c2: u8, a2 in 0u64..(1 << 24),
        ) {
            let p1 = PushPosition::new(t1, c1, a1);
            let p2 = PushPosition::new(t2, c2, a2);
            prop_assert_eq!(p1.pushed_at(), Some(t1));
            prop_assert_eq!(p1.arrival(), a1);
            prop_assert_eq!(p1.chain_offset(), i16::from(c1) - 128);
            prop_assert_eq!(PushPosition::from_wire(p1.wire()), Some(p1));
            prop_assert_eq!(p1.cmp(&p2), (t1, c1, a1).cmp(&(t2, c2, a2)));
        }
    }
}
