//! The `History` call: one page of a repository's events, found in the history index, cut to
//! the page ([`crate::history_page`]) and read back from PRX_WEBHOOKS and PRX_EVENTS by
//! sequence (its cost grows with the page, not the history or the log).

use std::ops::RangeInclusive;
use std::time::Duration;

use prx_ci_proto::v1;
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, WEBHOOKS_STREAM};

use super::{OpsApi, repository};
use crate::dashboard_projection::Source;
use crate::error::OpsError;
use crate::event_log;
use crate::history::HistoryFilter;
use crate::history_page::{self, Before, Held, page_size};

/// How long a query waits for the index to hold what was stored when it began (it lags only
/// while catching up after a start).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

impl OpsApi {
    /// A page of the events of a repository (optionally one branch, PR or commit), in order:
    /// the newest `limit` (older than the request's cursor) of everything stored before the
    /// call, as the index holds it once it has caught up with that.
    pub async fn history(
        &self,
        request: v1::HistoryRequest,
    ) -> Result<v1::HistoryResponse, OpsError> {
        let repo = repository(&request.repository)?;
        let filter = HistoryFilter::from_proto(request.filter.as_ref())
            .map_err(|e| OpsError::InvalidArgument(e.0))?;
        // A cursor this server made never has a bound of 0 (a stream's bound is at least 1):
        // one that does is not ours, and would silently answer an empty page.
        if let Some(cursor) = &request.before
            && (cursor.webhooks_before == 0 || cursor.events_before == 0)
        {
            return Err(OpsError::InvalidArgument(
                "invalid history cursor: pass back the `next` of a previous answer".into(),
            ));
        }
        let (owner, name) = subject::repository_tokens(&repo.to_string());
        let (webhooks, events) = tokio::try_join!(
            event_log::open(&self.rt.js, WEBHOOKS_STREAM),
            event_log::open(&self.rt.js, EVENTS_STREAM)
        )?;
        let held = Held {
            events: stream_range(&events.cached_info().state),
            webhooks: stream_range(&webhooks.cached_info().state),
        };
        let (events_end, webhooks_end) = (*held.events.end(), *held.webhooks.end());
        // The whole log up to the streams' ends, even for an older page: an event stored
        // after the page's part can still bring its group into the selection.
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
        let limit = page_size(
            request.limit,
            self.config.history_page,
            self.config.max_listed_events,
        );
        let page = history_page::page(
            selected,
            &held,
            request.before.as_ref().map(Before::from_proto),
            limit,
        );
        let selected = &page.events;
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
        Ok(v1::HistoryResponse {
            events: out,
            next: page.next.map(Before::to_proto),
            older: page.older,
            total: page.total,
        })
    }
}

/// What a stream holds now (`first..=last`). An empty stream (every message expired) holds
/// nothing, and its `last_sequence` is no message the projection could reach.
fn stream_range(state: &async_nats::jetstream::stream::State) -> RangeInclusive<u64> {
    Held::range(state.messages, state.first_sequence, state.last_sequence)
}
