//! Automatic re-runs (pure): which finished builds are re-run, and as what.
//!
//! A build that ended `FAULT` was lost to the system's own failure (CodeBuild's infrastructure,
//! the local runner's process dying or shutting down), not to its code. The dispatcher re-runs
//! it as the same push: the request it recorded for the build (same buildspec, variables,
//! source, chain and push sequence), a new request id, `build.retry_of` naming the lost build
//! and `rerun` counting the attempts, at most `[dispatcher] reruns` times (default once). A
//! build that failed by its own fault (`FAILED`, `TIMED_OUT`) or was stopped is never re-run;
//! nor is a build the dispatcher did not request (nothing entitles it), nor a shadow request's
//! build (shadow mode: the original system's build, which the original re-runs or not).
//!
//! Idempotence: the re-run's request id is derived from the lost build's request id, and its
//! event id from its request id, so a redelivered `BuildCompleted` re-runs nothing twice.

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::codebuild::backend::{StartBuild, StartedBuild};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use time::OffsetDateTime;

/// Why a finished build is not re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRerun {
    /// Not `FAULT`: succeeded, or failed by its own fault, or stopped.
    NotLostToTheSystem,
    /// Its request carries no build reference (not a build the dispatcher requested).
    NotRequested,
    /// It was already the last re-run allowed.
    Exhausted { reruns: u32 },
    /// Its request is a shadow request (`BuildRequested.shadow`): the build is the original
    /// system's, nothing of this system's was lost.
    Shadow,
}

impl std::fmt::Display for NoRerun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLostToTheSystem => f.write_str("the build did not end FAULT"),
            Self::NotRequested => f.write_str("the dispatcher did not request this build"),
            Self::Exhausted { reruns } => write!(f, "already re-run {reruns} time(s), the limit"),
            Self::Shadow => f.write_str("a shadow request's build (the original system's)"),
        }
    }
}

/// The request id a build lost to the system is re-run under (derived, so stable).
pub fn rerun_request_id(lost_request_id: &str) -> String {
    derived_event_id(lost_request_id, &["build.rerun"])
}

/// Whether the build `completed` reports is re-run, given at most `max_reruns`; `Ok` with the
/// request id of the lost build (whose recorded request the re-run repeats).
pub fn lost_build(completed: &v1::BuildCompleted, max_reruns: u32) -> Result<LostBuild, NoRerun> {
    if completed.status != v1::BuildStatus::Fault as i32 {
        return Err(NoRerun::NotLostToTheSystem);
    }
    let requested = completed.requested.as_ref().ok_or(NoRerun::NotRequested)?;
    let build = requested.build.as_ref().ok_or(NoRerun::NotRequested)?;
    if build.build_request_id.is_empty() {
        return Err(NoRerun::NotRequested);
    }
    if requested.shadow {
        return Err(NoRerun::Shadow);
    }
    if requested.rerun >= max_reruns {
        return Err(NoRerun::Exhausted {
            reruns: requested.rerun,
        });
    }
    Ok(LostBuild {
        request_id: build.build_request_id.clone(),
    })
}

/// A build lost to the system that is re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostBuild {
    /// Its request id (the key of its recorded request).
    pub request_id: String,
}

/// The re-run of a lost build, from the `BuildRequested` envelope the dispatcher recorded for
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rerun {
    /// The new request id ([`rerun_request_id`]).
    pub request_id: String,
    /// What the backend is asked to start.
    pub start: StartBuild,
    /// The recorded request of the lost build.
    lost: Envelope,
    lost_request: v1::BuildRequested,
}

/// Why a recorded request cannot be repeated.
#[derive(Debug, thiserror::Error)]
#[error("the recorded request of the lost build cannot be repeated: {0}")]
pub struct Unrepeatable(String);

