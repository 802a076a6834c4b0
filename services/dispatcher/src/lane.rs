//! Superseded builds, the pure part: the record kept per ordering key (the builds of its latest
//! dispatched push, and older builds still to stop) and how a newly dispatched push changes it.
//!
//! Invariants: a push only ever stops builds of pushes with a smaller sequence (a redelivered
//! old webhook never stops newer builds); a push that finds a newer one already recorded is
//! itself superseded. The record is written with compare-and-set (see `store`), so concurrent
//! dispatches of one key (consumer concurrency, several replicas) cannot lose a build.

use prx_ci_proto::v1;
use serde::{Deserialize, Serialize};

/// A build as the lane record keeps it (enough to stop it and to name it in `BuildCancelled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightBuild {
    pub build_id: String,
    pub build_request_id: String,
    pub repository: String,
    pub commit: String,
    /// Proto enum value of the architecture.
    pub architecture: i32,
    pub backend: String,
    pub project: String,
    pub region: String,
    pub log_url: String,
    /// Push sequence of the push that requested it.
    pub push_sequence: u64,
    /// Correlation id (GitHub delivery) of the webhook that requested it.
    #[serde(default)]
    pub correlation_id: String,
}

impl InflightBuild {
    pub fn from_build_ref(build: &v1::BuildRef, push_sequence: u64, correlation_id: &str) -> Self {
        Self {
            correlation_id: correlation_id.to_owned(),
            build_id: build.build_id.clone(),
            build_request_id: build.build_request_id.clone(),
            repository: build.repository.clone(),
            commit: build.commit.clone(),
            architecture: build.architecture,
            backend: build.backend.clone(),
            project: build.project.clone(),
            region: build.region.clone(),
            log_url: build.log_url.clone(),
            push_sequence,
        }
    }

    pub fn to_build_ref(&self) -> v1::BuildRef {
        v1::BuildRef {
            build_id: self.build_id.clone(),
            build_request_id: self.build_request_id.clone(),
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            architecture: self.architecture,
            backend: self.backend.clone(),
            project: self.project.clone(),
            region: self.region.clone(),
            log_url: self.log_url.clone(),
        }
    }
}

/// A dispatched push of one ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// Stream sequence of its webhook in `PRX_WEBHOOKS`.
    pub sequence: u64,
    pub commit: String,
    /// Event id of its webhook.
    pub event_id: String,
}

/// The record of one ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// The latest dispatched push.
    pub push: Push,
    /// Its builds.
    pub builds: Vec<InflightBuild>,
    /// Builds of older pushes that still have to be stopped (a crash between recording the
    /// newer push and stopping them must not forget them).
    #[serde(default)]
    pub to_stop: Vec<InflightBuild>,
}

/// What recording a push does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneUpdate {
    /// The push is (still) the latest: write `state`, then stop `state.to_stop`.
    Latest(LaneState),
    /// A newer push is already recorded: this push's builds are superseded by it.
    Superseded { by: Push },
}

/// How recording `push` with `builds` changes `current`.
pub fn record_push(
    current: Option<&LaneState>,
    push: &Push,
    builds: &[InflightBuild],
) -> LaneUpdate {
    match current {
        None => LaneUpdate::Latest(LaneState {
            push: push.clone(),
            builds: builds.to_vec(),
            to_stop: Vec::new(),
        }),
        Some(state) if state.push.sequence > push.sequence => LaneUpdate::Superseded {
            by: state.push.clone(),
        },
        Some(state) if state.push.sequence == push.sequence => {
            // The same push again (another architecture, a redelivery): merge.
            let mut next = state.clone();
            for build in builds {
                if !next.builds.iter().any(|b| b.build_id == build.build_id) {
                    next.builds.push(build.clone());
                }
            }
            LaneUpdate::Latest(next)
        }
        Some(state) => {
            let mut to_stop = state.to_stop.clone();
            for build in &state.builds {
                if !to_stop.iter().any(|b| b.build_id == build.build_id) {
                    to_stop.push(build.clone());
                }
            }
            // Never stop a build of this push or a newer one.
            to_stop.retain(|b| b.push_sequence < push.sequence);
            LaneUpdate::Latest(LaneState {
                push: push.clone(),
                builds: builds.to_vec(),
                to_stop,
            })
        }
    }
}

/// The record after the builds in `done` were handled (stopped, found finished, or unknown).
pub fn without_stopped(state: &LaneState, done: &[String]) -> LaneState {
    let mut next = state.clone();
    next.to_stop.retain(|b| !done.contains(&b.build_id));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(sequence: u64) -> Push {
        Push {
            sequence,
            commit: format!("c{sequence}"),
            event_id: format!("e{sequence}"),
        }
    }

    fn build(id: &str, sequence: u64) -> InflightBuild {
        InflightBuild {
            build_id: id.into(),
            build_request_id: format!("r-{id}"),
            repository: "PRX/app".into(),
            commit: format!("c{sequence}"),
            architecture: 1,
            backend: "fake".into(),
            project: "p".into(),
            region: String::new(),
            log_url: String::new(),
            push_sequence: sequence,
            correlation_id: String::new(),
        }
    }

    fn latest(update: LaneUpdate) -> LaneState {
        match update {
            LaneUpdate::Latest(state) => state,
            LaneUpdate::Superseded { by } => panic!("superseded by {by:?}"),
        }
    }

    #[test]
    fn a_newer_push_takes_over_and_stops_the_older_builds() {
        let first = latest(record_push(None, &push(3), &[build("a", 3)]));
        assert!(first.to_stop.is_empty());
        let second = latest(record_push(Some(&first), &push(5), &[build("b", 5)]));
        assert_eq!(second.push, push(5));
        assert_eq!(second.builds, [build("b", 5)]);
        assert_eq!(second.to_stop, [build("a", 3)]);
        // A third push before the second's stops were done inherits them.
        let third = latest(record_push(Some(&second), &push(9), &[build("c", 9)]));
        assert_eq!(third.to_stop, [build("a", 3), build("b", 5)]);
        let cleaned = without_stopped(&third, &["a".into()]);
        assert_eq!(cleaned.to_stop, [build("b", 5)]);
    }

    #[test]
    fn an_older_push_never_touches_newer_builds() {
        let state = latest(record_push(None, &push(9), &[build("c", 9)]));
        assert_eq!(
            record_push(Some(&state), &push(5), &[build("b", 5)]),
            LaneUpdate::Superseded { by: push(9) }
        );
    }

    #[test]
    fn the_same_push_merges_its_builds() {
        let state = latest(record_push(None, &push(4), &[build("x86", 4)]));
        let merged = latest(record_push(Some(&state), &push(4), &[build("arm", 4)]));
        assert_eq!(merged.builds, [build("x86", 4), build("arm", 4)]);
        let again = latest(record_push(Some(&merged), &push(4), &[build("arm", 4)]));
        assert_eq!(again, merged);
        assert!(again.to_stop.is_empty());
    }
}
