//! The webhook handler: load, ask the decision, start and stop builds, store, publish.
//!
//! Idempotence: everything a webhook produces is keyed by its dispatch id
//! ([`decision::dispatch_id`]). Builds are started through [`Starter::start_once`] (intent in
//! KV first, adoption of a build a crashed attempt started), and the started build is recorded
//! right after under the same key, so a later redelivery re-announces the recorded build
//! instead of starting one; an adopted build is recorded and announced exactly as a fresh
//! start, same event ids. So CodeBuild's idempotency token (five minutes) is no longer what
//! prevents a second build after a crash. The intent is a marker, not a lock: what remains is
//! listed in the README ("One build per (webhook, architecture)").

use std::collections::BTreeMap;
use std::sync::Arc;

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::consume::{Delivery, Handler, HandlerError};
use prx_ci_shared::bus::envelope::{Chain, from_timestamp};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::backend::{BackendError, StopOutcome};
use prx_ci_shared::domain::Architecture;
use prx_ci_shared::domain::push_position::PushPosition;
use time::OffsetDateTime;

use crate::buildspec::{Buildspec, BuildspecError, BuildspecRequest, BuildspecSource};
use crate::config::DispatcherConfig;
use crate::decision::{self, BuildPlan, PlannedBuild, Skip, SkipReason, events, rerequest};
use crate::dispatch_store::{DispatchStore, StartKey};
use crate::inflight::{InflightBuild, InflightUpdate, Push};
use crate::metrics::DispatcherMetrics;
use crate::start::{Started, Starter, transient};

/// Handles `WebhookReceived` events of the `dispatcher` consumer.
#[derive(Debug)]
pub struct DispatchHandler {
    config: DispatcherConfig,
    buildspecs: Arc<dyn BuildspecSource>,
    starter: Starter,
    publisher: EventPublisher,
    store: DispatchStore,
    metrics: DispatcherMetrics,
}

/// When ingress stored the webhook, in seconds: GitHub's time of the push for payloads that
/// carry none.
fn received_at(delivery: &Delivery) -> i64 {
    from_timestamp(delivery.envelope.time.as_ref()).map_or(0, OffsetDateTime::unix_timestamp)
}

/// The position a skipped webhook's events carry (see [`events::skip_position`]).
fn skip_position(delivery: &Delivery, plan: Option<&BuildPlan>) -> u64 {
    events::skip_position(plan, received_at(delivery), delivery.stream_sequence)
}

