//! The consumer handler: for each successful build, what to publish and with what outcome.

use std::sync::Arc;

use prx_ci_proto::v1::{self, PublishSkipReason, envelope::Payload};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::consume::{Delivery, Handler, HandlerError};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::domain::push_position::display_wire;
use prx_ci_shared::domain::{Architecture, OrderingKey};
use prx_ci_shared::ownership::{Checked, ConfigOwners, OwnerRecord, OwnerStore};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apps::AppRules;
use crate::artifacts::{ArtifactChecker, ArtifactStatus};
use crate::check::Check;
use crate::config::PublisherConfig;
use crate::eligibility::{self, Override, Verdict};
use crate::fence::Publication;
use crate::fence_store::{FenceError, FenceOutcome, KvFence};
use crate::mapping::{self, Item, Rejected, Target, ValueShape};
use crate::metrics::PublisherMetrics;
use crate::parameter_store::{ParameterStore, StoreError};
use crate::skip_store::{SkipRecord, SkipStore};

/// Handles `BuildCompleted`: asks [`eligibility`] and [`mapping`] what to publish, then
/// checks ownership, the artifact and the fence for each parameter, and reports every outcome.
pub(crate) struct PublishHandler {
    pub(crate) rt: Runtime,
    pub(crate) config: PublisherConfig,
    pub(crate) store: Arc<dyn ParameterStore>,
    /// Where a shadow build's would-be values go (`prx_ci_shadow_parameters`): never the
    /// parameter store.
    pub(crate) shadow_store: Arc<dyn ParameterStore>,
    /// The fence of shadow builds (`prx_ci_shadow_fence`): never the live one.
    pub(crate) shadow_fence: KvFence,
    pub(crate) artifacts: Arc<dyn ArtifactChecker>,
    pub(crate) fence: KvFence,
    pub(crate) skips: SkipStore,
    pub(crate) owners: OwnerStore,
    pub(crate) config_owners: ConfigOwners,
    pub(crate) apps: AppRules,
    pub(crate) metrics: PublisherMetrics,
}

impl Handler for PublishHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let Some(Payload::BuildCompleted(done)) = &delivery.envelope.payload else {
            return Ok(());
        };
        self.handle_build_completed(&delivery.envelope, done).await
    }
}

/// One skip to report.
struct Skip {
    reason: PublishSkipReason,
    /// The check that refused it (`None` only for a reason no single check gives).
    check: Option<Check>,
    detail: String,
    parameter: String,
    value: String,
    kind: Option<mapping::ArtifactKind>,
    label: String,
    mapping: String,
    superseded_by_sequence: u64,
    superseded_by_commit: String,
    /// The contradicted dispatcher variable of an `UNTRUSTED_OVERRIDE` (one event each).
    variable: String,
}

impl Skip {
    fn whole_build(reason: PublishSkipReason, detail: String) -> Self {
        Self {
            reason,
            check: Check::of_reason(reason),
            detail,
            parameter: String::new(),
            value: String::new(),
            kind: None,
            label: String::new(),
            mapping: String::new(),
            superseded_by_sequence: 0,
            superseded_by_commit: String::new(),
            variable: String::new(),
        }
    }

    fn of_override(o: &Override) -> Self {
        Self {
            variable: o.variable.clone(),
            ..Self::whole_build(PublishSkipReason::UntrustedOverride, o.detail())
        }
    }

    fn of_target(target: &Target, reason: PublishSkipReason, detail: String) -> Self {
        Self {
            reason,
            check: Check::of_reason(reason),
            detail,
            parameter: target.parameter.as_str().to_owned(),
            value: target.value.clone(),
            kind: Some(target.kind),
            label: target.label.clone(),
            mapping: target.mapping.clone(),
            superseded_by_sequence: 0,
            superseded_by_commit: String::new(),
            variable: String::new(),
        }
    }

