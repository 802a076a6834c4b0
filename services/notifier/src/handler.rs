//! The consumer handler: folds each build event into its build's record, then queues the
//! message and the status (or check run) the record still lacks; and, at start, requeues every dirty record.

use std::sync::Arc;

use prx_ci_proto::v1;
use prx_ci_shared::{Delivery, Handler, HandlerError};
use time::OffsetDateTime;

use crate::metrics::bump;
use crate::service::Core;
use prx_ci_shared::notice::view::{self, Relevance};

/// Handles the `notifier` consumer's events.
pub(crate) struct EventHandler {
    core: Arc<Core>,
}

impl EventHandler {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

impl Handler for EventHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.core.handle_event(&delivery.envelope).await
    }
}

impl Core {
    /// Folds one event into its build's record and queues what it changed.
    async fn handle_event(self: &Arc<Self>, envelope: &v1::Envelope) -> Result<(), HandlerError> {
        let Some(payload) = envelope.payload.as_ref() else {
            return Ok(());
        };
        if let v1::envelope::Payload::BuildRequested(request) = payload
            && request.shadow
        {
            // A shadow request's pseudo build runs nothing: the original's build, adopted into
            // the request's chain, is what gets a message and a status.
            return Ok(());
        }
        if !self.config.mode.is_shadow()
            && prx_ci_shared::bus::envelope::build_of(payload).is_some_and(|b| b.shadowed)
        {
            // A live notifier beside a shadow dispatcher (repositories cut over one at a time,
            // docs/migrating.md): the original's build of a repository not cut over is the
            // original's to announce; this system says nothing about it.
            return Ok(());
        }
        let key = match view::relevance(payload).map_err(HandlerError::permanent)? {
            Relevance::Ignore => return Ok(()),
            Relevance::Build(key) => key,
        };
        // Old history (a replay, a long outage): remember it, announce nothing.
        let quiet = prx_ci_shared::bus::envelope::from_timestamp(envelope.time.as_ref())
            .is_some_and(|at| OffsetDateTime::now_utc() - at > self.config.quiet_after);
        let statuses = &self.config.statuses;
        let (applied, record) = self
            .store
            .modify(&key, |record| record.apply_event(envelope, quiet, statuses))
            .await
            .map_err(|err| {
                if err.is_transient() {
                    HandlerError::transient(err)
                } else {
                    HandlerError::permanent(err)
                }
            })?;
        let applied = applied.map_err(HandlerError::permanent)?;
        if applied {
            bump(&self.stats.events_applied);
        }
        tracing::debug!(build = %key, applied, version = record.view.version, "event folded");
        // A redelivery of an applied event queues only what is still undelivered (a crash
        // between ack and delivery); a delivered build stays quiet.
        if record.chat_dirty() {
            self.enqueue_chat(&self.channel_for(&record), &key);
        }
        self.enqueue_status(&key, &record);
        self.enqueue_check_run(&key, &record);
        Ok(())
    }

    /// Queues every record whose message, status or check run lags behind its view (after a restart).
    pub(crate) async fn requeue_dirty(self: Arc<Self>) {
        let keys = match self.store.build_keys().await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot scan for undelivered notifications"
                );
                return;
            }
        };
        let mut queued = 0usize;
        for key in keys {
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Ok(Some((record, _))) = self.store.load(&key).await {
                if record.chat_dirty() {
                    self.enqueue_chat(&self.channel_for(&record), &key);
                    queued += 1;
                }
                self.enqueue_status(&key, &record);
                // A build reported by a commit status before check runs were on (token mode,
                // or `[notifier.checks] enabled = false`) gets no run on restart.
                if !record.reported_by_status() {
                    self.enqueue_check_run(&key, &record);
                }
            }
        }
        if queued > 0 {
            tracing::info!(queued, "requeued undelivered build messages");
        }
    }
}
