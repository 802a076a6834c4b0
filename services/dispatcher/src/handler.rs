//! The webhook handler: decision, buildspec lookup, build starts (at most once per webhook and
//! architecture), the decision events, and the stopping of superseded builds.
//!
//! Idempotence: everything a webhook produces is keyed by its *dispatch id* (the GitHub
//! delivery id for GitHub deliveries, so a delivery stored again, replayed or redelivered at
//! any later time maps to the same builds; the event id otherwise). Event ids are derived from
//! it, so re-publishing collapses in JetStream's duplicate window; started builds are recorded
//! in KV right after `StartBuild`, so a later redelivery re-announces the recorded build
//! instead of starting one (CodeBuild's idempotency token only covers five minutes).
//! Residual risk: a crash after `StartBuild` succeeded and before the record was written,
//! followed by a redelivery more than five minutes later (the token has expired), starts a
//! second build of the same commit; the first one runs unannounced (the build-watcher sees a
//! build nobody requested). The window is one KV write long.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::consume::{Delivery, Handler, HandlerError};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id, from_timestamp};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::backend::{BackendError, BuildBackend, StartBuild, StopOutcome};
use prx_ci_shared::domain::Architecture;
use prx_ci_shared::domain::push_position::PushPosition;

use crate::buildspec::{Buildspec, BuildspecError, BuildspecRequest, BuildspecSource};
use crate::config::DispatcherConfig;
use crate::decision::{self, BuildPlan, PlannedBuild, Skip, SkipReason};
use crate::lane::{InflightBuild, LaneUpdate, Push};
use crate::store::DispatchStore;

