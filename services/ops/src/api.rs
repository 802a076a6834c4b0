//! The gRPC ops API: each call reads the streams (or the builds projection) and answers.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, envelope::Payload, ops_server::Ops, replay_request};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::envelope::{Chain, from_timestamp, new_event_id};
use prx_ci_shared::bus::subject::{self, EVENTS_STREAM, EventKind, WEBHOOKS_STREAM};
use prx_ci_shared::domain::{Branch, CommitSha, RepoName};
use prx_ci_shared::ownership::{
    ConfigOwners, OwnerRecord, OwnerStore, OwnershipConfig, Transfer, TransferError,
    TransferRefused,
};
use time::OffsetDateTime;
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::ancestry::{Ancestry, AncestryError, CommitGraph, Reachability};
use crate::auth::Operator;
use crate::config::OpsConfig;
use crate::error::OpsError;
use crate::history::{self, HistoryFilter};
use crate::projection::BuildsProjection;
use crate::store::{self, End, Start};
use crate::{parked, rebuild, replay};

/// Labels of an ops call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    /// `ok` or the gRPC code name.
    outcome: String,
}

/// Metrics of the ops API.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    calls: Family<CallLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "prx_ci_ops_calls",
            "Ops API calls, by method and outcome",
            calls.clone(),
        );
        Self { calls }
    }
}

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

/// Longest free-text reason of a rebuild or a transfer (stored in the audit records).
pub const MAX_REASON_LEN: usize = 1000;

