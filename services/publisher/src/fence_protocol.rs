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
