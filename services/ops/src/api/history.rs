//! The `History` call: a repository's events, found in the history index and read back from
//! PRX_WEBHOOKS and PRX_EVENTS by sequence (its cost grows with the answer, not the log).

use std::time::Duration;

use prx_ci_proto::v1;
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, WEBHOOKS_STREAM};

use super::{OpsApi, repository};
use crate::dashboard_projection::Source;
use crate::error::OpsError;
use crate::event_log;
use crate::history::HistoryFilter;

/// How long a query waits for the index to hold what was stored when it began (it lags only
/// while catching up after a start).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

impl OpsApi {
    /// The events of a repository (optionally one branch, PR or commit), in order: everything
    /// stored before the call, as the index holds it once it has caught up with that.
    pub async fn history(
        &self,
        request: v1::HistoryRequest,
    ) -> Result<v1::HistoryResponse, OpsError> {
        let repo = repository(&request.repository)?;
        let filter = HistoryFilter::from_proto(request.filter.as_ref())
            .map_err(|e| OpsError::InvalidArgument(e.0))?;
        let (owner, name) = subject::repository_tokens(&repo.to_string());
        let (webhooks, events) = tokio::try_join!(
            event_log::open(&self.rt.js, WEBHOOKS_STREAM),
            event_log::open(&self.rt.js, EVENTS_STREAM)
        )?;
        // What the stream holds now: `first..=end`. An empty stream (every message expired)
        // holds nothing, and its `last_sequence` is no message the projection could reach.
        let held = |state: &async_nats::jetstream::stream::State| {
            if state.messages == 0 {
                (u64::MAX, 0)
            } else {
                (state.first_sequence, state.last_sequence)
            }
        };
        let (events_first, events_end) = held(&events.cached_info().state);
        let (webhooks_first, webhooks_end) = held(&webhooks.cached_info().state);
        if !self
            .projection
            .caught_up(events_end, webhooks_end, CATCH_UP_WAIT)
            .await
        {
            let (e, w) = self.projection.positions();
            return Err(OpsError::Unavailable(anyhow::anyhow!(
                "the history index is still catching up with the log \
                 ({EVENTS_STREAM} {e} of {events_end}, {WEBHOOKS_STREAM} {w} of {webhooks_end}); try again"
            )));
        }
        let selected = self
            .projection
            .read()
            .await
            .history
            .select(&format!("{owner}.{name}"), &filter);
        // Only what the streams held when the call began: later messages are not part of it,
        // and expired ones must not take the places of older events still stored.
        let selected: Vec<_> = selected
            .into_iter()
            .filter(|r| match r.source {
                Source::Events => (events_first..=events_end).contains(&r.sequence),
                Source::Webhooks => (webhooks_first..=webhooks_end).contains(&r.sequence),
            })
            .collect();
        let skip = selected.len().saturating_sub(self.config.max_listed_events);
        let selected = &selected[skip..];
        let of = |source: Source| -> Vec<u64> {
            selected
                .iter()
                .filter(|r| r.source == source)
                .map(|r| r.sequence)
                .collect()
        };
        let (mut from_webhooks, mut from_events) = tokio::try_join!(
            event_log::get_each(&webhooks, of(Source::Webhooks)),
            event_log::get_each(&events, of(Source::Events)),
        )?;
        // Back into the index's order (each list is in it already).
        from_webhooks.reverse();
        from_events.reverse();
        let mut out = Vec::with_capacity(selected.len());
        for r in selected {
            let list = match r.source {
                Source::Webhooks => &mut from_webhooks,
                Source::Events => &mut from_events,
            };
            if list.last().is_some_and(|m| m.sequence == r.sequence) {
                let message = list.pop().expect("checked");
                // An undecodable message is listed with an empty envelope, as ever.
                let envelope = message.envelope().unwrap_or_default();
                out.push(message.to_proto(Some(envelope)));
            }
        }
        Ok(v1::HistoryResponse { events: out })
    }
}
