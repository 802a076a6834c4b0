//! The `ShadowReport` call: the shadow period's events of PRX_EVENTS folded into the comparison
//! of this system's decisions with the original's (see [`crate::shadow_report`]).

use prx_ci_proto::v1;
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, EventKind};

use super::{OpsApi, repository, time_of};
use crate::error::OpsError;
use crate::event_log::{self, End, Start};
use crate::shadow_report::ShadowFold;

/// The kinds the report reads (every other kind is left on the server by the filter).
const KINDS: [EventKind; 5] = [
    EventKind::BuildRequested,
    EventKind::BuildSkipped,
    EventKind::BuildStarted,
    EventKind::BuildCompleted,
    EventKind::PublishApplied,
];

impl OpsApi {
    /// The shadow report of one repository (or all) since a time (or ever).
    pub async fn shadow_report(
        &self,
        request: v1::ShadowReportRequest,
    ) -> Result<v1::ShadowReportResponse, OpsError> {
        let filters: Vec<String> = if request.repository.is_empty() {
            KINDS.iter().map(|k| k.filter()).collect()
        } else {
            let repo = repository(&request.repository)?.to_string();
            KINDS
                .iter()
                .map(|k| subject::repository_filter(*k, &repo))
                .collect()
        };
        let start = match &request.since {
            Some(since) => Start::Time(time_of(since)?),
            None => Start::First,
        };
        let mut fold = ShadowFold::default();
        let mut undecodable = 0u64;
        event_log::scan(
            &self.rt.js,
            EVENTS_STREAM,
            &filters,
            start,
            End::Now,
            |message| match message.envelope() {
                Some(envelope) => fold.apply(&envelope),
                None => undecodable += 1,
            },
        )
        .await?;
        if undecodable > 0 {
            tracing::warn!(
                undecodable,
                "shadow report: events that do not decode were left out"
            );
        }
        Ok(fold.report())
    }
}
