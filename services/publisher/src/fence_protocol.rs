//! The fence protocol of one publication as a state machine without I/O: every read, sleep,
//! compare-and-set, store read and store write is a [`Step`] the driver performs and answers
//! with an [`Input`]. [`crate::fence_store::KvFence`] drives it over NATS KV and the real
//! store; [`crate::simulation`] drives the very same machine over an in-memory KV and SSM in
//! virtual time. Decisions on records are [`crate::fence`]'s. See `docs/ordering.md`.

use std::time::Duration;

use crate::fence::{self, Claim, Decision, FenceRecord, Publication, Stale};
use crate::parameter_store::StoreError;

/// How the fence behaves.
#[derive(Debug, Clone, Copy)]
pub struct FenceSettings {
    /// How long a claim protects a write. The owner never starts a write it cannot finish
    /// within it; others take over only after watching a claim unchanged for this long.
    pub lease: Duration,
    /// Upper bound of one store write (throttling retries included).
    pub write_timeout: Duration,
    /// How often a replica waiting on another's claim re-reads the record.
    pub poll_interval: Duration,
}

/// What happened to one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Written now (`again` false), or already written by this very build before (`again`
    /// true: a redelivery; nothing written this time).
    Applied {
        version: i64,
        again: bool,
    },
    Skipped(Stale),
}

/// Why the fence could not decide or write (all worth retrying, except `Store` with a
/// non-retryable refusal).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fence record of {parameter}: {source:#}")]
    Kv {
        parameter: String,
        source: anyhow::Error,
    },
    #[error("writing {parameter}: {source}")]
    Store {
        parameter: String,
        source: StoreError,
    },
    #[error("lost the claim on {parameter} before writing (lease ran out); nothing written")]
    ClaimLost { parameter: String },
}

/// The read-only look before the artifact check: `Some` when `record` already settles
/// `incoming` (stale, or already written by this build). A claim in flight settles nothing.
pub fn settled(record: &FenceRecord, incoming: &Publication) -> Option<FenceOutcome> {
    match fence::decide(record, incoming) {
        Decision::Skip(stale) => Some(FenceOutcome::Skipped(stale)),
        Decision::AlreadyWritten { version } => Some(FenceOutcome::Applied {
            version,
            again: true,
        }),
        Decision::Wait { .. } | Decision::Claim => None,
    }
}

/// Which compare-and-set a [`Step::Cas`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasKind {
    /// Placing our claim.
    Claim,
    /// Resolving an abandoned claim; `landed` when its value was found in the store.
    Resolve { abandoned: Claim, landed: bool },
}

/// A read-modify-compare-and-set of the record (retried over unrelated changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Our write landed: mark it written, drop our claim.
    Mark { token: String, version: i64 },
    /// We give up without writing: drop our claim.
    Release { token: String },
}

impl Change {
    /// The record after the change, `None` when our claim is gone (nothing to change).
    pub fn apply(&self, record: &FenceRecord, now_rfc3339: &str) -> Option<FenceRecord> {
        match self {
            Self::Mark { token, version } => {
                fence::after_write(record, token, *version, now_rfc3339)
            }
            Self::Release { token } => fence::after_release(record, token),
        }
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Read the fence record → [`Input::Record`].
    Read,
    /// Sleep this long → [`Input::Resumed`].
    Sleep(Duration),
    /// Read the parameter's current value from the store → [`Input::Stored`].
    StoreGet,
    /// Compare-and-set the record at `revision` → [`Input::Cas`].
    Cas {
        record: Box<FenceRecord>,
        revision: u64,
        kind: CasKind,
    },
    /// Write the publication's value to the store, abandoned after `timeout` → [`Input::Put`].
    Put { timeout: Duration },
    /// Modify the record by `Change::apply` → [`Input::Modified`] (a mark whose claim is gone
    /// is the residual race of `docs/ordering.md`: the driver reports it).
    Modify(Change),
    /// Finished.
    Done(Result<FenceOutcome, FenceError>),
}

/// The driver's answer to the last [`Step`].
#[derive(Debug)]
pub enum Input {
    /// The first call.
    Start,
    Record {
        record: Box<FenceRecord>,
        revision: u64,
    },
    Resumed,
    /// The store's value and version (`None`: no such parameter).
    Stored(Option<(String, i64)>),
    /// Whether the compare-and-set was applied.
    Cas(bool),
    Put(PutResult),
    Modified,
}

/// How a store write ended.
#[derive(Debug)]
pub enum PutResult {
    Written(i64),
    Failed(StoreError),
    /// No answer within the step's timeout (the write future was dropped).
    TimedOut,
}

#[derive(Debug)]
enum State {
    Start,
    Reading,
    Sleeping,
    Resolving {
        record: Box<FenceRecord>,
        revision: u64,
    },
    ResolveCas,
    Claiming {
        claimed_at: Duration,
    },
    Rechecking {
        claimed_at: Duration,
    },
    Writing,
    Marking {
        version: i64,
    },
    Releasing {
        then: FenceError,
    },
    Done,
}

/// One publication going through the fence: feed it the answer to each [`Step`] with the
/// driver's monotonic time (any origin, never going back) and wall time (for people).
#[derive(Debug)]
pub struct Attempt {
    parameter: String,
    incoming: Publication,
    settings: FenceSettings,
    /// Unique per attempt: a claim is "mine" only if the token is.
    token: String,
    state: State,
    /// (token, first seen): how long this attempt has watched the current foreign claim.
    observed: Option<(String, Duration)>,
    waits: u64,
}

impl Attempt {
    /// `token` must be unique (a fresh random id per attempt).
    pub fn new(
        parameter: &str,
        incoming: Publication,
        settings: FenceSettings,
        token: String,
    ) -> Self {
        Self {
            parameter: parameter.to_owned(),
            incoming,
            settings,
            token,
            state: State::Start,
            observed: None,
            waits: 0,
        }
    }

