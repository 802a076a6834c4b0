//! The gRPC ops API: the service state, the `Ops` trait dispatch and the parameter-ownership calls; one module per other area.
//!
//! Each call answers from the projection (builds, the history index) or reads the streams: [`history`], [`builds`],
//! [`rebuild`], [`replay`], [`parked`] (`Parked`, `RetryParked`, `DropParked`) here.

mod builds;
mod history;
mod parked;
mod rebuild;
mod replay;
mod shadow_report;

use std::sync::Arc;

use prx_ci_proto::v1::{self, envelope::Payload, ops_server::Ops};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::envelope::{Chain, from_timestamp, new_event_id};
use prx_ci_shared::domain::RepoName;
use prx_ci_shared::ownership::{
    ConfigOwners, OwnerRecord, OwnerStore, OwnershipConfig, Transfer, TransferError,
    TransferRefused,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::ancestry::{Ancestry, CommitGraph};
use crate::auth::Operator;
use crate::config::OpsConfig;
use crate::error::OpsError;
use crate::metrics::Metrics;
use crate::projection_runner::LiveProjection;

/// What the ops API knows of the publisher's parameter ownership (`[publisher]` section).
#[derive(Debug, Clone)]
pub struct ParameterOwnership {
    /// `[publisher.owners]`, which no transfer can override.
    pub config_owners: ConfigOwners,
    /// `[publisher] parameter_prefix`: transfers name parameters under it.
    pub parameter_prefix: String,
}

impl ParameterOwnership {
    /// From the ownership part of the (validated) `[publisher]` section.
    pub fn from_publisher(config: &OwnershipConfig) -> anyhow::Result<Self> {
        Ok(Self {
            config_owners: config
                .config_owners()
                .map_err(|reason| anyhow::anyhow!("invalid configuration [publisher]: {reason}"))?,
            parameter_prefix: config.parameter_prefix.clone(),
        })
    }
}

impl Default for ParameterOwnership {
    fn default() -> Self {
        Self {
            config_owners: ConfigOwners::default(),
            parameter_prefix: OwnershipConfig::default().parameter_prefix,
        }
    }
}

/// Longest free-text reason of a rebuild, a transfer or a parked entry's drop (stored in the
/// audit records).
pub const MAX_REASON_LEN: usize = 1000;

/// The API's state: the NATS handles, the config, the projection (builds and the history
/// index), the commit graph rebuilds check ancestry in, and the publisher's parameter ownership.
#[derive(Debug, Clone)]
pub struct OpsApi {
    rt: Runtime,
    config: Arc<OpsConfig>,
    projection: LiveProjection,
    metrics: Metrics,
    commits: Arc<dyn CommitGraph>,
    ownership: Arc<ParameterOwnership>,
}

fn repository(name: &str) -> Result<RepoName, OpsError> {
    RepoName::parse(name.trim())
        .map_err(|e| OpsError::InvalidArgument(format!("repository {name:?}: {e}")))
}

fn time_of(ts: &prost_types::Timestamp) -> Result<OffsetDateTime, OpsError> {
    from_timestamp(Some(ts)).ok_or_else(|| OpsError::InvalidArgument("time out of range".into()))
}

impl OpsApi {
    pub fn new(
        rt: Runtime,
        config: Arc<OpsConfig>,
        projection: LiveProjection,
        metrics: Metrics,
    ) -> Self {
        Self {
            rt,
            config,
            projection,
            metrics,
            commits: Arc::new(Ancestry::local_only()),
            ownership: Arc::new(ParameterOwnership::default()),
        }
    }

    /// Where rebuilds check that a commit given by hand is in its branch's history.
    pub fn with_commit_graph(mut self, commits: Arc<dyn CommitGraph>) -> Self {
        self.commits = commits;
        self
    }

    /// Uses the publisher's ownership configuration (default: no config owners).
    pub fn with_ownership(mut self, ownership: ParameterOwnership) -> Self {
        self.ownership = Arc::new(ownership);
        self
    }

    fn observe<T>(&self, method: &str, result: Result<T, OpsError>) -> Result<Response<T>, Status> {
        let result = result.map_err(Status::from);
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics.call(method, outcome);
        result.map(Response::new)
    }
}

impl OpsApi {
    /// Config owners and claimed names under `request.prefix`.
    pub async fn parameter_owners(
        &self,
        request: v1::ParameterOwnersRequest,
    ) -> Result<v1::ParameterOwnersResponse, OpsError> {
        let prefix = request.prefix.trim();
        let mut owners: Vec<v1::ParameterOwner> = self
            .ownership
            .config_owners
            .entries()
            .iter()
            .filter(|c| c.pattern.starts_with(prefix) || c.covers(prefix))
            .map(|c| v1::ParameterOwner {
                parameter: c.pattern.clone(),
                repository: c.repository.clone(),
                source: "config".into(),
                ..Default::default()
            })
            .collect();
        let store = OwnerStore::open(&self.rt.js)
            .await
            .map_err(OpsError::unavailable)?;
        let claimed = store.all(prefix).await.map_err(OpsError::unavailable)?;
        owners.extend(claimed.into_iter().map(owner_of_record));
        Ok(v1::ParameterOwnersResponse { owners })
    }

    /// Moves a parameter name to another repository on behalf of `identity` and records the
    /// `ParameterOwnerChanged` event.
    pub async fn transfer_parameter(
        &self,
        request: v1::TransferParameterRequest,
        identity: &Operator,
    ) -> Result<v1::TransferParameterResponse, OpsError> {
        let parameter = request.parameter.trim();
        let reason = request.reason.trim();
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(OpsError::InvalidArgument(format!(
                "reason is longer than {MAX_REASON_LEN} characters"
            )));
        }
        let now = OffsetDateTime::now_utc();
        let now_text = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(OpsError::internal)?;
        let store = OwnerStore::open(&self.rt.js)
            .await
            .map_err(OpsError::unavailable)?;
        let record = store
            .transfer(
                &self.ownership.config_owners,
                &self.ownership.parameter_prefix,
                &Transfer {
                    parameter,
                    repository: &request.repository,
                    requested_by: identity.name(),
                    reason,
                },
                &now_text,
            )
            .await
            .map_err(|e| match e {
                TransferError::Refused(
                    r @ (TransferRefused::InvalidName(_) | TransferRefused::InvalidRepository(_)),
                ) => OpsError::InvalidArgument(r.to_string()),
                TransferError::Refused(r) => OpsError::FailedPrecondition(r.to_string()),
                other => OpsError::unavailable(other),
            })?;
        let event_id = new_event_id();
        let envelope = Chain::starting(&event_id).envelope_at(
            event_id.clone(),
            now,
            Payload::ParameterOwnerChanged(v1::ParameterOwnerChanged {
                parameter: record.parameter.clone(),
                repository: record.repository.clone(),
                previous: record.previous.clone(),
                action: record.action.clone(),
                requested_by: record.requested_by.clone(),
                reason: record.reason.clone(),
            }),
        );
        // The record (which carries the same audit fields) is written first: an event for a
        // transfer that lost its compare-and-set would be a false audit entry.
        let stored = self
            .rt
            .publisher
            .publish(&envelope)
            .await
            .map_err(OpsError::unavailable)?;
        tracing::info!(
            parameter = %record.parameter,
            repository = %record.repository,
            previous = %record.previous,
            requested_by = %record.requested_by,
            reason = %record.reason,
            event_id = %event_id,
            "parameter owner transferred"
        );
        Ok(v1::TransferParameterResponse {
            previous: record.previous,
            requested_by: record.requested_by,
            event_id,
            sequence: stored.sequence,
        })
    }
}

