//! Starting a build at most once per [`StartKey`], across crashes and redeliveries.
//!
//! The intent to start is created in KV (compare-and-set) before the backend is asked, and
//! every build carries its request id (`PRX_CI_REQUEST_ID`). An attempt that finds an earlier
//! attempt's intent (that one crashed between `StartBuild` and its record, or before
//! `StartBuild`) first asks the backend for the build that request started
//! ([`BuildBackend::find`]) and adopts it; only when there is none does it start one. The
//! caller records the started build under the same key right after.
//!
//! Shadow mode (`[dispatcher] mode = "shadow"`) branches here and nowhere else: for a
//! repository not cut over yet (not in `[dispatcher] live_repositories`), the starter asks the
//! backend for nothing (no `StartBuild`, no `StopBuild`) and answers with a pseudo build
//! ([`shadow_build`]), so every decision is made and recorded exactly as live.

use std::collections::BTreeSet;
use std::sync::Arc;

use prx_ci_shared::bus::consume::HandlerError;
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::codebuild::build::SHADOW_BACKEND;
use prx_ci_shared::config::Mode;
use time::OffsetDateTime;

use crate::dispatch_store::{DispatchStore, IntendedRequest, Intent, StartIntent, StartKey};
use crate::fault::FaultPoint;

/// How far before an intent's time a backend's build may have started and still be that
/// intent's (clocks of the dispatcher and the backend differ).
const FIND_CLOCK_SLACK_SECS: i64 = 600;

/// An attempt that wrote the intent but reaches `StartBuild` this long after (it stalled: a
/// hung KV write, a paused process) looks for the build first, like a redelivery would:
/// another replica may have started it meanwhile, and CodeBuild's idempotency token lasts only
/// five minutes.
const STALLED_AFTER_SECS: i64 = 240;

/// Whether an attempt must look for an earlier attempt's build before starting one, and from
/// when: always after an earlier attempt's intent; after its own intent only when it stalled
/// (see [`STALLED_AFTER_SECS`]). Pure.
pub fn look_first(intent: &Intent, written_at: i64, now: i64) -> Option<OffsetDateTime> {
    let since = match intent {
        Intent::Earlier(earlier) => earlier.at_unix,
        Intent::First if now - written_at > STALLED_AFTER_SECS => written_at,
        Intent::First => return None,
    };
    Some(
        OffsetDateTime::from_unix_timestamp(since.saturating_sub(FIND_CLOCK_SLACK_SECS))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

/// The pseudo build a shadow request announces: `shadow:<request id>`, deterministic, so a
/// redelivery announces the same one. Pure.
pub fn shadow_build(request: &StartBuild) -> StartedBuild {
    StartedBuild {
        build_id: format!("{SHADOW_BACKEND}:{}", request.request_id),
        backend: SHADOW_BACKEND.to_owned(),
        project: String::new(),
        region: String::new(),
        log_url: String::new(),
    }
}

/// Whether `build_id` is a [`shadow_build`]'s. Pure.
pub fn is_shadow_build(build_id: &str) -> bool {
    build_id
        .strip_prefix(SHADOW_BACKEND)
        .is_some_and(|rest| rest.starts_with(':'))
}

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

/// A build [`Starter::start_once`] started or adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub build: StartedBuild,
    /// For a build an earlier attempt started: what that attempt asked the backend to run, as
    /// its intent recorded it (`None` for a fresh start, and for intents of earlier versions).
    /// The build is announced with these, not with the plan made again.
    pub adopted: Option<IntendedRequest>,
    /// Shadow mode: nothing was started, `build` is a [`shadow_build`].
    pub shadow: bool,
}

/// Which repositories are shadowed: every one in shadow mode, except those cut over
/// (`[dispatcher] live_repositories`, docs/migrating.md). Pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowScope {
    mode: Mode,
    live: BTreeSet<String>,
}

