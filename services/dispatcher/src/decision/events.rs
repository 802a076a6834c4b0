//! The envelopes a decision announces (requested, skipped, cancelled) and their ids.
//!
//! Idempotence: everything a webhook produces is keyed by its *dispatch id* (the GitHub
//! delivery id for GitHub deliveries, so a delivery stored again, replayed or redelivered at
//! any later time maps to the same builds; the event id otherwise). Event ids are derived from
//! it, so re-publishing collapses in JetStream's duplicate window.

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::codebuild::backend::{StartBuild, StartedBuild};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::push_position::PushPosition;
use prx_ci_shared::domain::{Architecture, OrderingKey};
use time::OffsetDateTime;

use super::{BuildPlan, PlannedBuild, Skip};
use crate::inflight::{InflightBuild, Push};

/// The id everything a webhook produces derives from (see the module docs).
pub fn dispatch_id(envelope: &Envelope, webhook: &v1::WebhookReceived) -> String {
    let from_github = matches!(
        v1::Origin::try_from(webhook.origin),
        Ok(v1::Origin::Github | v1::Origin::Unspecified | v1::Origin::Recovered)
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

/// The position a skipped webhook's events carry: GitHub's time when the plan knows it (else
/// `received_at`, when ingress stored the webhook), no chain (skips order nothing), and the
/// webhook's stream sequence.
pub fn skip_position(plan: Option<&BuildPlan>, received_at: i64, stream_sequence: u64) -> u64 {
    let pushed_at = plan.and_then(|p| p.pushed_at).unwrap_or(received_at);
    PushPosition::new(pushed_at, PushPosition::CHAIN_MIDDLE, stream_sequence).wire()
}

/// The `BuildSkipped` envelope of a webhook caused by `cause`: ordered on the skip's ordering
/// key at `push_sequence` when the event names one; one per webhook. `shadow`: decided in
/// shadow mode.
pub fn skipped(
    cause: &Envelope,
    dispatch_id: &str,
    push_sequence: u64,
    skip: &Skip,
    shadow: bool,
    at: OffsetDateTime,
) -> Envelope {
    let mut chain = Chain::caused_by(cause);
    if let Some(key) = &skip.ordering_key {
        chain = chain.with_ordering(key, push_sequence);
    }
    chain.envelope_at(
        derived_event_id(dispatch_id, &["build.skipped"]),
        at,
        Payload::BuildSkipped(v1::BuildSkipped {
            shadow,
            ..skip.to_proto()
        }),
    )
}

impl BuildPlan {
    /// What the backend is asked to start for `build` of this plan: the build's variables and
    /// `PRX_CI_REQUEST_ID`, the request id (how a build is found again, see
    /// [`prx_ci_shared::codebuild::backend::BuildBackend::find`]).
    pub fn start_request(
        &self,
        request_id: String,
        buildspec: &str,
        build: &PlannedBuild,
    ) -> StartBuild {
        let mut environment = build.environment.clone();
        environment.insert(env::CI_REQUEST_ID.to_owned(), request_id.clone());
        StartBuild {
            request_id,
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            architecture: build.architecture,
            clone_url: self.clone_url.clone(),
            source_version: self.source_version().to_string(),
            buildspec: buildspec.to_owned(),
            environment,
            untrusted: self.is_fork(),
        }
    }

    /// The `BuildRequested` envelope announcing `started`, the backend's answer to
    /// [`Self::start_request`] for `build` (with its [`build_request_id`]); one per webhook and
    /// architecture. `shadow`: nothing was started (`started` is a pseudo build).
    #[expect(clippy::too_many_arguments, reason = "one envelope from its parts")]
    pub fn requested(
        &self,
        chain: &Chain,
        dispatch_id: &str,
        buildspec: &str,
        build: PlannedBuild,
        started: StartedBuild,
        shadow: bool,
        at: OffsetDateTime,
    ) -> Envelope {
        let request_id = build_request_id(dispatch_id, build.architecture);
        let mut environment = build.environment;
        environment.insert(env::CI_REQUEST_ID.to_owned(), request_id.clone());
        chain.envelope_at(
            derived_event_id(
                dispatch_id,
                &["build.requested", build.architecture.as_str()],
            ),
            at,
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    build_id: started.build_id,
                    build_request_id: request_id,
                    repository: self.repository.to_string(),
                    commit: self.commit.to_string(),
                    architecture: build.architecture.to_proto() as i32,
                    backend: started.backend,
                    project: started.project,
                    region: started.region,
                    log_url: started.log_url,
                    retry_of: String::new(),
                    shadowed: false,
                }),
                environment: environment.into_iter().collect(),
                buildspec: buildspec.to_owned(),
                clone_url: self.clone_url.clone(),
                source_version: self.source_version().to_string(),
                event_name: self.event_name.clone(),
                action: self.action.clone(),
                fork: self.is_fork(),
                branch: self.branch().to_owned(),
                pull_request: self.pull_request(),
                primary_architecture: build
                    .primary_architecture
                    .map_or(v1::Architecture::Unspecified, Architecture::to_proto)
                    as i32,
                rerun: 0,
                shadow,
                rerun_request: None,
            }),
        )
    }
}

