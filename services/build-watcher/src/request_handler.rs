//! The `build-watcher` consumer: keeps the build records up to date with the builds the
//! dispatcher requested (and cancelled), so reports can be joined with their request's chain
//! and the reconciler knows what is in flight, and indexes each request by repository, commit
//! and architecture, so a console retry of its build can be matched to it.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::from_timestamp;
use prx_ci_shared::codebuild::build::build_id_of;
use prx_ci_shared::kv::Modify;
use prx_ci_shared::{Delivery, Handler, HandlerError};
use time::OffsetDateTime;

use crate::build_store::BuildStore;
use crate::console_retry::RequestedBuild;
use crate::watched_build::CancelData;

/// Deliveries of a BuildCancelled that finds no record of its build before it is taken for a
/// cancellation of a build nobody requested (with the consumer's backoff, 1 s then 5 s: the
/// request has 6 s to be recorded; `deploy/nats/consumers/build-watcher.json`, whose
/// `max_deliver` is above this, so such a cancellation is never parked).
const CANCEL_ATTEMPTS: u64 = 3;

/// Handles BuildRequested and BuildCancelled events.
#[derive(Debug, Clone)]
pub struct RequestHandler {
    store: BuildStore,
}

/// Stores the record when a rule changed it.
fn write_if<R>(changed: bool, result: R) -> Modify<R> {
    if changed {
        Modify::Write(result)
    } else {
        Modify::Keep(result)
    }
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
        let build_id = build_id_of(&build.build_id);
        if build_id.is_empty() {
            // Nothing to join reports with; the backend never answered with an id.
            tracing::warn!(event_id = %envelope.event_id, "BuildRequested without a build id; not tracked");
            return Ok(());
        }
        let requested_at =
            from_timestamp(envelope.time.as_ref()).unwrap_or_else(OffsetDateTime::now_utc);
        let (written, record) = self
            .store
            .modify(build_id, |record| {
                let changed = record.record_request(build_id, requested_at, envelope, request);
                write_if(changed, changed)
            })
            .await
            .map_err(HandlerError::transient)?;
        // Indexed after the record, and on a redelivery too (a crash may have come between the
        // two writes): the index write is a no-op when the entry is already there.
        let entry = RequestedBuild::from_request(build_id, envelope, request);
        if entry.index_key().is_some() {
            self.store
                .index_request(&entry)
                .await
                .map_err(HandlerError::transient)?;
        } else if written {
            tracing::warn!(
                %build_id,
                "BuildRequested names no repository, commit or architecture: a console retry of its build cannot be matched to it"
            );
        }
        // On a redelivery too: a failure after the record's write (the index, or this put
        // itself) must not leave the build out of the reconciler's in-flight list. A shadow
        // request's pseudo build (`shadow:<request id>`) is never in flight: nothing runs to
        // ask CodeBuild about, and it waits for the original's build without a deadline.
        if !record.state.lifecycle.is_final() && !request.shadow {
            self.store
                .put_in_flight(&record.in_flight())
                .await
                .map_err(HandlerError::transient)?;
        }
        if written {
            tracing::debug!(build_id = %build_id, "build requested recorded");
        }
        Ok(())
    }

    async fn handle_cancelled(
        &self,
        delivery: &Delivery,
        cancelled: &v1::BuildCancelled,
    ) -> Result<(), HandlerError> {
        let envelope = &delivery.envelope;
        let build_id = build_id_of(
            cancelled
                .build
                .as_ref()
                .map(|b| b.build_id.as_str())
                .unwrap_or_default(),
        );
        if build_id.is_empty() {
            return Ok(());
        }
        let cancel = CancelData::from_event(envelope, cancelled);
        let (known, _) = self
            .store
            .modify(build_id, |record| {
                let known = !record.is_new();
                write_if(record.record_cancel(cancel.clone()), known)
            })
            .await
            .map_err(HandlerError::transient)?;
        if !known {
            // Requests and cancellations are handled several at once (`request_concurrency`),
            // and a retried request comes back behind newer messages: a cancellation can
            // overtake the request it cancels. It is retried (the consumer's backoff) until
            // the request is recorded; one whose request never comes is left after
            // `CANCEL_ATTEMPTS`, as a cancellation of a build nobody requested.
            if delivery.delivered < CANCEL_ATTEMPTS {
                return Err(HandlerError::transient(anyhow::anyhow!(
                    "BuildCancelled of build {build_id} before its BuildRequested was recorded; retrying"
                )));
            }
            tracing::warn!(%build_id, attempts = delivery.delivered, "cancelled build is not known; nothing to record");
        }
        Ok(())
    }
}

impl Handler for RequestHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        match &delivery.envelope.payload {
            Some(Payload::BuildRequested(request)) => {
                self.handle_requested(&delivery.envelope, request).await
            }
            Some(Payload::BuildCancelled(cancelled)) => {
                self.handle_cancelled(&delivery, cancelled).await
            }
            // The filter only delivers the two kinds above; anything else is not ours.
            _ => Ok(()),
        }
    }
}