fn owner_of_record(r: OwnerRecord) -> v1::ParameterOwner {
    v1::ParameterOwner {
        parameter: r.parameter,
        repository: r.repository,
        source: r.action,
        build_id: r.build_id,
        commit: r.commit,
        at: r.at,
        requested_by: r.requested_by,
        reason: r.reason,
        previous: r.previous,
    }
}

#[tonic::async_trait]
impl Ops for OpsApi {
    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        let result = OpsApi::history(self, request.into_inner()).await;
        self.observe("history", result)
    }

    async fn builds(
        &self,
        request: Request<v1::BuildsRequest>,
    ) -> Result<Response<v1::BuildsResponse>, Status> {
        let result = OpsApi::builds(self, request.into_inner()).await;
        self.observe("builds", result)
    }

    async fn rebuild(
        &self,
        request: Request<v1::RebuildRequest>,
    ) -> Result<Response<v1::RebuildResponse>, Status> {
        let operator = Operator::of(&request)?;
        let result = OpsApi::rebuild(self, request.into_inner(), &operator).await;
        self.observe("rebuild", result)
    }

    async fn replay(
        &self,
        request: Request<v1::ReplayRequest>,
    ) -> Result<Response<v1::ReplayResponse>, Status> {
        let operator = Operator::of(&request)?;
        let result = OpsApi::replay(self, request.into_inner(), &operator).await;
        self.observe("replay", result)
    }

    async fn parked(
        &self,
        request: Request<v1::ParkedRequest>,
    ) -> Result<Response<v1::ParkedResponse>, Status> {
        let result = OpsApi::parked(self, request.into_inner()).await;
        self.observe("parked", result)
    }

    async fn retry_parked(
        &self,
        request: Request<v1::RetryParkedRequest>,
    ) -> Result<Response<v1::RetryParkedResponse>, Status> {
        // Recorded as the authenticated operator, not the name the request carries.
        let operator = Operator::of(&request)?;
        let result = OpsApi::retry_parked(self, request.into_inner(), &operator).await;
        self.observe("retry_parked", result)
    }

    async fn drop_parked(
        &self,
        request: Request<v1::DropParkedRequest>,
    ) -> Result<Response<v1::DropParkedResponse>, Status> {
        let operator = Operator::of(&request)?;
        let result = OpsApi::drop_parked(self, request.into_inner(), &operator).await;
        self.observe("drop_parked", result)
    }

    async fn parameter_owners(
        &self,
        request: Request<v1::ParameterOwnersRequest>,
    ) -> Result<Response<v1::ParameterOwnersResponse>, Status> {
        let result = OpsApi::parameter_owners(self, request.into_inner()).await;
        self.observe("parameter_owners", result)
    }

    async fn transfer_parameter(
        &self,
        request: Request<v1::TransferParameterRequest>,
    ) -> Result<Response<v1::TransferParameterResponse>, Status> {
        let identity = Operator::of(&request)?;
        let result = OpsApi::transfer_parameter(self, request.into_inner(), &identity).await;
        self.observe("transfer_parameter", result)
    }

    async fn shadow_report(
        &self,
        request: Request<v1::ShadowReportRequest>,
    ) -> Result<Response<v1::ShadowReportResponse>, Status> {
        let result = OpsApi::shadow_report(self, request.into_inner()).await;
        self.observe("shadow_report", result)
    }
}