/// The `BuildCancelled` envelope of `build`, stopped because `by` superseded it. It carries the
/// cancelled build's own chain (its webhook's correlation, its push's ordering and sequence);
/// one per build: the id depends on the build only.
pub fn cancelled(
    ordering_key: &OrderingKey,
    build: &InflightBuild,
    by: &Push,
    at: OffsetDateTime,
) -> Envelope {
    let chain = Chain {
        correlation_id: build.correlation_id.clone(),
        causation_id: by.event_id.clone(),
        ordering_key: Some(ordering_key.to_proto()),
        push_sequence: build.push_sequence,
    };
    chain.envelope_at(
        derived_event_id(build.build_id(), &["build.cancelled"]),
        at,
        Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(build.build.clone()),
            superseded_by_sequence: by.sequence,
            superseded_by_commit: by.commit.clone(),
            superseded_by_event_id: by.event_id.clone(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::codebuild::env;
    use serde_json::Value;

    use super::super::fixtures::*;
    use super::super::{DecisionConfig, ForkPolicy, SkipReason, decide};
    use super::*;

    const AT: OffsetDateTime = time::macros::datetime!(2026-11-30 12:00 UTC);

    fn webhook_envelope() -> Envelope {
        Envelope {
            event_id: "webhook-event".into(),
            correlation_id: "delivery-1".into(),
            ..Envelope::default()
        }
    }

    fn webhook(origin: v1::Origin, delivery_id: &str) -> v1::WebhookReceived {
        v1::WebhookReceived {
            origin: origin as i32,
            delivery_id: delivery_id.into(),
            ..v1::WebhookReceived::default()
        }
    }

    fn started(build_id: &str) -> StartedBuild {
        StartedBuild {
            build_id: build_id.into(),
            backend: "codebuild".into(),
            project: "infrastructure-ci-Runner2".into(),
            region: "us-east-1".into(),
            log_url: "https://logs/b".into(),
        }
    }

    #[test]
    fn github_deliveries_dispatch_under_their_delivery_id() {
        let envelope = webhook_envelope();
        for origin in [
            v1::Origin::Github,
            v1::Origin::Unspecified,
            v1::Origin::Recovered,
        ] {
            assert_eq!(
                dispatch_id(&envelope, &webhook(origin, "72d3162e")),
                "github-delivery:72d3162e"
            );
            assert_eq!(
                dispatch_id(&envelope, &webhook(origin, "")),
                "webhook-event"
            );
        }
        let rebuild = webhook(v1::Origin::Operator, "72d3162e");
        assert_eq!(dispatch_id(&envelope, &rebuild), "webhook-event");
    }

    #[test]
    fn build_request_ids_are_stable_per_architecture() {
        let x86 = build_request_id("github-delivery:1", Architecture::X86_64);
        assert_eq!(
            x86,
            build_request_id("github-delivery:1", Architecture::X86_64)
        );
        assert_ne!(
            x86,
            build_request_id("github-delivery:1", Architecture::Aarch64)
        );
        assert_ne!(
            x86,
            build_request_id("github-delivery:2", Architecture::X86_64)
        );
    }

    #[test]
    fn skips_are_positioned_at_github_time_or_arrival() {
        let config = DecisionConfig::default();
        let mut body: Value = serde_json::from_slice(&push("refs/heads/main", SHA_A)).unwrap();
        body["repository"]["pushed_at"] = serde_json::json!(1_764_142_800);
        let timed = decide("push", body.to_string().as_bytes(), &config).unwrap();
        let position = |plan| PushPosition::from_wire(skip_position(plan, 99, 7)).unwrap();
        assert_eq!(position(Some(&timed)).pushed_at(), Some(1_764_142_800));
        assert_eq!(position(Some(&timed)).arrival(), 7);
        assert_eq!(position(Some(&timed)).chain_offset(), 0);
        let untimed = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        assert_eq!(position(Some(&untimed)).pushed_at(), Some(99));
        assert_eq!(position(None).pushed_at(), Some(99));
    }

    #[test]
    fn a_skip_is_ordered_only_when_the_event_names_a_lane() {
        let config = DecisionConfig::default();
        let cause = webhook_envelope();
        let lane = decide("push", &push("refs/heads/feat", SHA_A), &config).unwrap_err();
        assert_eq!(lane.reason, SkipReason::NonDefaultBranch);
        let envelope = skipped(&cause, "github-delivery:1", 42, &lane, false, AT);
        assert_eq!(
            envelope.event_id,
            derived_event_id("github-delivery:1", &["build.skipped"])
        );
        assert_eq!(envelope.causation_id, "webhook-event");
        assert_eq!(envelope.correlation_id, "delivery-1");
        assert_eq!(envelope.push_sequence, 42);
        assert_eq!(
            envelope.ordering_key,
            lane.ordering_key.as_ref().map(OrderingKey::to_proto)
        );
        assert_eq!(
            envelope.payload,
            Some(Payload::BuildSkipped(lane.to_proto()))
        );
        let no_lane = decide("issues", b"{}", &config).unwrap_err();
        let envelope = skipped(&cause, "github-delivery:1", 42, &no_lane, false, AT);
        assert_eq!((envelope.ordering_key, envelope.push_sequence), (None, 0));
    }

    #[test]
    fn a_requested_build_names_what_was_started_and_why() {
        let config = DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..DecisionConfig::default()
        };
        let fork = pull_request_from(
            "synchronize",
            serde_json::json!({"full_name": "outsider/app"}),
        );
        let plan = decide("pull_request", &fork, &config).unwrap();
        let spec = "PRX_BUILD_AARCH64\nPRX_PRIMARY_AARCH64";
        let [build] = plan
            .builds(spec, &config)
            .unwrap()
            .builds
            .try_into()
            .unwrap();
        let request_id = build_request_id("github-delivery:1", Architecture::Aarch64);
        let request = plan.start_request(request_id.clone(), spec, &build);
        let source_version = format!("refs/pull/7/head^{{{SHA_A}}}");
        assert_eq!(request.source_version, source_version);
        assert_eq!(request.architecture, Architecture::Aarch64);
        assert!(request.untrusted);
        // The build's variables, and the request id every build is tagged with.
        let mut tagged = build.environment.clone();
        tagged.insert(env::CI_REQUEST_ID.into(), request_id.clone());
        assert_eq!(request.environment, tagged);

        let chain = Chain::caused_by(&webhook_envelope()).with_ordering(&plan.ordering_key, 5);
        let envelope = plan.requested(
            &chain,
            "github-delivery:1",
            spec,
            build.clone(),
            started("p:b"),
            false,
            AT,
        );
        assert_eq!(
            envelope.event_id,
            derived_event_id("github-delivery:1", &["build.requested", "aarch64"])
        );
        assert_eq!(envelope.push_sequence, 5);
        assert_eq!(envelope.ordering_key, Some(plan.ordering_key.to_proto()));
        let Some(Payload::BuildRequested(requested)) = envelope.payload else {
            panic!("not a BuildRequested: {envelope:?}");
        };
        assert_eq!(
            requested.build,
            Some(v1::BuildRef {
                build_id: "p:b".into(),
                build_request_id: request_id.clone(),
                repository: "PRX/app".into(),
                commit: SHA_A.into(),
                architecture: v1::Architecture::Aarch64 as i32,
                backend: "codebuild".into(),
                project: "infrastructure-ci-Runner2".into(),
                region: "us-east-1".into(),
                log_url: "https://logs/b".into(),
                retry_of: String::new(),
                shadowed: false,
            })
        );
        assert_eq!(requested.environment[env::CI_PUBLISH], "false");
        assert_eq!(requested.environment[env::CI_REQUEST_ID], request_id);
        assert_eq!(requested.environment.len(), build.environment.len() + 1);
        assert_eq!(requested.buildspec, spec);
        assert_eq!(requested.source_version, source_version);
        assert_eq!(
            requested.primary_architecture(),
            v1::Architecture::Aarch64,
            "the buildspec's primary marker"
        );
        assert_eq!(
            (requested.event_name.as_str(), requested.action.as_str()),
            ("pull_request", "synchronize")
        );
        assert!(requested.fork);
        assert_eq!(
            (requested.branch.as_str(), requested.pull_request),
            ("feat/x", 7)
        );
    }

    #[test]
    fn a_cancellation_carries_the_cancelled_builds_chain() {
        let plan = decide(
            "push",
            &push("refs/heads/main", SHA_A),
            &DecisionConfig::default(),
        )
        .unwrap();
        let build = InflightBuild {
            build: v1::BuildRef {
                build_id: "p:old".into(),
                ..v1::BuildRef::default()
            },
            push_sequence: 3,
            correlation_id: "delivery-old".into(),
        };
        let by = Push {
            sequence: 9,
            commit: SHA_B.into(),
            event_id: "webhook-new".into(),
        };
        let envelope = cancelled(&plan.ordering_key, &build, &by, AT);
        assert_eq!(
            envelope.event_id,
            derived_event_id("p:old", &["build.cancelled"])
        );
        assert_eq!(envelope.correlation_id, "delivery-old");
        assert_eq!(envelope.causation_id, "webhook-new");
        assert_eq!(envelope.push_sequence, 3);
        assert_eq!(envelope.ordering_key, Some(plan.ordering_key.to_proto()));
        assert_eq!(
            envelope.payload,
            Some(Payload::BuildCancelled(v1::BuildCancelled {
                build: Some(build.build.clone()),
                superseded_by_sequence: 9,
                superseded_by_commit: SHA_B.into(),
                superseded_by_event_id: "webhook-new".into(),
            }))
        );
    }
}