impl Rerun {
    /// The re-run of the build whose recorded `BuildRequested` is `lost` (with `max_reruns`
    /// checked by [`lost_build`] before).
    pub fn of(lost: Envelope) -> Result<Self, Unrepeatable> {
        let Some(Payload::BuildRequested(lost_request)) = &lost.payload else {
            return Err(Unrepeatable("not a BuildRequested event".into()));
        };
        let lost_request = lost_request.clone();
        let build = lost_request.build.clone().unwrap_or_default();
        let request_id = rerun_request_id(&build.build_request_id);
        let repository =
            RepoName::parse(&build.repository).map_err(|e| Unrepeatable(e.to_string()))?;
        let commit = CommitSha::parse(&build.commit).map_err(|e| Unrepeatable(e.to_string()))?;
        let architecture = Architecture::from_proto(build.architecture)
            .ok_or_else(|| Unrepeatable("no architecture".into()))?;
        let mut environment: std::collections::BTreeMap<String, String> = lost_request
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        environment.insert(env::CI_REQUEST_ID.to_owned(), request_id.clone());
        let start = StartBuild {
            request_id: request_id.clone(),
            repository,
            commit,
            architecture,
            clone_url: lost_request.clone_url.clone(),
            source_version: lost_request.source_version.clone(),
            buildspec: lost_request.buildspec.clone(),
            environment,
            untrusted: lost_request.fork,
        };
        Ok(Self {
            request_id,
            start,
            lost,
            lost_request,
        })
    }