    pub fn incoming(&self) -> &Publication {
        &self.incoming
    }

    /// Foreign claims newly waited on since the last call (for the waits counter).
    pub fn take_waits(&mut self) -> u64 {
        std::mem::take(&mut self.waits)
    }

    fn claim_lost(&self) -> FenceError {
        FenceError::ClaimLost {
            parameter: self.parameter.clone(),
        }
    }

    fn store_error(&self, source: StoreError) -> FenceError {
        FenceError::Store {
            parameter: self.parameter.clone(),
            source,
        }
    }

    fn read(&mut self) -> Step {
        self.state = State::Reading;
        Step::Read
    }

    fn done(&mut self, result: Result<FenceOutcome, FenceError>) -> Step {
        self.state = State::Done;
        Step::Done(result)
    }

    /// The next step, given the answer to the previous one. `now` is the driver's monotonic
    /// clock when the answer arrived.
    pub fn step(&mut self, input: Input, now: Duration, now_rfc3339: &str) -> Step {
        match (std::mem::replace(&mut self.state, State::Done), input) {
            (State::Start, Input::Start)
            | (State::Sleeping, Input::Resumed)
            | (State::ResolveCas, Input::Cas(_))
            | (State::Claiming { .. }, Input::Cas(false)) => self.read(),
            (State::Reading, Input::Record { record, revision }) => {
                self.on_record(record, revision, now, now_rfc3339)
            }
            (State::Resolving { record, revision }, Input::Stored(current)) => {
                // Abandoned: its owner can no longer be writing. Did its write land?
                let resolved = fence::resolve_abandoned(
                    &record,
                    current.as_ref().map(|(v, n)| (v.as_str(), *n)),
                    now_rfc3339,
                );
                let landed = resolved.written != record.written;
                let abandoned = record.claim.clone().unwrap_or_else(|| Claim {
                    publication: self.incoming.clone(),
                    token: String::new(),
                    at: String::new(),
                    lease_ms: 0,
                });
                self.observed = None;
                self.state = State::ResolveCas;
                Step::Cas {
                    record: Box::new(resolved),
                    revision,
                    kind: CasKind::Resolve { abandoned, landed },
                }
            }
            (State::Claiming { claimed_at }, Input::Cas(true)) => {
                // Re-check: still ours, and time left for a whole write inside the lease.
                self.state = State::Rechecking { claimed_at };
                Step::Read
            }
            (State::Rechecking { claimed_at }, Input::Record { record, .. }) => {
                if record.claim.as_ref().is_none_or(|c| c.token != self.token) {
                    return self.done(Err(self.claim_lost()));
                }
                let lease_left = self
                    .settings
                    .lease
                    .saturating_sub(now.saturating_sub(claimed_at));
                if lease_left <= self.settings.write_timeout {
                    self.state = State::Releasing {
                        then: self.claim_lost(),
                    };
                    return Step::Modify(Change::Release {
                        token: self.token.clone(),
                    });
                }
                self.state = State::Writing;
                Step::Put {
                    timeout: self.settings.write_timeout,
                }
            }
            (State::Writing, Input::Put(result)) => match result {
                PutResult::Written(version) => {
                    self.state = State::Marking { version };
                    Step::Modify(Change::Mark {
                        token: self.token.clone(),
                        version,
                    })
                }
                PutResult::Failed(source @ StoreError::NotWritten { .. }) => {
                    // Definitely not written: free the parameter at once.
                    self.state = State::Releasing {
                        then: self.store_error(source),
                    };
                    Step::Modify(Change::Release {
                        token: self.token.clone(),
                    })
                }
                // Maybe written: keep the claim; whoever resolves it after the lease checks
                // the store (the redelivery of this build, or a newer push).
                PutResult::Failed(source @ StoreError::Unknown { .. }) => {
                    let err = self.store_error(source);
                    self.done(Err(err))
                }
                PutResult::TimedOut => {
                    let err = self.store_error(StoreError::Unknown {
                        message: format!("no answer within {:?}", self.settings.write_timeout),
                    });
                    self.done(Err(err))
                }
            },
            (State::Marking { version }, Input::Modified) => self.done(Ok(FenceOutcome::Applied {
                version,
                again: false,
            })),
            (State::Releasing { then }, Input::Modified) => self.done(Err(then)),
            (state, input) => {
                let err = FenceError::Kv {
                    parameter: self.parameter.clone(),
                    source: anyhow::anyhow!(
                        "fence protocol misuse: {input:?} does not answer the step of {state:?}"
                    ),
                };
                self.done(Err(err))
            }
        }
    }

