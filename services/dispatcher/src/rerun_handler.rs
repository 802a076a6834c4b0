//! The `dispatcher-reruns` consumer: re-runs builds lost to the system's own failure.
//!
//! For every `BuildCompleted` the pure rule ([`crate::decision::rerun`]) says whether the build
//! is re-run; if so the lost build's recorded request is read back (the dispatcher's own record,
//! with its buildspec: the build's events carry none and are not trusted for it), started
//! through [`Starter::start_once`] under its own key (`rerun.<request id>`), recorded and
//! announced as a `BuildRequested` of the same push. A redelivery re-announces the recorded
//! re-run instead of starting another.

use prx_ci_proto::v1::envelope::Payload;
use prx_ci_shared::bus::consume::{Delivery, Handler, HandlerError};
use prx_ci_shared::bus::publish::EventPublisher;
use time::OffsetDateTime;

use crate::decision::rerun::{NoRerun, Rerun, lost_build};
use crate::dispatch_store::{DispatchStore, StartKey};
use crate::metrics::DispatcherMetrics;
use crate::start::{Starter, transient};

/// Handles `BuildCompleted` events of the `dispatcher-reruns` consumer.
#[derive(Debug)]
pub struct RerunHandler {
    max_reruns: u32,
    starter: Starter,
    publisher: EventPublisher,
    store: DispatchStore,
    metrics: DispatcherMetrics,
}

impl RerunHandler {
    pub fn new(
        max_reruns: u32,
        starter: Starter,
        publisher: EventPublisher,
        store: DispatchStore,
        metrics: DispatcherMetrics,
    ) -> Self {
        Self {
            max_reruns,
            starter,
            publisher,
            store,
            metrics,
        }
    }
}

impl Handler for RerunHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let Some(Payload::BuildCompleted(completed)) = &delivery.envelope.payload else {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "not a BuildCompleted event"
            )));
        };
        let build_id = completed
            .build
            .as_ref()
            .map(|b| b.build_id.as_str())
            .unwrap_or_default();
        let lost = match lost_build(completed, self.max_reruns) {
            Ok(lost) => lost,
            Err(NoRerun::NotLostToTheSystem) => return Ok(()),
            Err(why) => {
                tracing::warn!(%build_id, reason = %why, "build lost to the system's failure is not re-run");
                self.metrics.rerun(match why {
                    NoRerun::Exhausted { .. } => "exhausted",
                    NoRerun::Shadow => "shadow",
                    _ => "unrequested",
                });
                return Ok(());
            }
        };
        let Some(recorded) = self
            .store
            .requested(&lost.request_id)
            .await
            .map_err(transient)?
        else {
            tracing::warn!(%build_id, request_id = %lost.request_id, "build lost to the system's failure is not re-run: the dispatcher holds no record of its request");
            self.metrics.rerun("unrecorded");
            return Ok(());
        };
        let rerun = Rerun::of(recorded).map_err(HandlerError::permanent)?;
        let key = StartKey::rerun(&rerun.request_id);
        let envelope = match self.store.dispatched(&key).await.map_err(transient)? {
            Some(envelope) => envelope,
            None => {
                // Adopted or not, the re-run runs the lost build's recorded request.
                let started = self
                    .starter
                    .start_once(&key, rerun.start.clone())
                    .await?
                    .build;
                let envelope = rerun.requested(
                    &delivery.envelope.event_id,
                    started,
                    OffsetDateTime::now_utc(),
                );
                let recorded = self
                    .store
                    .record_dispatched(&key, &envelope)
                    .await
                    .map_err(transient)?;
                if let Some(Payload::BuildRequested(request)) = &recorded.payload {
                    tracing::warn!(
                        lost_build_id = %build_id,
                        build_id = %request.build.as_ref().map(|b| b.build_id.as_str()).unwrap_or_default(),
                        rerun = request.rerun,
                        "build lost to the system's failure (FAULT); re-running it as the same push"
                    );
                }
                self.metrics.rerun("started");
                recorded
            }
        };
        self.publisher
            .publish(&envelope)
            .await
            .map(drop)
            .map_err(|e| transient(anyhow::Error::new(e).context("cannot store event")))
    }
}
