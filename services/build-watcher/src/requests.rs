//! The `build-watcher` consumer: keeps the build projection up to date with the builds the
//! dispatcher requested (and cancelled), so reports can be joined with their request's chain
//! and the reconciler knows what is in flight.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::from_timestamp;
use prx_ci_shared::{Delivery, Handler, HandlerError};
use time::OffsetDateTime;

use crate::report::normalize_build_id;
use crate::store::{
    BuildRecord, BuildRefData, BuildStore, CancelData, ChainData, InFlight, RequestData,
    StoreError, unix_ms,
};

/// Compare-and-set attempts before a conflict is handed back as a transient failure.
pub(crate) const CAS_ATTEMPTS: u32 = 5;

/// Handles BuildRequested and BuildCancelled events.
#[derive(Debug, Clone)]
pub struct RequestHandler {
    store: BuildStore,
}

impl RequestHandler {
    pub fn new(store: BuildStore) -> Self {
        Self { store }
    }

    async fn handle_requested(
        &self,
        envelope: &v1::Envelope,
        request: &v1::BuildRequested,
    ) -> Result<(), HandlerError> {
        let Some(build) = request.build.as_ref() else {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "BuildRequested {} has no build reference",
                envelope.event_id
            )));
        };
        let build_id = normalize_build_id(&build.build_id);
        if build_id.is_empty() {
            // Nothing to join reports with; the backend never answered with an id.
            tracing::warn!(event_id = %envelope.event_id, "BuildRequested without a build id; not tracked");
            return Ok(());
        }
        let requested_at =
            from_timestamp(envelope.time.as_ref()).unwrap_or_else(OffsetDateTime::now_utc);
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .store
                .get(&build_id)
                .await
                .map_err(HandlerError::transient)?;
            let mut record = current.record.clone().unwrap_or_else(|| BuildRecord {
                build_id: build_id.clone(),
                last_heard_ms: unix_ms(requested_at),
                ..Default::default()
            });
            let before = record.clone();
            merge_request(&mut record, envelope, request);
            if current.record.is_some() && record == before {
                return Ok(()); // a redelivery
            }
            match self.store.save(&record, current.revision).await {
                Ok(_) => {
                    if !record.state.lifecycle.is_final() {
                        self.store
                            .put_in_flight(&InFlight {
                                build_id: build_id.clone(),
                                backend: record.build.backend.clone(),
                                last_heard_ms: record.last_heard_ms,
                            })
                            .await
                            .map_err(HandlerError::transient)?;
                    }
                    tracing::debug!(build_id = %build_id, "build requested recorded");
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(HandlerError::transient(e)),
            }
        }
        Err(HandlerError::transient(anyhow::anyhow!(
            "build record {build_id} kept changing"
        )))
    }

    async fn handle_cancelled(
        &self,
        envelope: &v1::Envelope,
        cancelled: &v1::BuildCancelled,
    ) -> Result<(), HandlerError> {
        let build_id = normalize_build_id(
            cancelled
                .build
                .as_ref()
                .map(|b| b.build_id.as_str())
                .unwrap_or_default(),
        );
        if build_id.is_empty() {
            return Ok(());
        }
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .store
                .get(&build_id)
                .await
                .map_err(HandlerError::transient)?;
            let Some(mut record) = current.record else {
                tracing::warn!(%build_id, "cancelled build is not known; nothing to record");
                return Ok(());
            };
            let cancel = CancelData {
                event_id: envelope.event_id.clone(),
                superseded_by_sequence: cancelled.superseded_by_sequence,
                superseded_by_commit: cancelled.superseded_by_commit.clone(),
            };
            if record.cancelled.as_ref() == Some(&cancel) {
                return Ok(());
            }
            record.cancelled = Some(cancel);
            match self.store.save(&record, current.revision).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(HandlerError::transient(e)),
            }
        }
        Err(HandlerError::transient(anyhow::anyhow!(
            "build record {build_id} kept changing"
        )))
    }
}

/// Puts the request's reference and chain on a record (which may already exist: a report that
/// arrived first, or a build first reported as nobody's).
pub(crate) fn merge_request(
    record: &mut BuildRecord,
    envelope: &v1::Envelope,
    request: &v1::BuildRequested,
) {
    let mut data = request
        .build
        .as_ref()
        .map(BuildRefData::from)
        .unwrap_or_default();
    // Keep what reports taught (log link, region) where the request left it empty.
    if data.log_url.is_empty() {
        data.log_url = record.build.log_url.clone();
    }
    if data.region.is_empty() {
        data.region = record.build.region.clone();
    }
    record.build = data;
    record.requested = true;
    record.requested_event_id = envelope.event_id.clone();
    record.request = Some(RequestData::from(request));
    record.chain = ChainData::caused_by(envelope);
}

impl Handler for RequestHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        match &delivery.envelope.payload {
            Some(Payload::BuildRequested(request)) => {
                self.handle_requested(&delivery.envelope, request).await
            }
            Some(Payload::BuildCancelled(cancelled)) => {
                self.handle_cancelled(&delivery.envelope, cancelled).await
            }
            // The filter only delivers the two kinds above; anything else is not ours.
            _ => Ok(()),
        }
    }
}
