//! The `History` call: a repository's events read back from PRX_WEBHOOKS and PRX_EVENTS.

use prx_ci_proto::v1;
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, EventKind, WEBHOOKS_STREAM};

use super::{OpsApi, repository};
use crate::error::OpsError;
use crate::event_log::{self, End, Start};
use crate::history::{self, HistoryFilter};

impl OpsApi {
    /// The events of a repository (optionally one branch, PR or commit), in order.
    pub async fn history(
        &self,
        request: v1::HistoryRequest,
    ) -> Result<v1::HistoryResponse, OpsError> {
        let repo = repository(&request.repository)?;
        let filter = HistoryFilter::from_proto(request.filter.as_ref())
            .map_err(|e| OpsError::InvalidArgument(e.0))?;
        let full_name = repo.to_string();
        let (owner, name) = subject::repository_tokens(&full_name);
        let webhooks = [subject::repository_filter(
            EventKind::WebhookReceived,
            &full_name,
        )];
        let events = [format!("prx.*.*.{owner}.{name}")];
        let (webhooks, events) = tokio::try_join!(
            event_log::read_range(
                &self.rt.js,
                WEBHOOKS_STREAM,
                &webhooks,
                Start::First,
                End::Now,
                usize::MAX
            ),
            event_log::read_range(
                &self.rt.js,
                EVENTS_STREAM,
                &events,
                Start::First,
                End::Now,
                usize::MAX
            ),
        )?;
        let merged = event_log::merge_by_time(vec![webhooks.0, events.0]);
        let envelopes: Vec<v1::Envelope> = merged
            .iter()
            .map(|m| m.envelope().unwrap_or_default())
            .collect();
        let selected = history::select(&filter, &envelopes);
        let skip = selected.len().saturating_sub(self.config.max_listed_events);
        let mut envelopes: Vec<Option<v1::Envelope>> = envelopes.into_iter().map(Some).collect();
        let events = selected
            .into_iter()
            .skip(skip)
            .map(|i| merged[i].to_proto(envelopes[i].take()))
            .collect();
        Ok(v1::HistoryResponse { events })
    }
}
