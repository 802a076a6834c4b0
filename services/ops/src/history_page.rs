//! Which of a history's events one `History` call returns (pure: no I/O): the newest `limit`
//! of the selection, or of its part older than a cursor, so a call reads only its page's
//! messages from the streams and its cost grows with the page, not with the branch.
//!
//! **The cursor.** A history is two streams merged by store time ([`HistoryIndex::select`]),
//! and the merge keeps each stream's own order. So the events before a point of the merged list
//! are exactly, per stream, the ones below a sequence: the page's oldest sequence of that
//! stream, or, for a stream the page holds none of, the bound the page itself was cut under.
//! [`Before`] is that pair of exclusive bounds. It needs no event to still exist (an expired
//! one does not break it) and stays exact when events are stored between two pages: they have
//! higher sequences, so they never slip into the older pages. A caller that pages backwards
//! sees the history as stored when its first call began; a fresh call sees the newer events.
//!
//! What a cursor cannot freeze is membership: a group (one delivery's events) joins a branch
//! when one of its events names it, so an event stored later can bring its group's older
//! events into a branch's history. Those show on the pages older than the cursor when they
//! fall there, and not on the pages already returned.
//!
//! [`HistoryIndex::select`]: crate::history_index::HistoryIndex::select

use std::ops::RangeInclusive;

use prx_ci_proto::v1;

use crate::dashboard_projection::Source;
use crate::history_index::EventRef;

/// "Older than here": per stream, the first sequence not wanted (an exclusive upper bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    pub webhooks: u64,
    pub events: u64,
}

impl Before {
    pub fn from_proto(cursor: &v1::HistoryCursor) -> Self {
        Self {
            webhooks: cursor.webhooks_before,
            events: cursor.events_before,
        }
    }

    pub fn to_proto(self) -> v1::HistoryCursor {
        v1::HistoryCursor {
            webhooks_before: self.webhooks,
            events_before: self.events,
        }
    }

    fn of(&self, source: Source) -> u64 {
        match source {
            Source::Webhooks => self.webhooks,
            Source::Events => self.events,
        }
    }

    fn admits(&self, event: &EventRef) -> bool {
        event.sequence < self.of(event.source)
    }

    /// The tighter bound of the two, per stream.
    fn min(self, other: Self) -> Self {
        Self {
            webhooks: self.webhooks.min(other.webhooks),
            events: self.events.min(other.events),
        }
    }
}

/// What each stream held when the call began (`first..=last`; an empty stream holds an empty
/// range). Later messages are not part of the call's answer, and expired ones must not take
/// the places of older events still stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub webhooks: RangeInclusive<u64>,
    pub events: RangeInclusive<u64>,
}

impl Held {
    /// A stream's range from its state: `first..=last`, or empty when it holds no message
    /// (every message expired: its `last_sequence` is no message the index could reach).
    pub fn range(messages: u64, first: u64, last: u64) -> RangeInclusive<u64> {
        if messages == 0 {
            // Empty, and its bound (`end + 1`) is 1: no sequence is below it.
            RangeInclusive::new(1, 0)
        } else {
            first..=last
        }
    }

    fn holds(&self, event: &EventRef) -> bool {
        match event.source {
            Source::Webhooks => self.webhooks.contains(&event.sequence),
            Source::Events => self.events.contains(&event.sequence),
        }
    }

    /// Everything held is older than this.
    fn bound(&self) -> Before {
        Before {
            webhooks: self.webhooks.end().saturating_add(1),
            events: self.events.end().saturating_add(1),
        }
    }
}

/// The events one call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// In the selection's order (oldest first).
    pub events: Vec<EventRef>,
    /// Where the next older page begins; `None` when nothing older is left.
    pub next: Option<Before>,
    /// Events older than the page (what following `next` returns, as stored now).
    pub older: u64,
    /// Events of the whole selection held (every page together).
    pub total: u64,
}

/// The page of `selected` (a history as [`HistoryIndex::select`] orders it) that a call with
/// `limit` and cursor `before` returns, of what `held` holds.
///
/// [`HistoryIndex::select`]: crate::history_index::HistoryIndex::select
pub fn page(selected: Vec<EventRef>, held: &Held, before: Option<Before>, limit: usize) -> Page {
    let mut held_events: Vec<EventRef> = selected.into_iter().filter(|e| held.holds(e)).collect();
    let total = held_events.len() as u64;
    let bound = before.map_or(held.bound(), |b| b.min(held.bound()));
    held_events.retain(|e| bound.admits(e));
    let start = held_events.len().saturating_sub(limit);
    let events = held_events.split_off(start);
    let next = (start > 0).then(|| {
        let oldest = |source: Source| {
            events
                .iter()
                .find(|e| e.source == source)
                .map_or(bound.of(source), |e| e.sequence)
        };
        Before {
            webhooks: oldest(Source::Webhooks),
            events: oldest(Source::Events),
        }
    });
    Page {
        events,
        next,
        older: start as u64,
        total,
    }
}

/// How many events a call returns: `requested`, or `default` for 0; never more than `max`.
pub fn page_size(requested: u32, default: usize, max: usize) -> usize {
    match usize::try_from(requested) {
        Ok(0) => default.min(max),
        Ok(n) => n.min(max),
        // A `u32` that does not fit a `usize` is more than any `max`.
        Err(_) => max,
    }
}

#[cfg(test)]
#[path = "history_page_tests.rs"]
mod tests;
