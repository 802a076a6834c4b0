//! The ops API's projection (pure: no I/O): the builds projection and the history index,
//! folded together from every message of `PRX_EVENTS` and `PRX_WEBHOOKS`, one message at a
//! time, so the `Builds` and `History` calls never read the log per request.

use prost::Message as _;
use prx_ci_proto::v1::Envelope;

use crate::builds_projection::BuildsProjection;
use crate::dashboard_projection::Source;
use crate::event_log::StoredMessage;
use crate::history_index::HistoryIndex;

/// What the ops API answers from (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct OpsProjection {
    /// Builds in flight and recent ones (`PRX_EVENTS`' build events).
    pub builds: BuildsProjection,
    /// Where each repository's, branch's, pull request's and commit's events are stored.
    pub history: HistoryIndex,
}

impl OpsProjection {
    /// Empty; keeps at most `keep_finished` finished builds.
    pub fn new(keep_finished: usize) -> Self {
        Self {
            builds: BuildsProjection::new(keep_finished),
            history: HistoryIndex::default(),
        }
    }

    /// The last sequence applied from `source` (0 = none).
    pub fn position(&self, source: Source) -> u64 {
        self.history.position(source)
    }

    /// Folds `message` of `source` (an undecodable one counts in its repository's history
    /// only). Sequences at or below the source's position change nothing.
    pub fn apply(&mut self, source: Source, message: &StoredMessage) {
        let envelope = Envelope::decode(message.payload.clone()).unwrap_or_default();
        if source == Source::Events {
            self.builds.apply(message.sequence, &envelope);
        }
        self.history.apply(
            source,
            message.sequence,
            &message.subject,
            message.stored_at.unix_timestamp_nanos(),
            &envelope,
        );
    }
}
