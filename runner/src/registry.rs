//! The builds this process is running, by build id, and the stop/finish handshake.
//!
//! Between `stop` and a build finishing on its own exactly one wins, and the final status says
//! which.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prx_ci_shared::codebuild::backend::{StartedBuild, StopOutcome};
use tokio_util::sync::CancellationToken;

/// A build this process is running.
#[derive(Debug)]
pub struct BuildControl {
    pub started: StartedBuild,
    /// Cancelled by `stop` (and by shutdown, its parent).
    pub stop: CancellationToken,
    /// (finished, stop requested): finished once the build's processes are gone (`stop` then
    /// answers `AlreadyFinished`); stop requested by `stop`, not by shutdown.
    state: Mutex<(bool, bool)>,
}

impl BuildControl {
    pub fn new(started: StartedBuild, stop: CancellationToken) -> Self {
        Self {
            started,
            stop,
            state: Mutex::new((false, false)),
        }
    }

    /// Asks the build to stop, unless it already finished.
    pub fn request_stop(&self) -> StopOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 {
            return StopOutcome::AlreadyFinished;
        }
        state.1 = true;
        self.stop.cancel();
        StopOutcome::Stopped
    }

    /// Whether `stop` asked the build to stop (a shutdown does not count).
    pub fn stop_requested(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Marks the build finished (its processes are gone); returns whether `stop` asked it to
    /// stop before that: a caller that was answered `Stopped` must see `STOPPED` even if the
    /// build had ended on its own meanwhile. A shutdown is not a stop (nobody was answered).
    pub fn finish(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = true;
        state.1
    }
}

/// The running builds, by build id.
#[derive(Debug, Default)]
pub struct Registry {
    builds: Mutex<HashMap<String, Arc<BuildControl>>>,
}

impl Registry {
    /// Registers the build `control` describes, unless one with its id is registered or
    /// `already_started` says it ran before; returns it if registered.
    pub fn register(
        &self,
        control: BuildControl,
        already_started: impl FnOnce() -> bool,
    ) -> Option<Arc<BuildControl>> {
        let mut builds = self.builds.lock().unwrap_or_else(PoisonError::into_inner);
        let build_id = control.started.build_id.clone();
        if builds.contains_key(&build_id) || already_started() {
            return None;
        }
        let control = Arc::new(control);
        builds.insert(build_id, control.clone());
        Some(control)
    }

    pub fn get(&self, build_id: &str) -> Option<Arc<BuildControl>> {
        self.builds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(build_id)
            .cloned()
    }

    pub fn remove(&self, build_id: &str) {
        self.builds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(build_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(build_id: &str) -> BuildControl {
        BuildControl::new(
            StartedBuild {
                build_id: build_id.to_owned(),
                backend: "local".to_owned(),
                project: "local".to_owned(),
                region: String::new(),
                log_url: String::new(),
            },
            CancellationToken::new(),
        )
    }

    #[test]
    fn a_stop_before_the_end_cancels_the_build_and_makes_it_stopped() {
        let control = control("local:a");
        assert_eq!(control.request_stop(), StopOutcome::Stopped);
        assert!(control.stop.is_cancelled());
        assert!(control.finish(), "the build learns it was stopped");
    }

    #[test]
    fn a_stop_after_the_end_finds_nothing_to_stop() {
        let control = control("local:a");
        assert!(!control.finish());
        assert_eq!(control.request_stop(), StopOutcome::AlreadyFinished);
        assert!(!control.stop.is_cancelled());
    }

    #[test]
    fn a_shutdown_interrupts_the_build_but_is_not_a_stop() {
        let shutdown = CancellationToken::new();
        let control = BuildControl::new(control("local:a").started, shutdown.child_token());
        shutdown.cancel();
        assert!(control.stop.is_cancelled(), "the build is interrupted");
        assert!(!control.stop_requested());
        assert!(!control.finish(), "but nobody was answered Stopped");
    }

    #[test]
    fn a_build_id_is_registered_once() {
        let registry = Registry::default();
        let first = registry.register(control("local:a"), || false).unwrap();
        assert!(registry.register(control("local:a"), || false).is_none());
        assert!(Arc::ptr_eq(&registry.get("local:a").unwrap(), &first));
        registry.remove("local:a");
        assert!(registry.get("local:a").is_none());
        assert!(registry.register(control("local:a"), || false).is_some());
    }

    #[test]
    fn a_build_that_ran_before_is_not_registered() {
        let registry = Registry::default();
        assert!(registry.register(control("local:a"), || true).is_none());
        assert!(registry.get("local:a").is_none());
    }

    #[test]
    fn the_past_is_only_consulted_for_unknown_ids() {
        let registry = Registry::default();
        registry.register(control("local:a"), || false).unwrap();
        let mut asked = false;
        assert!(
            registry
                .register(control("local:a"), || {
                    asked = true;
                    false
                })
                .is_none()
        );
        assert!(!asked);
    }
}