impl DispatchHandler {
    pub fn new(
        config: DispatcherConfig,
        buildspecs: Arc<dyn BuildspecSource>,
        starter: Starter,
        publisher: EventPublisher,
        store: DispatchStore,
        metrics: DispatcherMetrics,
    ) -> Self {
        Self {
            config,
            buildspecs,
            starter,
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
        tracing::info!(
            reason = skip.reason.name(),
            detail = %skip.detail,
            repository = %skip.repository,
            commit = %skip.commit,
            "build skipped"
        );
        let envelope = events::skipped(
            cause,
            dispatch_id,
            push_sequence,
            &skip,
            self.starter.shadows(&skip.repository),
            OffsetDateTime::now_utc(),
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
            self.store
                .dispatched(&StartKey::webhook(dispatch_id, Architecture::X86_64)),
            self.store
                .dispatched(&StartKey::webhook(dispatch_id, Architecture::Aarch64)),
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
        for warning in &builds.warnings {
            tracing::warn!(
                repository = %plan.repository,
                commit = %plan.commit,
                warning = %warning,
                "buildspec markers"
            );
        }
        let builds = builds.builds;
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
                    self.metrics.build_reannounced();
                    envelope
                }
                None => {
                    let envelope = self
                        .start(&chain, dispatch_id, &plan, &buildspec, build)
                        .await?;
                    if let Some(received) = from_timestamp(cause.time.as_ref()) {
                        let waited = OffsetDateTime::now_utc() - received;
                        self.metrics.webhook_to_start(waited.as_seconds_f64());
                    }
                    envelope
                }
            };
            // Listed for re-runs requested on GitHub (also on a redelivery: a crash may have
            // come between the record and the index).
            self.store
                .index_commit(&envelope)
                .await
                .map_err(transient)?;
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
        let request_id = decision::build_request_id(dispatch_id, build.architecture);
        let request = plan.start_request(request_id, buildspec, &build);
        let key = StartKey::webhook(dispatch_id, build.architecture);
        let Started {
            build: started,
            adopted,
            shadow,
        } = self.starter.start_once(&key, request.clone()).await?;
        // An adopted build is announced as the crashed attempt started it.
        let (buildspec, build) = match adopted {
            Some(intended)
                if intended.buildspec != request.buildspec
                    || intended.environment != request.environment =>
            {
                tracing::warn!(
                    build_id = %started.build_id,
                    "the adopted build was started with another buildspec or variables than the plan made now (the configuration changed across the crash); announcing what it runs"
                );
                let mut build = build;
                build.environment = intended.environment;
                (intended.buildspec, build)
            }
            _ => (buildspec.to_owned(), build),
        };
        let buildspec = buildspec.as_str();
        tracing::info!(
            build_id = %started.build_id,
            architecture = %build.architecture,
            commit = %plan.commit,
            ordering_key = %plan.ordering_key,
            push_position = %PushPosition::from_wire(chain.push_sequence).map(|p| p.to_string()).unwrap_or_default(),
            fork = plan.is_fork(),
            shadow,
            "build requested"
        );
        self.metrics.build_started(build.architecture);
        let envelope = plan.requested(
            chain,
            dispatch_id,
            buildspec,
            build,
            started,
            shadow,
            OffsetDateTime::now_utc(),
        );
        self.store
            .record_dispatched(&key, &envelope)
            .await
            .map_err(transient)
    }