    /// The `BuildRequested` announcing `started`: the lost build's request and chain (same
    /// push), caused by the `BuildCompleted` event `completed_event_id`.
    pub fn requested(
        &self,
        completed_event_id: &str,
        started: StartedBuild,
        at: OffsetDateTime,
    ) -> Envelope {
        let lost_build = self.lost_request.build.clone().unwrap_or_default();
        let chain = Chain {
            correlation_id: self.lost.correlation_id.clone(),
            causation_id: completed_event_id.to_owned(),
            ordering_key: self.lost.ordering_key.clone(),
            push_sequence: self.lost.push_sequence,
        };
        let mut request = self.lost_request.clone();
        request.build = Some(v1::BuildRef {
            build_id: started.build_id,
            build_request_id: self.request_id.clone(),
            backend: started.backend,
            project: started.project,
            region: started.region,
            log_url: started.log_url,
            retry_of: lost_build.build_id,
            ..lost_build
        });
        request.environment = self
            .start
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        request.rerun = self.lost_request.rerun + 1;
        chain.envelope_at(
            derived_event_id(&self.request_id, &["build.requested"]),
            at,
            Payload::BuildRequested(request),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: OffsetDateTime = time::macros::datetime!(2026-11-30 12:00 UTC);

    fn lost(rerun: u32) -> Envelope {
        Envelope {
            event_id: "requested-1".into(),
            correlation_id: "delivery-1".into(),
            causation_id: "webhook-1".into(),
            ordering_key: Some(v1::OrderingKey {
                repository: "PRX/app".into(),
                ..v1::OrderingKey::default()
            }),
            push_sequence: 42,
            payload: Some(Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    build_id: "local:lost".into(),
                    build_request_id: "req-1".into(),
                    repository: "PRX/app".into(),
                    commit: "a".repeat(40),
                    architecture: v1::Architecture::Aarch64 as i32,
                    backend: "local".into(),
                    project: "local".into(),
                    log_url: "file:///lost.log".into(),
                    ..v1::BuildRef::default()
                }),
                environment: [
                    ("PRX_REPO".to_owned(), "PRX/app".to_owned()),
                    (env::CI_REQUEST_ID.to_owned(), "req-1".to_owned()),
                ]
                .into(),
                buildspec: "version: 0.2\n# PRX_\n".into(),
                clone_url: "https://github.com/PRX/app.git".into(),
                source_version: "refs/heads/main^{aaaa}".into(),
                event_name: "push".into(),
                branch: "main".into(),
                rerun,
                ..v1::BuildRequested::default()
            })),
            ..Envelope::default()
        }
    }

    fn completed(status: v1::BuildStatus, rerun: u32) -> v1::BuildCompleted {
        let Some(Payload::BuildRequested(mut requested)) = lost(rerun).payload else {
            unreachable!()
        };
        requested.buildspec.clear(); // as the build-watcher sends it
        v1::BuildCompleted {
            status: status as i32,
            requested: Some(requested),
            ..v1::BuildCompleted::default()
        }
    }

    #[test]
    fn only_a_build_lost_to_the_system_is_re_run_and_only_as_often_as_allowed() {
        assert_eq!(
            lost_build(&completed(v1::BuildStatus::Fault, 0), 1),
            Ok(LostBuild {
                request_id: "req-1".into()
            })
        );
        for own_fault in [
            v1::BuildStatus::Failed,
            v1::BuildStatus::TimedOut,
            v1::BuildStatus::Stopped,
            v1::BuildStatus::Succeeded,
        ] {
            assert_eq!(
                lost_build(&completed(own_fault, 0), 1),
                Err(NoRerun::NotLostToTheSystem),
                "{own_fault:?}"
            );
        }
        assert_eq!(
            lost_build(&completed(v1::BuildStatus::Fault, 1), 1),
            Err(NoRerun::Exhausted { reruns: 1 })
        );
        assert!(lost_build(&completed(v1::BuildStatus::Fault, 1), 2).is_ok());
        assert_eq!(
            lost_build(&completed(v1::BuildStatus::Fault, 0), 0),
            Err(NoRerun::Exhausted { reruns: 0 }),
            "reruns = 0 turns re-runs off"
        );
        let unrequested = v1::BuildCompleted {
            status: v1::BuildStatus::Fault as i32,
            ..v1::BuildCompleted::default()
        };
        assert_eq!(lost_build(&unrequested, 1), Err(NoRerun::NotRequested));
        let mut shadow = completed(v1::BuildStatus::Fault, 0);
        if let Some(requested) = shadow.requested.as_mut() {
            requested.shadow = true;
        }
        assert_eq!(lost_build(&shadow, 1), Err(NoRerun::Shadow));
    }

    #[test]
    fn a_rerun_repeats_the_recorded_request_as_the_same_push_with_a_new_build() {
        let rerun = Rerun::of(lost(0)).unwrap();
        assert_eq!(rerun.request_id, rerun_request_id("req-1"));
        assert_ne!(rerun.request_id, "req-1");
        assert_eq!(rerun.start.buildspec, "version: 0.2\n# PRX_\n");
        assert_eq!(rerun.start.architecture, Architecture::Aarch64);
        assert_eq!(
            rerun.start.environment[env::CI_REQUEST_ID],
            rerun.request_id,
            "found again by its own request id"
        );
        assert_eq!(rerun.start.environment["PRX_REPO"], "PRX/app");
        assert!(!rerun.start.untrusted);

        let started = StartedBuild {
            build_id: "local:new".into(),
            backend: "local".into(),
            project: "local".into(),
            region: String::new(),
            log_url: "file:///new.log".into(),
        };
        let envelope = rerun.requested("completed-1", started.clone(), AT);
        assert_eq!(envelope.correlation_id, "delivery-1");
        assert_eq!(envelope.causation_id, "completed-1");
        assert_eq!(envelope.push_sequence, 42, "the same push");
        assert_eq!(envelope.ordering_key, lost(0).ordering_key);
        let Some(Payload::BuildRequested(request)) = &envelope.payload else {
            panic!("{envelope:?}")
        };
        let build = request.build.as_ref().unwrap();
        assert_eq!(build.build_id, "local:new");
        assert_eq!(build.retry_of, "local:lost");
        assert_eq!(build.build_request_id, rerun.request_id);
        assert_eq!(build.commit, "a".repeat(40));
        assert_eq!(request.rerun, 1);
        assert_eq!(request.environment[env::CI_REQUEST_ID], rerun.request_id);
        // Stable: a redelivered BuildCompleted announces the same event.
        assert_eq!(
            envelope.event_id,
            Rerun::of(lost(0))
                .unwrap()
                .requested("completed-1", started, AT)
                .event_id
        );
        // The second re-run counts on.
        let second = Rerun::of(envelope).unwrap();
        assert_ne!(second.request_id, rerun.request_id);
    }

    #[test]
    fn a_request_that_cannot_be_repeated_is_refused() {
        let mut bad = lost(0);
        if let Some(Payload::BuildRequested(r)) = &mut bad.payload {
            r.build.as_mut().unwrap().commit = "not-a-sha".into();
        }
        let err = Rerun::of(bad).unwrap_err();
        assert!(err.to_string().contains("commit"), "{err}");
        assert!(
            Rerun::of(Envelope::default()).is_err(),
            "not a BuildRequested"
        );
    }
}