    fn on_record(
        &mut self,
        record: Box<FenceRecord>,
        revision: u64,
        now: Duration,
        now_rfc3339: &str,
    ) -> Step {
        if let Some(claim) = &record.claim {
            let lease = Duration::from_millis(claim.lease_ms);
            let since = match &self.observed {
                Some((token, since)) if *token == claim.token => *since,
                _ => {
                    self.waits += 1;
                    self.observed = Some((claim.token.clone(), now));
                    now
                }
            };
            if now.saturating_sub(since) < lease {
                self.state = State::Sleeping;
                return Step::Sleep(self.settings.poll_interval);
            }
            self.state = State::Resolving { record, revision };
            return Step::StoreGet;
        }
        match fence::decide(&record, &self.incoming) {
            Decision::Skip(stale) => self.done(Ok(FenceOutcome::Skipped(stale))),
            Decision::AlreadyWritten { version } => self.done(Ok(FenceOutcome::Applied {
                version,
                again: true,
            })),
            Decision::Wait { .. } => self.read(),
            Decision::Claim => {
                let lease_ms = u64::try_from(self.settings.lease.as_millis()).unwrap_or(u64::MAX);
                let claimed =
                    fence::with_claim(&record, &self.incoming, &self.token, lease_ms, now_rfc3339);
                // Taken before the claim is visible to anyone: the owner's deadline is never
                // later than what an observer measures.
                self.state = State::Claiming { claimed_at: now };
                Step::Cas {
                    record: Box::new(claimed),
                    revision,
                    kind: CasKind::Claim,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::Position;

    const SETTINGS: FenceSettings = FenceSettings {
        lease: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_secs(1),
    };

    fn publication(seq: u64) -> Publication {
        Publication {
            position: Position::new(seq, true),
            value: format!("v{seq}"),
            commit: format!("c{seq}"),
            build_id: format!("b{seq}"),
            ordering_key: "PRX/app@main".into(),
            architecture: "x86_64".into(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn record(record: FenceRecord, revision: u64) -> Input {
        Input::Record {
            record: Box::new(record),
            revision,
        }
    }

    /// Starts an attempt of `seq` and places its claim on an empty record; returns the record
    /// with the claim.
    fn claimed(attempt: &mut Attempt, at: Duration) -> FenceRecord {
        assert!(matches!(attempt.step(Input::Start, at, "t"), Step::Read));
        let Step::Cas {
            record: claim,
            revision: 0,
            kind: CasKind::Claim,
        } = attempt.step(record(FenceRecord::default(), 0), at, "t")
        else {
            panic!("expected a claim");
        };
        assert!(matches!(
            attempt.step(Input::Cas(true), at, "t"),
            Step::Read
        ));
        *claim
    }

    #[test]
    fn a_publication_claims_rechecks_writes_and_marks() {
        let mut attempt = Attempt::new("/p", publication(3), SETTINGS, "tok".into());
        let claim = claimed(&mut attempt, secs(0));
        assert!(matches!(
            attempt.step(record(claim.clone(), 1), secs(1), "t"),
            Step::Put { timeout } if timeout == SETTINGS.write_timeout
        ));
        let Step::Modify(change) = attempt.step(Input::Put(PutResult::Written(4)), secs(2), "t")
        else {
            panic!("expected the mark");
        };
        let marked = change.apply(&claim, "t").unwrap();
        assert!(marked.claim.is_none());
        assert_eq!(marked.written.unwrap().publication, publication(3));
        assert!(matches!(
            attempt.step(Input::Modified, secs(2), "t"),
            Step::Done(Ok(FenceOutcome::Applied {
                version: 4,
                again: false
            }))
        ));
    }

    #[test]
    fn a_claim_without_a_whole_write_left_in_its_lease_is_released_unwritten() {
        let mut attempt = Attempt::new("/p", publication(3), SETTINGS, "tok".into());
        let claim = claimed(&mut attempt, secs(0));
        // The re-check's answer arrives 50 s after the claim: 10 s left, not more than a write.
        assert!(matches!(
            attempt.step(record(claim, 1), secs(50), "t"),
            Step::Modify(Change::Release { .. })
        ));
        assert!(matches!(
            attempt.step(Input::Modified, secs(50), "t"),
            Step::Done(Err(FenceError::ClaimLost { .. }))
        ));
    }

    #[test]
    fn refused_writes_release_the_claim_and_unknown_ones_keep_it() {
        let refused = StoreError::NotWritten {
            message: "no".into(),
            retryable: true,
        };
        let mut attempt = Attempt::new("/p", publication(3), SETTINGS, "tok".into());
        let claim = claimed(&mut attempt, secs(0));
        attempt.step(record(claim.clone(), 1), secs(0), "t");
        assert!(matches!(
            attempt.step(Input::Put(PutResult::Failed(refused)), secs(1), "t"),
            Step::Modify(Change::Release { .. })
        ));

        for answer in [
            PutResult::TimedOut,
            PutResult::Failed(StoreError::Unknown {
                message: "reset".into(),
            }),
        ] {
            let mut attempt = Attempt::new("/p", publication(3), SETTINGS, "tok".into());
            let claim = claimed(&mut attempt, secs(0));
            attempt.step(record(claim, 1), secs(0), "t");
            assert!(matches!(
                attempt.step(Input::Put(answer), secs(11), "t"),
                Step::Done(Err(FenceError::Store {
                    source: StoreError::Unknown { .. },
                    ..
                }))
            ));
        }
    }

    #[test]
    fn a_foreign_claim_is_waited_on_for_a_full_lease_then_resolved_from_the_store() {
        let mut owner = Attempt::new("/p", publication(3), SETTINGS, "owner".into());
        let claim = claimed(&mut owner, secs(0));
        let mut other = Attempt::new("/p", publication(5), SETTINGS, "other".into());
        other.step(Input::Start, secs(10), "t");
        // First seen at 10 s: waited on until 70 s on this attempt's own clock.
        for now in [10, 40, 69] {
            assert!(matches!(
                other.step(record(claim.clone(), 1), secs(now), "t"),
                Step::Sleep(_)
            ));
            assert!(matches!(
                other.step(Input::Resumed, secs(now), "t"),
                Step::Read
            ));
        }
        assert_eq!(other.take_waits(), 1);
        assert!(matches!(
            other.step(record(claim.clone(), 1), secs(70), "t"),
            Step::StoreGet
        ));
        // The owner's value is in the store: its write counts as landed.
        let Step::Cas {
            record: resolved,
            revision: 1,
            kind: CasKind::Resolve { landed: true, .. },
        } = other.step(Input::Stored(Some(("v3".into(), 7))), secs(70), "t")
        else {
            panic!("expected the resolution");
        };
        assert!(resolved.claim.is_none());
        assert_eq!(resolved.written.as_ref().unwrap().version, 7);
        assert!(matches!(
            other.step(Input::Cas(true), secs(70), "t"),
            Step::Read
        ));
        // Then it decides afresh and claims above the floor.
        assert!(matches!(
            other.step(record(*resolved, 2), secs(71), "t"),
            Step::Cas {
                kind: CasKind::Claim,
                ..
            }
        ));
    }

    #[test]
    fn an_answer_to_the_wrong_step_is_an_error_not_a_write() {
        let mut attempt = Attempt::new("/p", publication(3), SETTINGS, "tok".into());
        assert!(matches!(
            attempt.step(Input::Put(PutResult::Written(1)), secs(0), "t"),
            Step::Done(Err(FenceError::Kv { .. }))
        ));
    }
}