    /// Records this push in its ordering key's in-flight builds and stops what it supersedes
    /// (or, when a newer push got there first, its own builds).
    async fn supersede(
        &self,
        plan: &BuildPlan,
        requested: &[Envelope],
    ) -> Result<(), HandlerError> {
        let Some(first) = requested.first() else {
            return Ok(());
        };
        // From the recorded envelopes: a delivery stored again is still the original push.
        let push = Push::announced_in(first, plan.commit.as_str());
        let builds: Vec<InflightBuild> = requested
            .iter()
            .filter_map(InflightBuild::requested_in)
            .collect();
        let update = self
            .store
            .record_push(&plan.ordering_key, &push, &builds)
            .await
            .map_err(transient)?;
        let (to_stop, by) = match update {
            InflightUpdate::Latest(state) => (state.to_stop, push),
            InflightUpdate::Superseded { by } => {
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
            match self.starter.stop(build.build_id()).await {
                Ok(StopOutcome::Stopped) => {
                    self.cancelled(plan, build, &by).await?;
                    done.push(build.build_id().to_owned());
                }
                Ok(StopOutcome::AlreadyFinished) => {
                    tracing::debug!(build_id = %build.build_id(), "superseded build had already finished");
                    done.push(build.build_id().to_owned());
                }
                Err(BackendError::Permanent(err)) => {
                    tracing::warn!(build_id = %build.build_id(), error = format!("{err:#}"), "cannot stop superseded build; leaving it");
                    done.push(build.build_id().to_owned());
                }
                Err(BackendError::Transient(err)) => {
                    tracing::warn!(build_id = %build.build_id(), error = format!("{err:#}"), "cannot stop superseded build yet");
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

    /// A re-run requested on GitHub (`check_run` / `check_suite`): rebuilds what the
    /// dispatcher recorded for the commit, as that original request (see [`rerequest`]), one
    /// build per (webhook, architecture) like any webhook's. A redelivery re-announces the
    /// recorded rebuilds, and repeats the first attempt's choice of the original.
    async fn rerun_requested(
        &self,
        delivery: &Delivery,
        dispatch_id: &str,
        webhook: &v1::WebhookReceived,
    ) -> Result<(), HandlerError> {
        let cause = &delivery.envelope;
        let asked =
            match rerequest::asked(&webhook.event_name, &webhook.payload, &self.config.rules) {
                Ok(asked) => asked,
                Err(skip) => {
                    let position = skip_position(delivery, None);
                    return self.skip(cause, dispatch_id, position, skip).await;
                }
            };
        let mut recorded: BTreeMap<Architecture, Envelope> = BTreeMap::new();
        for architecture in [Architecture::X86_64, Architecture::Aarch64] {
            if let Some(envelope) = self
                .store
                .dispatched(&StartKey::webhook(dispatch_id, architecture))
                .await
                .map_err(transient)?
            {
                recorded.insert(architecture, envelope);
            }
        }
        // The original a first attempt re-ran, else the one the check run names.
        let named_request = recorded
            .values()
            .find_map(|e| match &e.payload {
                Some(Payload::BuildRequested(r)) => r
                    .rerun_request
                    .as_ref()
                    .map(|r| r.original_request_id.clone()),
                _ => None,
            })
            .or_else(|| asked.external_id.clone());
        let named = match named_request {
            Some(request_id) => self.store.requested(&request_id).await.map_err(transient)?,
            None => None,
        };
        let builds = self
            .store
            .commit_builds(&asked.repository.to_string(), asked.commit.as_str())
            .await
            .map_err(transient)?;
        let rebuilds = match rerequest::select(&asked, &builds, named.as_ref(), &self.config.rules)
        {
            Ok(rebuilds) => rebuilds,
            Err(skip) => {
                let position = skip_position(delivery, None);
                return self.skip(cause, dispatch_id, position, skip).await;
            }
        };
        for rebuild in rebuilds {
            let key = StartKey::webhook(dispatch_id, rebuild.architecture);
            let envelope = match recorded.remove(&rebuild.architecture) {
                Some(envelope) => {
                    tracing::info!(architecture = %rebuild.architecture, "re-run already started for this webhook; announcing it again");
                    self.metrics.build_reannounced();
                    envelope
                }
                None => {
                    let request_id = decision::build_request_id(dispatch_id, rebuild.architecture);
                    let request = rebuild
                        .start_request(&request_id)
                        .map_err(HandlerError::permanent)?;
                    let Started {
                        build: started,
                        shadow,
                        ..
                    } = self.starter.start_once(&key, request).await?;
                    tracing::info!(
                        build_id = %started.build_id,
                        architecture = %rebuild.architecture,
                        commit = %asked.commit,
                        original_event_id = %rebuild.original().event_id,
                        push_position = %PushPosition::from_wire(rebuild.original().push_sequence).map(|p| p.to_string()).unwrap_or_default(),
                        requested_by = %asked.sender,
                        shadow,
                        "re-run requested on GitHub: rebuilding the recorded request"
                    );
                    self.metrics.build_started(rebuild.architecture);
                    let envelope = rebuild.requested(
                        cause,
                        dispatch_id,
                        &request_id,
                        &asked,
                        &webhook.delivery_id,
                        started,
                        shadow,
                        OffsetDateTime::now_utc(),
                    );
                    self.store
                        .record_dispatched(&key, &envelope)
                        .await
                        .map_err(transient)?
                }
            };
            self.publish(&envelope).await?;
        }
        self.metrics.decision("build", "");
        Ok(())
    }

    async fn cancelled(
        &self,
        plan: &BuildPlan,
        build: &InflightBuild,
        by: &Push,
    ) -> Result<(), HandlerError> {
        tracing::info!(
            build_id = %build.build_id(),
            commit = %build.build.commit,
            superseded_by_sequence = by.sequence,
            superseded_by_commit = %by.commit,
            "superseded build stopped"
        );
        let envelope = events::cancelled(&plan.ordering_key, build, by, OffsetDateTime::now_utc());
        self.publish(&envelope).await?;
        self.metrics.build_cancelled();
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
        let dispatch_id = decision::dispatch_id(&delivery.envelope, webhook);
        tracing::debug!(event = %webhook.event_name, repository = %webhook.repository, %dispatch_id, "deciding");
        if rerequest::is_rerun_event(&webhook.event_name) {
            return self.rerun_requested(&delivery, &dispatch_id, webhook).await;
        }
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
