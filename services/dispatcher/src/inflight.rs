//! The builds in flight per ordering key, the pure part: the record (the builds of the latest
//! dispatched push, and older builds still to stop) and how a newly dispatched push changes it.
//!
//! Invariants: a push only ever stops builds of pushes with a smaller sequence (a redelivered
//! old webhook never stops newer builds); a push that finds a newer one already recorded is
//! itself superseded. The record is written with compare-and-set (see `dispatch_store`), so concurrent
//! dispatches of one key (consumer concurrency, several replicas) cannot lose a build.

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use serde::{Deserialize, Serialize};

/// A build as the in-flight record keeps it (enough to stop it and to name it in
/// `BuildCancelled`): the proto [`v1::BuildRef`], flattened so the stored JSON keeps the
/// fields at the top level as it always had, plus what the build's push says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InflightBuild {
    #[serde(flatten)]
    pub build: v1::BuildRef,
    /// Push sequence of the push that requested it.
    pub push_sequence: u64,
    /// Correlation id (GitHub delivery) of the webhook that requested it.
    #[serde(default)]
    pub correlation_id: String,
}

impl InflightBuild {
    /// The build a `BuildRequested` envelope announced (`None` for any other event).
    pub fn requested_in(envelope: &Envelope) -> Option<Self> {
        match &envelope.payload {
            Some(Payload::BuildRequested(requested)) => {
                requested.build.as_ref().map(|build| Self {
                    build: build.clone(),
                    push_sequence: envelope.push_sequence,
                    correlation_id: envelope.correlation_id.clone(),
                })
            }
            _ => None,
        }
    }

    /// The backend's id of the build.
    pub fn build_id(&self) -> &str {
        &self.build.build_id
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

impl Push {
    /// The push of `commit` whose first announced build is `first`: from the recorded envelope,
    /// so a delivery stored again is still the original push.
    pub fn announced_in(first: &Envelope, commit: &str) -> Self {
        Self {
            sequence: first.push_sequence,
            commit: commit.to_owned(),
            event_id: first.causation_id.clone(),
        }
    }
}

/// The record of one ordering key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InflightBuilds {
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
#[derive(Debug, Clone, PartialEq)]
pub enum InflightUpdate {
    /// The push is (still) the latest: write the record, then stop its `to_stop`.
    Latest(InflightBuilds),
    /// A newer push is already recorded: this push's builds are superseded by it.
    Superseded { by: Push },
}

/// How recording `push` with `builds` changes `current`.
pub fn record_push(
    current: Option<&InflightBuilds>,
    push: &Push,
    builds: &[InflightBuild],
) -> InflightUpdate {
    match current {
        None => InflightUpdate::Latest(InflightBuilds {
            push: push.clone(),
            builds: builds.to_vec(),
            to_stop: Vec::new(),
        }),
        Some(state) if state.push.sequence > push.sequence => InflightUpdate::Superseded {
            by: state.push.clone(),
        },
        Some(state) if state.push.sequence == push.sequence => {
            // The same push again (another architecture, a redelivery): merge.
            let mut next = state.clone();
            for build in builds {
                if !next.builds.iter().any(|b| b.build_id() == build.build_id()) {
                    next.builds.push(build.clone());
                }
            }
            InflightUpdate::Latest(next)
        }
        Some(state) => {
            let mut to_stop = state.to_stop.clone();
            for build in &state.builds {
                if !to_stop.iter().any(|b| b.build_id() == build.build_id()) {
                    to_stop.push(build.clone());
                }
            }
            // Never stop a build of this push or a newer one.
            to_stop.retain(|b| b.push_sequence < push.sequence);
            InflightUpdate::Latest(InflightBuilds {
                push: push.clone(),
                builds: builds.to_vec(),
                to_stop,
            })
        }
    }
}

/// The record after the builds in `done` were handled (stopped, found finished, or unknown).
pub fn without_stopped(state: &InflightBuilds, done: &[String]) -> InflightBuilds {
    let mut next = state.clone();
    next.to_stop
        .retain(|b| !done.iter().any(|id| id == b.build_id()));
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
            build: v1::BuildRef {
                build_id: id.into(),
                build_request_id: format!("r-{id}"),
                repository: "PRX/app".into(),
                commit: format!("c{sequence}"),
                architecture: 1,
                backend: "fake".into(),
                project: "p".into(),
                region: String::new(),
                log_url: String::new(),
                retry_of: String::new(),
                shadowed: false,
            },
            push_sequence: sequence,
            correlation_id: String::new(),
        }
    }

    fn latest(update: InflightUpdate) -> InflightBuilds {
        match update {
            InflightUpdate::Latest(state) => state,
            InflightUpdate::Superseded { by } => panic!("superseded by {by:?}"),
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
            InflightUpdate::Superseded { by: push(9) }
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

    /// A record exactly as the dispatcher wrote it before `InflightBuild` carried a
    /// `BuildRef` (then `lane::LaneState`, serialized by the code of commit b1ec1a5).
    const RECORD_WRITTEN_BEFORE: &str = r#"{"push":{"sequence":9,"commit":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","event_id":"ev-9"},"builds":[{"build_id":"infrastructure-ci-Runner2:aaaa","build_request_id":"req-infrastructure-ci-Runner2:aaaa","repository":"PRX/app","commit":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","architecture":1,"backend":"codebuild","project":"infrastructure-ci-Runner2","region":"us-east-1","log_url":"https://logs/x","push_sequence":9,"correlation_id":"72d3162e-cc78"}],"to_stop":[{"build_id":"infrastructure-ci-ArmRunner:bbbb","build_request_id":"req-infrastructure-ci-ArmRunner:bbbb","repository":"PRX/app","commit":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","architecture":2,"backend":"codebuild","project":"infrastructure-ci-Runner2","region":"us-east-1","log_url":"https://logs/x","push_sequence":5,"correlation_id":"72d3162e-cc78"}]}"#;

    #[test]
    fn records_written_before_read_and_write_back_byte_for_byte() {
        let record: InflightBuilds = serde_json::from_str(RECORD_WRITTEN_BEFORE).unwrap();
        assert_eq!(
            record.push,
            Push {
                sequence: 9,
                commit: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
                event_id: "ev-9".into(),
            }
        );
        let [current] = record.builds.as_slice() else {
            panic!("one build expected: {record:?}");
        };
        assert_eq!(current.build_id(), "infrastructure-ci-Runner2:aaaa");
        assert_eq!(current.build.architecture(), v1::Architecture::X8664);
        assert_eq!(current.build.log_url, "https://logs/x");
        assert_eq!(
            (current.push_sequence, current.correlation_id.as_str()),
            (9, "72d3162e-cc78")
        );
        let [older] = record.to_stop.as_slice() else {
            panic!("one build to stop expected: {record:?}");
        };
        assert_eq!(
            older.build.build_request_id,
            "req-infrastructure-ci-ArmRunner:bbbb"
        );
        assert_eq!(older.build.architecture(), v1::Architecture::Aarch64);
        assert_eq!(older.push_sequence, 5);
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            RECORD_WRITTEN_BEFORE
        );
    }

    #[test]
    fn records_of_before_correlation_ids_still_read() {
        let build = r#"{"build_id":"b","build_request_id":"r","repository":"PRX/app","commit":"c","architecture":1,"backend":"local","project":"p","region":"","log_url":"","push_sequence":3}"#;
        let build: InflightBuild = serde_json::from_str(build).unwrap();
        assert_eq!((build.build_id(), build.push_sequence), ("b", 3));
        assert_eq!(build.correlation_id, "");
    }
}