impl ShadowScope {
    pub fn new(mode: Mode, live_repositories: &[String]) -> Self {
        Self {
            mode,
            live: live_repositories
                .iter()
                .map(|r| r.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a build of `repository` is a shadow one (decided, never started). Names compare
    /// as GitHub does, without case.
    pub fn shadows(&self, repository: &str) -> bool {
        self.mode.is_shadow() && !self.live.contains(&repository.to_ascii_lowercase())
    }
}

/// Starts builds through the backend, at most once per key.
#[derive(Debug, Clone)]
pub struct Starter {
    backend: Arc<dyn BuildBackend>,
    store: DispatchStore,
    fault: FaultPoint,
    scope: ShadowScope,
}

impl Starter {
    pub fn new(
        backend: Arc<dyn BuildBackend>,
        store: DispatchStore,
        fault: FaultPoint,
        scope: ShadowScope,
    ) -> Self {
        Self {
            backend,
            store,
            fault,
            scope,
        }
    }

    /// Whether a decision about `repository` is a shadow one (see [`ShadowScope`]).
    pub fn shadows(&self, repository: &str) -> bool {
        self.scope.shadows(repository)
    }

    /// Stops a superseded build. A shadow request's pseudo build runs nothing, and the
    /// original's builds are not ours to stop: nothing is asked, and the build counts as
    /// finished (no `BuildCancelled`, the original build is still adopted when it reports).
    pub async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError> {
        if is_shadow_build(build_id) {
            return Ok(StopOutcome::AlreadyFinished);
        }
        self.backend.stop(build_id).await
    }

    /// Starts `request` under `key`, or adopts the build an earlier attempt started.
    pub async fn start_once(
        &self,
        key: &StartKey,
        request: StartBuild,
    ) -> Result<Started, HandlerError> {
        if self.shadows(&request.repository.to_string()) {
            return Ok(Started {
                build: shadow_build(&request),
                adopted: None,
                shadow: true,
            });
        }
        let request_id = request.request_id.clone();
        let written_at = OffsetDateTime::now_utc().unix_timestamp();
        let intent = StartIntent {
            request_id: request_id.clone(),
            at_unix: written_at,
            intended: Some(IntendedRequest {
                buildspec: request.buildspec.clone(),
                environment: request.environment.clone(),
            }),
        };
        let intent = self
            .store
            .record_intent(key, &intent)
            .await
            .map_err(transient)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let found = match look_first(&intent, written_at, now) {
            None => None,
            Some(since) => self
                .backend
                .find(&request, since)
                .await
                .map_err(backend_error)?,
        };
        match found {
            Some(found) => {
                tracing::warn!(
                    build_id = %found.build_id,
                    %request_id,
                    "an earlier attempt started this build and stopped before recording it; adopting it"
                );
                let intended = match intent {
                    Intent::Earlier(earlier) => earlier.intended,
                    Intent::First => None,
                };
                Ok(Started {
                    build: found,
                    adopted: intended,
                    shadow: false,
                })
            }
            None => {
                let started = self.backend.start(request).await.map_err(backend_error)?;
                self.fault.reached(FaultPoint::AfterStart);
                Ok(Started {
                    build: started,
                    adopted: None,
                    shadow: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_mode_spares_the_repositories_cut_over() {
        let scope = ShadowScope::new(Mode::Shadow, &["PRX/cut-over".to_owned()]);
        assert!(scope.shadows("PRX/other"));
        assert!(!scope.shadows("PRX/cut-over"));
        assert!(!scope.shadows("prx/Cut-Over"));
        let live = ShadowScope::new(Mode::Live, &["PRX/cut-over".to_owned()]);
        assert!(!live.shadows("PRX/other"));
        assert!(is_shadow_build("shadow:req-1"));
        assert!(!is_shadow_build("infrastructure-ci-Runner2:shadow"));
        assert!(!is_shadow_build("shadowy:1"));
    }

    #[test]
    fn an_attempt_looks_first_after_an_earlier_intent_or_its_own_stall() {
        let t = 1_800_000_000;
        assert_eq!(look_first(&Intent::First, t, t + 1), None, "the usual case");
        assert_eq!(look_first(&Intent::First, t, t + STALLED_AFTER_SECS), None);
        let stalled = look_first(&Intent::First, t, t + STALLED_AFTER_SECS + 1).unwrap();
        assert_eq!(stalled.unix_timestamp(), t - FIND_CLOCK_SLACK_SECS);
        let earlier = Intent::Earlier(StartIntent {
            request_id: "r".into(),
            at_unix: t - 3600,
            intended: None,
        });
        let since = look_first(&earlier, t, t).unwrap();
        assert_eq!(since.unix_timestamp(), t - 3600 - FIND_CLOCK_SLACK_SECS);
        let ancient = Intent::Earlier(StartIntent {
            request_id: "r".into(),
            at_unix: i64::MIN,
            intended: None,
        });
        assert_eq!(look_first(&ancient, t, t), Some(OffsetDateTime::UNIX_EPOCH));
    }
}