/// The dispatcher's own metrics.
#[derive(Debug, Clone)]
pub struct DispatcherMetrics {
    decisions: Family<DecisionLabels, Counter>,
    builds_started: Family<ArchitectureLabels, Counter>,
    builds_reannounced: Counter,
    builds_cancelled: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `build` or `skip`.
    outcome: String,
    /// The skip reason ("" for builds).
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArchitectureLabels {
    architecture: String,
}

impl DispatcherMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            builds_started: Family::default(),
            builds_reannounced: Counter::default(),
            builds_cancelled: Counter::default(),
        };
        registry.register(
            "prx_ci_dispatcher_decisions",
            "Webhooks decided, by outcome and skip reason",
            metrics.decisions.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_started",
            "Builds started through the backend",
            metrics.builds_started.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_reannounced",
            "Redelivered webhooks whose build was already started (announced again, not restarted)",
            metrics.builds_reannounced.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_cancelled",
            "Superseded builds stopped",
            metrics.builds_cancelled.clone(),
        );
        metrics
    }

    fn decision(&self, outcome: &str, reason: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Handles `WebhookReceived` events of the `dispatcher` consumer.
#[derive(Debug)]
pub struct DispatchHandler {
    config: DispatcherConfig,
    buildspecs: Arc<dyn BuildspecSource>,
    backend: Arc<dyn BuildBackend>,
    publisher: EventPublisher,
    store: DispatchStore,
    metrics: DispatcherMetrics,
}

/// The id everything a webhook produces derives from (see the module docs).
pub fn dispatch_id(envelope: &Envelope, webhook: &v1::WebhookReceived) -> String {
    let from_github = matches!(
        v1::Origin::try_from(webhook.origin),
        Ok(v1::Origin::Github | v1::Origin::Unspecified)
    );
    if from_github && !webhook.delivery_id.is_empty() {
        format!("github-delivery:{}", webhook.delivery_id)
    } else {
        envelope.event_id.clone()
    }
}

/// The stable id of the build request for one architecture (the backend's idempotency key).
pub fn build_request_id(dispatch_id: &str, architecture: Architecture) -> String {
    derived_event_id(dispatch_id, &["build.request", architecture.as_str()])
}

fn transient(err: impl Into<anyhow::Error>) -> HandlerError {
    HandlerError::Transient(err.into())
}

/// When ingress stored the webhook, in seconds: GitHub's time of the push for payloads that
/// carry none.
fn received_at(delivery: &Delivery) -> i64 {
    from_timestamp(delivery.envelope.time.as_ref()).map_or(0, time::OffsetDateTime::unix_timestamp)
}

/// The position a skipped webhook's events carry: GitHub's time when the plan knows it, no
/// chain (skips order nothing).
fn skip_position(delivery: &Delivery, plan: Option<&BuildPlan>) -> u64 {
    let pushed_at = plan
        .and_then(|p| p.pushed_at)
        .unwrap_or_else(|| received_at(delivery));
    PushPosition::new(
        pushed_at,
        PushPosition::CHAIN_MIDDLE,
        delivery.stream_sequence,
    )
    .wire()
}

impl DispatchHandler {
    pub fn new(
        config: DispatcherConfig,
        buildspecs: Arc<dyn BuildspecSource>,
        backend: Arc<dyn BuildBackend>,
        publisher: EventPublisher,
        store: DispatchStore,
        metrics: DispatcherMetrics,
    ) -> Self {
        Self {
            config,
            buildspecs,
            backend,
            publisher,
            store,
            metrics,
        }
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.publisher
            .publish(envelope)
            .await
            .map(drop)
            .map_err(|e| transient(anyhow::Error::new(e).context("cannot store event")))
    }

    async fn skip(
        &self,
        cause: &Envelope,
        dispatch_id: &str,
        push_sequence: u64,
        skip: Skip,
    ) -> Result<(), HandlerError> {
        let mut chain = Chain::caused_by(cause);
        if let Some(key) = &skip.ordering_key {
            chain = chain.with_ordering(key, push_sequence);
        }
        tracing::info!(
            reason = skip.reason.name(),
            detail = %skip.detail,
            repository = %skip.repository,
            commit = %skip.commit,
            "build skipped"
        );
        let envelope = chain.envelope(
            derived_event_id(dispatch_id, &["build.skipped"]),
            Payload::BuildSkipped(skip.to_proto()),
        );
        self.publish(&envelope).await?;
        self.metrics.decision("skip", skip.reason.name());
        Ok(())
    }

    async fn dispatch(
        &self,
        delivery: &Delivery,
        dispatch_id: &str,
        plan: BuildPlan,
    ) -> Result<(), HandlerError> {
        let cause = &delivery.envelope;
        // Builds recorded earlier for this webhook (a redelivery, a replay, the delivery stored
        // again) fix everything: their buildspec (no second lookup, which could now answer
        // differently) and their push sequence (the delivery's new stream sequence is still
        // the same push).
        let (x86_64, aarch64) = futures::future::try_join(
            self.store.dispatched(dispatch_id, Architecture::X86_64),
            self.store.dispatched(dispatch_id, Architecture::Aarch64),
        )
        .await
        .map_err(transient)?;
        let mut recorded: BTreeMap<Architecture, Envelope> = [
            (Architecture::X86_64, x86_64),
            (Architecture::Aarch64, aarch64),
        ]
        .into_iter()
        .filter_map(|(architecture, envelope)| Some((architecture, envelope?)))
        .collect();
        let recorded_buildspec = recorded.values().find_map(|e| match &e.payload {
            Some(Payload::BuildRequested(r)) => Some(r.buildspec.clone()),
            _ => None,
        });
        let buildspec = match recorded_buildspec {
            Some(text) => text,
            None => match self.lookup(&plan).await? {
                Ok(text) => text,
                Err(skip) => {
                    let position = skip_position(delivery, Some(&plan));
                    return self.skip(cause, dispatch_id, position, skip).await;
                }
            },
        };
        let builds = match plan.builds(&buildspec, &self.config.rules) {
            Ok(builds) => builds,
            Err(skip) => {
                let position = skip_position(delivery, Some(&plan));
                return self.skip(cause, dispatch_id, position, skip).await;
            }
        };
        // GitHub's push order, not arrival order (see `push_order`); a push dispatched before
        // keeps the position it was given.
        let push_sequence = match recorded.values().map(|e| e.push_sequence).next() {
            Some(recorded) => recorded,
            None => self
                .store
                .place_push(
                    &plan.ordering_key,
                    dispatch_id,
                    &plan.push_facts(received_at(delivery)),
                    delivery.stream_sequence,
                )
                .await
                .map_err(transient)?
                .wire(),
        };
        let chain = Chain::caused_by(cause).with_ordering(&plan.ordering_key, push_sequence);

        let mut requested = Vec::with_capacity(builds.len());
        for build in builds {
            let envelope = match recorded.remove(&build.architecture) {
                Some(envelope) => {
                    tracing::info!(architecture = %build.architecture, "build already started for this webhook; announcing it again");
                    self.metrics.builds_reannounced.inc();
                    envelope
                }
                None => {
                    self.start(&chain, dispatch_id, &plan, &buildspec, build)
                        .await?
                }
            };
            // Announced one by one: a later architecture failing must not hide a started one.
            self.publish(&envelope).await?;
            requested.push(envelope);
        }
        self.metrics.decision("build", "");

        if self.config.cancels_superseded(&plan.ordering_key.lane) {
            self.supersede(&plan, &requested).await?;
        }
        Ok(())
    }

    /// The buildspec at the plan's commit, or the skip when there is none to build.
    async fn lookup(&self, plan: &BuildPlan) -> Result<Result<String, Skip>, HandlerError> {
        let lookup = self
            .buildspecs
            .fetch(BuildspecRequest {
                repository: &plan.repository,
                commit: &plan.commit,
                clone_url: &plan.clone_url,
            })
            .await;
        match lookup {
            Ok(Buildspec::Found(text)) => Ok(Ok(text)),
            Ok(Buildspec::NotFound { detail }) => {
                Ok(Err(plan.skip(SkipReason::NoBuildspec, detail)))
            }
            Ok(Buildspec::Unreadable { detail }) => {
                Ok(Err(plan.skip(SkipReason::InvalidBuildspec, detail)))
            }
            Err(BuildspecError::Transient(err)) => Err(HandlerError::Transient(err)),
            Err(BuildspecError::Permanent(err)) => Err(HandlerError::Permanent(err)),
        }
    }

    async fn start(
        &self,
        chain: &Chain,
        dispatch_id: &str,
        plan: &BuildPlan,
        buildspec: &str,
        build: PlannedBuild,
    ) -> Result<Envelope, HandlerError> {
        let request_id = build_request_id(dispatch_id, build.architecture);
        let started = self
            .backend
            .start(StartBuild {
                request_id: request_id.clone(),
                repository: plan.repository.clone(),
                commit: plan.commit.clone(),
                architecture: build.architecture,
                clone_url: plan.clone_url.clone(),
                source_version: plan.source_version().to_owned(),
                buildspec: buildspec.to_owned(),
                environment: build.environment.clone(),
                untrusted: plan.is_fork(),
            })
            .await
            .map_err(|err| match err {
                BackendError::Transient(e) => HandlerError::Transient(e),
                BackendError::Permanent(e) => HandlerError::Permanent(e),
            })?;
        tracing::info!(
            build_id = %started.build_id,
            architecture = %build.architecture,
            commit = %plan.commit,
            ordering_key = %plan.ordering_key,
            push_position = %PushPosition::from_wire(chain.push_sequence).map(|p| p.to_string()).unwrap_or_default(),
            fork = plan.is_fork(),
            "build requested"
        );
        self.metrics
            .builds_started
            .get_or_create(&ArchitectureLabels {
                architecture: build.architecture.as_str().to_owned(),
            })
            .inc();
        let envelope = chain.envelope(
            derived_event_id(
                dispatch_id,
                &["build.requested", build.architecture.as_str()],
            ),
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    build_id: started.build_id,
                    build_request_id: request_id,
                    repository: plan.repository.to_string(),
                    commit: plan.commit.to_string(),
                    architecture: build.architecture.to_proto() as i32,
                    backend: started.backend,
                    project: started.project,
                    region: started.region,
                    log_url: started.log_url,
                }),
                environment: build.environment.into_iter().collect(),
                buildspec: buildspec.to_owned(),
                clone_url: plan.clone_url.clone(),
                source_version: plan.source_version().to_owned(),
                event_name: plan.event_name.clone(),
                action: plan.action.clone(),
                fork: plan.is_fork(),
                branch: plan.branch().to_owned(),
                pull_request: plan.pull_request(),
            }),
        );
        self.store
            .record_dispatched(dispatch_id, build.architecture, &envelope)
            .await
            .map_err(transient)
    }

    /// Records this push on its lane and stops what it supersedes (or, when a newer push got
    /// there first, its own builds).
    async fn supersede(
        &self,
        plan: &BuildPlan,
        requested: &[Envelope],
    ) -> Result<(), HandlerError> {
        let Some(first) = requested.first() else {
            return Ok(());
        };
        // From the recorded envelopes: a delivery stored again is still the original push.
        let push = Push {
            sequence: first.push_sequence,
            commit: plan.commit.to_string(),
            event_id: first.causation_id.clone(),
        };
        let builds: Vec<InflightBuild> = requested
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::BuildRequested(r)) => r
                    .build
                    .as_ref()
                    .map(|b| InflightBuild::from_build_ref(b, e.push_sequence, &e.correlation_id)),
                _ => None,
            })
            .collect();
        let update = self
            .store
            .record_push(&plan.ordering_key, &push, &builds)
            .await
            .map_err(transient)?;
        let (to_stop, by) = match update {
            LaneUpdate::Latest(state) => (state.to_stop, push),
            LaneUpdate::Superseded { by } => {
                tracing::info!(
                    newer_sequence = by.sequence,
                    newer_commit = %by.commit,
                    "a newer push of this lane was dispatched first; stopping this push's builds"
                );
                (builds, by)
            }
        };
        if to_stop.is_empty() {
            return Ok(());
        }
        let mut done = Vec::new();
        let mut failure = None;
        for build in &to_stop {
            match self.backend.stop(&build.build_id).await {
                Ok(StopOutcome::Stopped) => {
                    self.cancelled(plan, build, &by).await?;
                    done.push(build.build_id.clone());
                }
                Ok(StopOutcome::AlreadyFinished) => {
                    tracing::debug!(build_id = %build.build_id, "superseded build had already finished");
                    done.push(build.build_id.clone());
                }
                Err(BackendError::Permanent(err)) => {
                    tracing::warn!(build_id = %build.build_id, error = format!("{err:#}"), "cannot stop superseded build; leaving it");
                    done.push(build.build_id.clone());
                }
                Err(BackendError::Transient(err)) => {
                    tracing::warn!(build_id = %build.build_id, error = format!("{err:#}"), "cannot stop superseded build yet");
                    failure = Some(err);
                }
            }
        }
        self.store
            .forget_stopped(&plan.ordering_key, &done)
            .await
            .map_err(transient)?;
        match failure {
            // Redelivery finds the build still listed and tries again.
            Some(err) => Err(HandlerError::Transient(
                err.context("cannot stop every superseded build"),
            )),
            None => Ok(()),
        }
    }

    async fn cancelled(
        &self,
        plan: &BuildPlan,
        build: &InflightBuild,
        by: &Push,
    ) -> Result<(), HandlerError> {
        tracing::info!(
            build_id = %build.build_id,
            commit = %build.commit,
            superseded_by_sequence = by.sequence,
            superseded_by_commit = %by.commit,
            "superseded build stopped"
        );
        // The cancelled build's own chain: its push's ordering and sequence. One cancellation
        // per build: the id depends on the build only.
        let chain = Chain {
            correlation_id: build.correlation_id.clone(),
            causation_id: by.event_id.clone(),
            ordering_key: Some(plan.ordering_key.to_proto()),
            push_sequence: build.push_sequence,
        };
        let envelope = chain.envelope(
            derived_event_id(&build.build_id, &["build.cancelled"]),
            Payload::BuildCancelled(v1::BuildCancelled {
                build: Some(build.to_build_ref()),
                superseded_by_sequence: by.sequence,
                superseded_by_commit: by.commit.clone(),
                superseded_by_event_id: by.event_id.clone(),
            }),
        );
        self.publish(&envelope).await?;
        self.metrics.builds_cancelled.inc();
        Ok(())
    }
}

impl Handler for DispatchHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let Some(Payload::WebhookReceived(webhook)) = &delivery.envelope.payload else {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "not a WebhookReceived event"
            )));
        };
        let dispatch_id = dispatch_id(&delivery.envelope, webhook);
        tracing::debug!(event = %webhook.event_name, repository = %webhook.repository, %dispatch_id, "deciding");
        match decision::decide(&webhook.event_name, &webhook.payload, &self.config.rules) {
            Err(skip) => {
                let position = skip_position(&delivery, None);
                self.skip(&delivery.envelope, &dispatch_id, position, skip)
                    .await
            }
            Ok(plan) => self.dispatch(&delivery, &dispatch_id, plan).await,
        }
    }
}