    fn of_rejected(r: Rejected) -> Self {
        Self {
            reason: r.reason.to_proto(),
            check: Some(r.check),
            detail: r.detail,
            parameter: r.parameter,
            value: r.value,
            kind: Some(r.kind),
            label: r.label,
            mapping: r.mapping,
            superseded_by_sequence: 0,
            superseded_by_commit: String::new(),
            variable: String::new(),
        }
    }
}

fn reason_name(reason: PublishSkipReason) -> String {
    reason
        .as_str_name()
        .trim_start_matches("PUBLISH_SKIP_REASON_")
        .to_owned()
}

impl PublishHandler {
    async fn handle_build_completed(
        &self,
        envelope: &v1::Envelope,
        done: &v1::BuildCompleted,
    ) -> Result<(), HandlerError> {
        // Shadow mode branches here: in `[publisher] mode = "shadow"` every build, otherwise a
        // shadow request's build (a repository not cut over, docs/migrating.md), runs every
        // check and the fence as live and writes to the shadow store, never the parameters.
        let shadow = self.config.mode.is_shadow()
            || done.build.as_ref().is_some_and(|b| b.shadowed)
            || done.requested.as_ref().is_some_and(|r| r.shadow);
        // The dispatcher's request decides; the build's variables only supply artifact values.
        let Some(decision) = eligibility::assess(done, envelope.push_sequence) else {
            // Failures are the notifier's business.
            return Ok(());
        };
        let build = done.build.clone().unwrap_or_default();
        let chain = Chain::caused_by(envelope);
        // Event ids per (build, parameter), stable across redeliveries and duplicate reports.
        let id_base = if build.build_id.is_empty() {
            envelope.event_id.clone()
        } else {
            build.build_id.clone()
        };
        let emit = Emitter {
            handler: self,
            chain: &chain,
            build: &build,
            id_base: &id_base,
            push_sequence: envelope.push_sequence,
            shadow,
        };
        for o in &decision.overrides {
            tracing::warn!(
                build_id = %build.build_id,
                variable = %o.variable,
                "the build contradicts a dispatcher variable; ignored"
            );
            emit.skipped(Skip::of_override(o)).await?;
        }
        let unordered = match decision.verdict {
            Verdict::Publish => false,
            Verdict::Unordered => true,
            Verdict::Withheld => return Ok(()),
            Verdict::Skip { reason, detail } => {
                return emit.skipped(Skip::whole_build(reason, detail)).await;
            }
        };
        let facts = &decision.facts;
        let value_checks = |parameter: &mapping::ParameterName| {
            self.apps
                .value_checks(parameter.as_str(), &facts.repository)
        };
        let items = mapping::parse_mappings(
            &decision.variables,
            facts,
            &self.config.parameter_prefix,
            &value_checks,
        );
        // Marker, then the repository's entry, then the global default.
        let primary = self
            .apps
            .primary_architecture(decision.primary_architecture, &facts.repository);
        let ordering_key = envelope
            .ordering_key
            .as_ref()
            .and_then(OrderingKey::from_proto)
            .map(|k| k.to_string())
            .unwrap_or_default();
        for item in items {
            match item {
                Item::Skip(rejected) => emit.skipped(Skip::of_rejected(rejected)).await?,
                Item::Publish(target) => {
                    if unordered {
                        emit.skipped(Skip::of_target(
                            &target,
                            PublishSkipReason::Unordered,
                            eligibility::UNORDERED_DETAIL.to_owned(),
                        ))
                        .await?;
                        continue;
                    }
                    let publication = Publication {
                        position: decision.position(envelope.push_sequence, primary),
                        value: target.value.clone(),
                        commit: facts.commit.clone(),
                        build_id: id_base.clone(),
                        ordering_key: ordering_key.clone(),
                        architecture: facts
                            .architecture
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                    };
                    self.publish_target(&emit, &target, &publication, primary)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn publish_target(
        &self,
        emit: &Emitter<'_>,
        target: &Target,
        publication: &Publication,
        primary: Architecture,
    ) -> Result<(), HandlerError> {
        let parameter = target.parameter.as_str();
        // Ownership first: a name another repository owns is neither claimed in the fence nor
        // checked for an artifact.
        if let Some(skip) = self.check_owner(emit, target).await? {
            return emit.skipped(skip).await;
        }
        // A shadow build fences and writes apart from the live ones (see `shadow_fence`).
        let (fence, store) = if emit.shadow {
            (&self.shadow_fence, self.shadow_store.as_ref())
        } else {
            (&self.fence, self.store.as_ref())
        };
        let outcome = match fence
            .precheck(parameter, publication)
            .await
            .map_err(|err| fence_error(&self.metrics, err))?
        {
            Some(outcome) => outcome,
            None => {
                // A trusted app's own value names no artifact of ours.
                let status = match target.shape {
                    ValueShape::Helper => self
                        .artifacts
                        .check(target.kind, &target.value)
                        .await
                        .map_err(HandlerError::Transient)?,
                    ValueShape::Custom => ArtifactStatus::Present,
                };
                match status {
                    ArtifactStatus::Missing(detail) => {
                        return emit
                            .skipped(Skip::of_target(
                                target,
                                PublishSkipReason::ArtifactMissing,
                                detail,
                            ))
                            .await;
                    }
                    ArtifactStatus::Present => {}
                }
                fence
                    .publish(parameter, publication, store)
                    .await
                    .map_err(|err| fence_error(&self.metrics, err))?
            }
        };
        match outcome {
            FenceOutcome::Applied { version, again } => {
                if !again {
                    tracing::info!(
                        parameter,
                        value = %target.value,
                        version,
                        push = %display_wire(publication.position.push_sequence),
                        "parameter written"
                    );
                }
                emit.applied(target, version).await
            }
            FenceOutcome::Skipped(stale) => {
                let stale = stale.skip(
                    parameter,
                    publication.position.push_sequence,
                    primary.as_str(),
                );
                let mut skip = Skip::of_target(target, stale.reason, stale.detail);
                skip.superseded_by_sequence = stale.superseded_by_sequence;
                skip.superseded_by_commit = stale.superseded_by_commit;
                emit.skipped(skip).await
            }
        }
    }
}

impl PublishHandler {
    /// Whether the build's repository may publish `target` (see [`prx_ci_shared::ownership`]): `Some`
    /// skip when another repository owns it. A first publish claims the name and reports the
    /// claim.
    async fn check_owner(
        &self,
        emit: &Emitter<'_>,
        target: &Target,
    ) -> Result<Option<Skip>, HandlerError> {
        let checked = self
            .owners
            .check(
                &self.config_owners,
                target.parameter.as_str(),
                &emit.build.repository,
                emit.id_base,
                &emit.build.commit,
                &OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
            )
            .await
            .map_err(HandlerError::Transient)?;
        match checked {
            Checked::Allowed { claimed: None } => Ok(None),
            Checked::Allowed {
                claimed: Some(record),
            } => {
                emit.owner_claimed(&record).await?;
                Ok(None)
            }
            Checked::NotOwner { owner, detail } => {
                tracing::warn!(
                    parameter = %target.parameter.as_str(),
                    repository = %emit.build.repository,
                    owner = %owner,
                    "publish to a parameter another repository owns"
                );
                Ok(Some(Skip::of_target(
                    target,
                    PublishSkipReason::NotOwner,
                    detail,
                )))
            }
        }
    }
}

/// How a fence error is retried; a failed parameter-store call is counted on the way.
fn fence_error(metrics: &PublisherMetrics, err: FenceError) -> HandlerError {
    if let FenceError::Store { source, .. } = &err {
        metrics.store_error(source);
    }
    match &err {
        FenceError::Store {
            source: StoreError::NotWritten {
                retryable: false, ..
            },
            ..
        } => HandlerError::Permanent(err.into()),
        _ => HandlerError::Transient(err.into()),
    }
}

/// Publishes the outcome events of one build.
struct Emitter<'a> {
    handler: &'a PublishHandler,
    chain: &'a Chain,
    build: &'a v1::BuildRef,
    id_base: &'a str,
    push_sequence: u64,
    /// A shadow build: its writes went to the shadow store (`PublishApplied.shadow`).
    shadow: bool,
}

impl Emitter<'_> {
    /// Stores an outcome event (a failure is retried with the message).
    async fn store(&self, envelope: &v1::Envelope) -> Result<(), HandlerError> {
        self.handler
            .rt
            .publisher
            .publish(envelope)
            .await
            .map(drop)
            .map_err(HandlerError::transient)
    }

    async fn applied(&self, target: &Target, version: i64) -> Result<(), HandlerError> {
        let id = derived_event_id(
            self.id_base,
            &["publish-applied", target.parameter.as_str()],
        );
        let envelope = self.chain.envelope(
            id,
            Payload::PublishApplied(v1::PublishApplied {
                parameter: target.parameter.as_str().to_owned(),
                value: target.value.clone(),
                kind: target.kind.to_proto() as i32,
                label: target.label.clone(),
                build: Some(self.build.clone()),
                version,
                shadow: self.shadow,
            }),
        );
        self.store(&envelope).await?;
        self.handler.metrics.outcome("applied".into());
        Ok(())
    }

    /// Reports that this build claimed `record.parameter` for its repository (stable id per
    /// build and parameter, so a redelivery re-reports the same event).
    async fn owner_claimed(&self, record: &OwnerRecord) -> Result<(), HandlerError> {
        let id = derived_event_id(self.id_base, &["owner-claim", &record.parameter]);
        let envelope = self.chain.envelope(
            id,
            Payload::ParameterOwnerChanged(v1::ParameterOwnerChanged {
                parameter: record.parameter.clone(),
                repository: record.repository.clone(),
                previous: String::new(),
                action: record.action.clone(),
                requested_by: String::new(),
                reason: String::new(),
            }),
        );
        self.store(&envelope).await?;
        tracing::info!(
            parameter = %record.parameter,
            repository = %record.repository,
            "parameter claimed by its first publish"
        );
        Ok(())
    }

    async fn skipped(&self, skip: Skip) -> Result<(), HandlerError> {
        let kind_name = skip.kind.map_or("", |k| k.mapping_variable());
        let mut id_parts = vec![
            "publish-skipped",
            kind_name,
            &skip.mapping,
            &skip.label,
            &skip.parameter,
        ];
        if !skip.variable.is_empty() {
            id_parts.extend(["untrusted-override", skip.variable.as_str()]);
        }
        let id = derived_event_id(self.id_base, &id_parts);
        let reason = reason_name(skip.reason);
        let check = skip.check.map_or("", Check::name);
        let detail = match skip.check {
            Some(c) => c.detail(&skip.detail),
            None => skip.detail,
        };
        tracing::info!(
            parameter = %skip.parameter,
            reason = %reason,
            check,
            detail = %detail,
            "publish skipped"
        );
        if !skip.parameter.is_empty() && skip.parameter.len() <= mapping::MAX_NAME_LENGTH {
            let record = SkipRecord {
                parameter: skip.parameter.clone(),
                reason: reason.clone(),
                detail: detail.clone(),
                value: skip.value.clone(),
                commit: self.build.commit.clone(),
                push_sequence: self.push_sequence,
                build_id: self.id_base.to_owned(),
                superseded_by_sequence: skip.superseded_by_sequence,
                superseded_by_commit: skip.superseded_by_commit.clone(),
                at: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
            };
            self.handler
                .skips
                .record(&record)
                .await
                .map_err(HandlerError::Transient)?;
        }
        let envelope = self.chain.envelope(
            id,
            Payload::PublishSkipped(v1::PublishSkipped {
                parameter: skip.parameter,
                value: skip.value,
                kind: skip.kind.map_or(0, |k| k.to_proto() as i32),
                label: skip.label,
                build: Some(self.build.clone()),
                reason: skip.reason as i32,
                detail,
                superseded_by_sequence: skip.superseded_by_sequence,
                superseded_by_commit: skip.superseded_by_commit,
                mapping: skip.mapping,
                check: check.to_owned(),
            }),
        );
        self.store(&envelope).await?;
        self.handler.metrics.outcome(reason);
        Ok(())
    }
}
