//! Starting a build at most once per [`StartKey`], across crashes and redeliveries.
//!
//! The intent to start is created in KV (compare-and-set) before the backend is asked, and
//! every build carries its request id (`PRX_CI_REQUEST_ID`). An attempt that finds an earlier
//! attempt's intent (that one crashed between `StartBuild` and its record, or before
//! `StartBuild`) first asks the backend for the build that request started
//! ([`BuildBackend::find`]) and adopts it; only when there is none does it start one. The
//! caller records the started build under the same key right after.

use std::sync::Arc;

use prx_ci_shared::bus::consume::HandlerError;
use prx_ci_shared::codebuild::backend::{BackendError, BuildBackend, StartBuild, StartedBuild};
use time::OffsetDateTime;

use crate::dispatch_store::{DispatchStore, Intent, StartKey};
use crate::fault::FaultPoint;

/// How far before an intent's time a backend's build may have started and still be that
/// intent's (clocks of the dispatcher and the backend differ).
const FIND_CLOCK_SLACK_SECS: i64 = 600;

/// A backend error as the consumer sees it.
pub fn backend_error(err: BackendError) -> HandlerError {
    match err {
        BackendError::Transient(e) => HandlerError::Transient(e),
        BackendError::Permanent(e) => HandlerError::Permanent(e),
    }
}

/// A failure worth redelivering (KV, the event store).
pub fn transient(err: impl Into<anyhow::Error>) -> HandlerError {
    HandlerError::Transient(err.into())
}

/// Starts builds through the backend, at most once per key.
#[derive(Debug, Clone)]
pub struct Starter {
    backend: Arc<dyn BuildBackend>,
    store: DispatchStore,
    fault: FaultPoint,
}

impl Starter {
    pub fn new(backend: Arc<dyn BuildBackend>, store: DispatchStore, fault: FaultPoint) -> Self {
        Self {
            backend,
            store,
            fault,
        }
    }

    /// The backend (to stop builds).
    pub fn backend(&self) -> &dyn BuildBackend {
        self.backend.as_ref()
    }

    /// Starts `request` under `key`, or adopts the build an earlier attempt started.
    pub async fn start_once(
        &self,
        key: &StartKey,
        request: StartBuild,
    ) -> Result<StartedBuild, HandlerError> {
        let request_id = request.request_id.clone();
        let intent = self
            .store
            .record_intent(key, &request_id, OffsetDateTime::now_utc().unix_timestamp())
            .await
            .map_err(transient)?;
        let found = match intent {
            Intent::First => None,
            Intent::Earlier(earlier) => {
                let since = OffsetDateTime::from_unix_timestamp(
                    earlier.at_unix.saturating_sub(FIND_CLOCK_SLACK_SECS),
                )
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                self.backend
                    .find(&request, since)
                    .await
                    .map_err(backend_error)?
            }
        };
        match found {
            Some(found) => {
                tracing::warn!(
                    build_id = %found.build_id,
                    %request_id,
                    "an earlier attempt started this build and stopped before recording it; adopting it"
                );
                Ok(found)
            }
            None => {
                let started = self.backend.start(request).await.map_err(backend_error)?;
                self.fault.reached(FaultPoint::AfterStart);
                Ok(started)
            }
        }
    }
}
