//! The `Parked`, `RetryParked` and `DropParked` calls: dead-lettered messages, and putting one
//! back or dropping it, once, recorded under the operator the call authenticated as.

use prx_ci_proto::v1;

use super::OpsApi;
use crate::auth::Operator;
use crate::error::OpsError;
use crate::parked;

impl OpsApi {
    /// Parked entries (optionally of one consumer) with their retry or drop records, oldest
    /// first, at most the configured listing limit (the newest).
    pub async fn parked(&self, request: v1::ParkedRequest) -> Result<v1::ParkedResponse, OpsError> {
        let entries = parked::list(
            &self.rt.js,
            &request.consumer,
            self.config.max_listed_events,
        )
        .await?;
        Ok(v1::ParkedResponse { entries })
    }

    /// Puts entry `request.id` back on its original subject (see [`parked::retry`]), recorded
    /// as retried by `operator` (the request's own `requested_by` is ignored).
    pub async fn retry_parked(
        &self,
        request: v1::RetryParkedRequest,
        operator: &Operator,
    ) -> Result<v1::RetryParkedResponse, OpsError> {
        parked::retry(&self.rt.js, request.id, operator.name()).await
    }

    /// Drops entry `request.id` for `request.reason` (required), recorded as dropped by
    /// `operator` (see [`parked::drop_entry`]).
    pub async fn drop_parked(
        &self,
        request: v1::DropParkedRequest,
        operator: &Operator,
    ) -> Result<v1::DropParkedResponse, OpsError> {
        parked::drop_entry(&self.rt.js, request.id, operator.name(), &request.reason).await
    }
}