/// The API's state: the NATS handles, the config, the builds projection, the commit graph
/// rebuilds check ancestry in, and the publisher's parameter ownership.
#[derive(Debug, Clone)]
pub struct OpsApi {
    rt: Runtime,
    config: Arc<OpsConfig>,
    builds: Arc<RwLock<BuildsProjection>>,
    metrics: ApiMetrics,
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
        builds: Arc<RwLock<BuildsProjection>>,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            rt,
            config,
            builds,
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
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                outcome,
            })
            .inc();
        result.map(Response::new)
    }

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
            store::read_range(
                &self.rt.js,
                WEBHOOKS_STREAM,
                &webhooks,
                Start::First,
                End::Now,
                usize::MAX
            ),
            store::read_range(
                &self.rt.js,
                EVENTS_STREAM,
                &events,
                Start::First,
                End::Now,
                usize::MAX
            ),
        )?;
        let merged = store::merge_by_time(vec![webhooks.0, events.0]);
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

    /// Builds in flight and the most recent finished ones.
    pub async fn builds(&self, request: v1::BuildsRequest) -> Result<v1::BuildsResponse, OpsError> {
        let recent = match request.recent {
            0 => self.config.recent_builds,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let repo = if request.repository.is_empty() {
            String::new()
        } else {
            repository(&request.repository)?.to_string()
        };
        let builds = self.builds.read().await;
        Ok(v1::BuildsResponse {
            in_flight: builds.in_flight(&repo),
            recent: builds.recent(recent, &repo),
        })
    }

    /// Stores an operator's push for the revision (see [`crate::rebuild`]), recorded as asked
    /// by `operator` (the identity the call's token authenticated; the request's own
    /// `requested_by` is ignored).
    pub async fn rebuild(
        &self,
        request: v1::RebuildRequest,
        operator: &Operator,
    ) -> Result<v1::RebuildResponse, OpsError> {
        let repo = repository(&request.repository)?;
        let revision = request.revision.trim();
        if revision.is_empty() {
            return Err(OpsError::InvalidArgument("revision is empty".into()));
        }
        let branch = match request.branch.trim() {
            "" => None,
            branch => Some(
                Branch::new(branch)
                    .map_err(|e| OpsError::InvalidArgument(format!("branch: {e}")))?
                    .to_string(),
            ),
        };
        let reason = request.reason.trim();
        if reason.len() > MAX_REASON_LEN {
            return Err(OpsError::InvalidArgument(format!(
                "reason is longer than {MAX_REASON_LEN} bytes"
            )));
        }
        let requested_by = operator.name();
        let claimed = request.requested_by.trim();
        if !claimed.is_empty() && claimed != requested_by {
            tracing::info!(
                requested_by,
                claimed,
                "rebuild request names someone else; recording the authenticated operator"
            );
        }
        let full_name = repo.to_string();
        let filter = [subject::repository_filter(
            EventKind::WebhookReceived,
            &full_name,
        )];
        let (messages, _) = store::read_range(
            &self.rt.js,
            WEBHOOKS_STREAM,
            &filter,
            Start::First,
            End::Now,
            usize::MAX,
        )
        .await?;
        let webhooks: Vec<v1::WebhookReceived> = messages
            .iter()
            .filter_map(|m| match m.envelope()?.payload? {
                Payload::WebhookReceived(w) => Some(w),
                _ => None,
            })
            .collect();
        let target =
            rebuild::resolve(&full_name, revision, branch.as_deref(), &webhooks).map_err(|e| {
                match e {
                    rebuild::ResolveError::Ambiguous(_)
                    | rebuild::ResolveError::BranchMismatch { .. } => {
                        OpsError::InvalidArgument(e.to_string())
                    }
                    rebuild::ResolveError::DeletedBranch { .. } => {
                        OpsError::FailedPrecondition(e.to_string())
                    }
                    _ => OpsError::NotFound(e.to_string()),
                }
            })?;
        if target.needs_ancestry_check() {
            self.check_in_history(&repo, &target).await?;
        }
        let now = OffsetDateTime::now_utc();
        let now_text = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(OpsError::internal)?;
        let payload = rebuild::push_payload(&full_name, &target, requested_by, reason, &now_text);
        let delivery_id = format!("operator-{}", uuid::Uuid::new_v4());
        let envelope = Chain {
            correlation_id: delivery_id.clone(),
            ..Chain::default()
        }
        .envelope_at(
            delivery_id.clone(),
            now,
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery_id.clone(),
                event_name: "push".into(),
                payload: serde_json::to_vec(&payload).map_err(OpsError::internal)?,
                hook_id: String::new(),
                repository: full_name.clone(),
                origin: v1::Origin::Operator as i32,
                requested_by: requested_by.to_owned(),
            }),
        );
        let stored = self
            .rt
            .publisher
            .publish(&envelope)
            .await
            .map_err(OpsError::unavailable)?;
        tracing::info!(
            repository = %full_name,
            branch = %target.branch,
            commit = %target.commit,
            head = %target.head,
            requested_by,
            reason,
            delivery_id = %delivery_id,
            sequence = stored.sequence,
            "operator rebuild requested"
        );
        Ok(v1::RebuildResponse {
            delivery_id,
            branch: target.branch,
            commit: target.commit,
            sequence: stored.sequence,
            requested_by: requested_by.to_owned(),
        })
    }

    /// Refuses a commit that is not in the history of its branch's head: rebuilding it as a
    /// push to the branch would publish code that was never on the branch (a fork's commit,
    /// another branch's, one a force-push removed).
    async fn check_in_history(
        &self,
        repo: &RepoName,
        target: &rebuild::Target,
    ) -> Result<(), OpsError> {
        let commit = CommitSha::parse(&target.commit)
            .map_err(|e| OpsError::InvalidArgument(e.to_string()))?;
        let head = CommitSha::parse(&target.head).map_err(OpsError::internal)?;
        let clone_url = target
            .repository
            .get("clone_url")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("https://github.com/{repo}.git"), str::to_owned);
        let refused = |why: &str| {
            OpsError::FailedPrecondition(format!(
                "commit {commit} {why} branch {:?} of {repo} (head {head}); only commits in the \
                 branch's history are rebuilt as pushes to it",
                target.branch
            ))
        };
        match self
            .commits
            .reachability(repo, &clone_url, &commit, &head)
            .await
        {
            Ok(Reachability::Reachable) => Ok(()),
            Ok(Reachability::NotReachable) => Err(refused("is not in the history of")),
            Ok(Reachability::UnknownCommit) => Err(refused("does not exist in the repository of")),
            Err(AncestryError::Unsupported(why)) => Err(OpsError::FailedPrecondition(why)),
            Err(AncestryError::Failed(err)) => Err(OpsError::CommitsUnavailable(err)),
        }
    }

    /// Lists a range and (unless a dry run) creates the replay consumer for it.
    pub async fn replay(&self, request: v1::ReplayRequest) -> Result<v1::ReplayResponse, OpsError> {
        if request.consumer.is_empty() {
            return Err(OpsError::InvalidArgument("consumer is empty".into()));
        }
        if request
            .consumer
            .contains(replay::replay_prefix("").as_str())
        {
            return Err(OpsError::InvalidArgument(
                "replay into a replay consumer is not supported".into(),
            ));
        }
        let stream =
            self.rt.js.get_stream(&request.stream).await.map_err(|_| {
                OpsError::NotFound(format!("stream {} does not exist", request.stream))
            })?;
        let target = stream.consumer_info(&request.consumer).await.map_err(|_| {
            OpsError::NotFound(format!(
                "consumer {} does not exist on {}",
                request.consumer, request.stream
            ))
        })?;
        let target_config = consumer_pull_config(&target.config);
        let target_filters = replay::filters_of(&target_config);
        let filters = if request.subject.is_empty() {
            target_filters
        } else if target_filters.is_empty()
            || target_filters
                .iter()
                .any(|f| replay::subject_within(&request.subject, f))
        {
            vec![request.subject.clone()]
        } else {
            return Err(OpsError::InvalidArgument(format!(
                "subject {} is outside what {} consumes ({})",
                request.subject,
                request.consumer,
                target_filters.join(", ")
            )));
        };
        let start = match &request.from {
            None => Start::First,
            Some(replay_request::From::FromSequence(s)) => Start::Sequence(*s),
            Some(replay_request::From::FromTime(t)) => Start::Time(time_of(t)?),
        };
        let end = match &request.to {
            None => End::Now,
            Some(replay_request::To::ToSequence(s)) => End::Sequence(*s),
            Some(replay_request::To::ToTime(t)) => End::Time(time_of(t)?),
        };
        let mut first = None;
        let mut last = 0;
        let mut listed = std::collections::VecDeque::new();
        let limit = self.config.max_listed_events;
        let count = store::scan(&self.rt.js, &request.stream, &filters, start, end, |m| {
            first.get_or_insert(m.sequence);
            last = m.sequence;
            if listed.len() == limit {
                listed.pop_front();
            }
            listed.push_back(m.to_proto(None));
        })
        .await?;
        let Some(first) = first else {
            return Err(OpsError::FailedPrecondition(
                "the range holds no message for this consumer; nothing to replay".into(),
            ));
        };
        let mut response = v1::ReplayResponse {
            events: listed.into(),
            replay_consumer: String::new(),
            count,
            first_sequence: first,
            last_sequence: last,
        };
        if request.dry_run {
            return Ok(response);
        }
        let name = format!(
            "{}{}",
            replay::replay_prefix(&request.consumer),
            OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
        );
        let config = replay::replay_config(
            &target_config,
            &request.consumer,
            &name,
            filters,
            first,
            last,
        );
        self.rt
            .js
            .create_consumer_on_stream(config, &request.stream)
            .await
            .map_err(OpsError::unavailable)?;
        tracing::info!(
            stream = %request.stream,
            consumer = %request.consumer,
            replay = %name,
            first,
            last,
            count,
            "replay created"
        );
        response.replay_consumer = name;
        Ok(response)
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
        let envelope = Chain {
            correlation_id: event_id.clone(),
            ..Chain::default()
        }
        .envelope_at(
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

/// The pull-consumer view of a consumer's configuration (the fields a replay copies).
fn consumer_pull_config(
    c: &async_nats::jetstream::consumer::Config,
) -> async_nats::jetstream::consumer::pull::Config {
    async_nats::jetstream::consumer::pull::Config {
        durable_name: c.durable_name.clone(),
        description: c.description.clone(),
        ack_policy: c.ack_policy,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        filter_subject: c.filter_subject.clone(),
        filter_subjects: c.filter_subjects.clone(),
        replay_policy: c.replay_policy,
        max_ack_pending: c.max_ack_pending,
        backoff: c.backoff.clone(),
        metadata: c.metadata.clone(),
        ..Default::default()
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
        let result = OpsApi::replay(self, request.into_inner()).await;
        self.observe("replay", result)
    }

    async fn parked(
        &self,
        request: Request<v1::ParkedRequest>,
    ) -> Result<Response<v1::ParkedResponse>, Status> {
        let request = request.into_inner();
        let result = parked::list(
            &self.rt.js,
            &request.consumer,
            self.config.max_listed_events,
        )
        .await
        .map(|entries| v1::ParkedResponse { entries });
        self.observe("parked", result)
    }

    async fn retry_parked(
        &self,
        request: Request<v1::RetryParkedRequest>,
    ) -> Result<Response<v1::RetryParkedResponse>, Status> {
        // Recorded as the authenticated operator, not the name the request carries.
        let operator = Operator::of(&request)?;
        let request = request.into_inner();
        let result = parked::retry(&self.rt.js, request.id, operator.name()).await;
        self.observe("retry_parked", result)
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
}
