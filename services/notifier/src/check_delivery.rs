//! GitHub check-run delivery (App mode): one queue of build keys in which a build already
//! waiting is not queued again; its worker loads the build's newest record, renders the run
//! ([`crate::check_run`]) and writes it through the check-run sink, within its write budget.
//! A burst of events of one build therefore goes out as one write, with the newest state.
//!
//! The build's record keeps the run's id, so every later write (and every write after a
//! restart) updates the same run; a creation whose id was never stored (a crash between the
//! write and the record) is found again by its `external_id` before another is created.
//!
//! Replicas take the run's lease in the record before writing (compare-and-set on its KV
//! revision, [`NotificationRecord::claim_check_run`]), and only while the run is behind the
//! record's view: a replica holding an older view never writes after a newer one (the newer
//! write holds the lease, and once it is recorded the older version is no longer behind).
//! The write budget is waited for before the lease is taken, so the lease covers only the
//! look-up and the write. Residual risk, as for the Slack lease: a write blocked longer than
//! `[notifier] lease` (GitHub's own retries and timeouts) lets another replica write meanwhile.

use std::sync::Arc;
use std::time::Duration;

use prx_ci_shared::kv::Modify;
use prx_ci_shared::retry::Backoff;
use time::OffsetDateTime;

use crate::check_run::{CheckRun, desired_check_run};
use crate::github_checks::CheckRunSink;
use crate::github_status::StatusError;
use crate::metrics::bump;
use crate::notification_record::{CheckRunClaim, CheckRunRecord, NotificationRecord};
use crate::service::Core;
use crate::status_delivery::retry_delay;

/// Longest wait before a failed write is tried again (unless GitHub asks for longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How often a build whose run another replica writes is looked at again.
const LEASE_POLL: Duration = Duration::from_secs(5);

/// A build whose check run waits to be written.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingCheckRun {
    attempts: u32,
}

impl Core {
    /// The check run `record`'s view calls for; `None` without check runs (token or local
    /// mode, `[notifier.checks] enabled = false`).
    fn desired_check_run(&self, record: &NotificationRecord) -> Option<CheckRun> {
        self.checks.as_ref()?;
        desired_check_run(&self.config.checks, &self.config.links, &record.view)
    }

    /// Queues the build `key` when its check run does not show its record's view yet.
    pub(crate) fn enqueue_check_run(&self, key: &str, record: &NotificationRecord) {
        if record.check_run.quiet
            || !record.check_run_dirty()
            || self.desired_check_run(record).is_none()
        {
            return;
        }
        bump(&self.stats.check_runs_requested);
        let fresh = self
            .check_queue
            .push(key.to_owned(), PendingCheckRun::default(), |_, _| {});
        if fresh {
            self.metrics.check_run_queue.inc();
        } else {
            self.metrics.check_run("coalesced");
        }
    }

    /// Writes check runs one at a time, each build's newest state.
    pub(crate) async fn check_run_worker(self: Arc<Self>) {
        let Some(sink) = self.checks.clone() else {
            return;
        };
        while let Some((key, mut pending)) = self.check_queue.pop(&self.shutdown).await {
            self.metrics.check_run_queue.dec();
            let (reason, retry_after) = match self.write_check_run(sink.as_ref(), &key).await {
                Ok(Written::Done) => continue,
                Ok(Written::Again) => {
                    // The view moved on while the run was written: write its newest state.
                    self.push_check_run(key, PendingCheckRun::default());
                    continue;
                }
                Ok(Written::Busy(wait)) => {
                    bump(&self.stats.check_runs_leased_elsewhere);
                    // Another replica writes it (and picks up what changed meanwhile); look
                    // again soon in case it died.
                    self.push_check_run_later(key, wait);
                    continue;
                }
                // Recorded on the build by `write_check_run` (it returns transient errors only).
                Err(StatusError::Permanent(_)) => continue,
                Err(StatusError::Transient {
                    reason,
                    retry_after,
                }) => (reason, retry_after),
            };
            self.metrics.check_run("failed");
            pending.attempts += 1;
            let backoff = Backoff {
                initial: Duration::from_secs(1),
                max: MAX_RETRY_DELAY,
                max_attempts: u32::MAX,
            }
            .delay(pending.attempts);
            let delay = retry_delay(backoff, retry_after);
            tracing::warn!(build = %key, reason, ?delay, "check run write failed; will retry");
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            self.metrics.check_run_queue.inc();
            // Back at the front (a newer event of the build may have queued it meanwhile).
            self.check_queue
                .push_front(key, pending, |waiting, retried| {
                    waiting.attempts = retried.attempts;
                });
        }
    }

    /// Queues build `key` again at the back (a build already waiting is not queued twice).
    fn push_check_run(&self, key: String, pending: PendingCheckRun) {
        if self.check_queue.push(key, pending, |_, _| {}) {
            self.metrics.check_run_queue.inc();
        }
    }

    /// Queues build `key` again after `wait` (unless the notifier stops first).
    fn push_check_run_later(self: &Arc<Self>, key: String, wait: Duration) {
        let core = self.clone();
        self.spawn(async move {
            tokio::select! {
                () = core.shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => core.push_check_run(key, PendingCheckRun::default()),
            }
        });
    }

    /// What [`Self::claim_check_run`] would find, from the record as read now, when it is not
    /// a claim: nothing to write ([`Written::Done`]), or another replica writes it
    /// ([`Written::Busy`]). Nothing is stored.
    async fn check_run_unclaimable(&self, key: &str) -> Result<Option<Written>, StatusError> {
        let Some((mut record, _)) = self
            .store
            .load(key)
            .await
            .map_err(|e| store_error(e.into()))?
        else {
            return Ok(Some(Written::Done));
        };
        if self.desired_check_run(&record).is_none() {
            return Ok(Some(Written::Done));
        }
        let now = OffsetDateTime::now_utc();
        Ok(
            match record.claim_check_run(&self.instance, now, now + self.config.lease) {
                Modify::Keep(CheckRunClaim::Clean) => Some(Written::Done),
                Modify::Keep(CheckRunClaim::Busy(busy)) => Some(Written::Busy(lease_poll(busy))),
                _ => None,
            },
        )
    }

    /// Takes the build's check-run lease (with the creation marker before a first creation).
    /// `Ok(Err(_))`: nothing to write ([`Written::Done`]), or another replica writes it
    /// ([`Written::Busy`]).
    async fn claim_check_run(&self, key: &str) -> Result<Result<ClaimedRun, Written>, StatusError> {
        let now = OffsetDateTime::now_utc();
        let until = now + self.config.lease;
        let me = &self.instance;
        let (claim, record) = self
            .store
            .modify(key, |record| {
                if self.desired_check_run(record).is_none() {
                    return Modify::Keep(CheckRunClaim::Clean);
                }
                record.claim_check_run(me, now, until)
            })
            .await
            .map_err(|e| store_error(e.into()))?;
        match claim {
            CheckRunClaim::Clean => Ok(Err(Written::Done)),
            CheckRunClaim::Busy(busy) => Ok(Err(Written::Busy(lease_poll(busy)))),
            CheckRunClaim::Claimed { id, earlier_create } => {
                let Some(run) = self.desired_check_run(&record) else {
                    return Ok(Err(Written::Done));
                };
                Ok(Ok(ClaimedRun {
                    run,
                    version: record.view.version,
                    last: record.check_run,
                    id,
                    earlier_create,
                }))
            }
        }
    }

    /// Writes the build's current run under its lease. `Err` only for what may work later
    /// (the lease released); a run GitHub rejects, or whose earlier creation cannot be looked
    /// up, is recorded (its content given up on, the next event of the build tries again).
    async fn write_check_run(
        &self,
        sink: &dyn CheckRunSink,
        key: &str,
    ) -> Result<Written, StatusError> {
        // Nothing to write, or another replica writes it: no budget spent.
        if let Some(outcome) = self.check_run_unclaimable(key).await? {
            return Ok(outcome);
        }
        // The budget first, then the lease: the lease covers the look-up and the write only,
        // and the run is rendered from the record as it is once the budget allows a write.
        sink.ready().await;
        let ClaimedRun {
            run,
            version,
            last,
            id: known,
            earlier_create,
        } = match self.claim_check_run(key).await? {
            Ok(claimed) => claimed,
            Err(outcome) => return Ok(outcome),
        };
        let me = &self.instance;
        let digest = run.digest();
        let written = if last.digest.as_deref() == Some(digest.as_str()) {
            // The newer events changed nothing the run shows.
            self.metrics.check_run("unchanged");
            (None, last.last_error)
        } else {
            // Id 0 is shadow mode's: nothing was created.
            let known = known.filter(|id| *id != 0);
            match self
                .send_check_run(sink, key, &run, known, earlier_create)
                .await
            {
                Ok(id) => {
                    self.metrics.check_run("written");
                    bump(&self.stats.check_runs_written);
                    (Some(id), None)
                }
                Err(StatusError::Permanent(reason)) => {
                    self.metrics.check_run("rejected");
                    tracing::error!(
                        repository = %run.repository,
                        commit = %run.head_sha,
                        name = %run.name,
                        reason,
                        "check run rejected"
                    );
                    (None, Some(reason))
                }
                Err(transient) => {
                    let _ = self
                        .store
                        .modify(key, |record| record.release_check_run_lease(me))
                        .await;
                    return Err(transient);
                }
            }
        };
        let (id, error) = written;
        match self
            .store
            .modify(key, |record| {
                record.mark_check_run_written(id, &digest, version, error.clone(), me)
            })
            .await
        {
            Ok(((), record)) if !record.check_run.quiet && record.check_run_dirty() => {
                Ok(Written::Again)
            }
            Ok(_) => Ok(Written::Done),
            Err(err) => {
                // The run is on GitHub; its id is found again by its external id before the
                // build's next write creates anything (the lease expires on its own).
                tracing::warn!(build = %key, error = format!("{err:#}"), "cannot record the written check run");
                Ok(Written::Done)
            }
        }
    }

    /// Creates or updates the run; before creating it again after an earlier creation whose
    /// id was never stored, looks it up (a failed lookup fails the write, like GitHub refusing
    /// the write itself).
    async fn send_check_run(
        &self,
        sink: &dyn CheckRunSink,
        key: &str,
        run: &CheckRun,
        mut id: Option<u64>,
        earlier: bool,
    ) -> Result<u64, StatusError> {
        if id.is_none() && earlier {
            id = sink.find(run).await.map_err(|err| match err {
                StatusError::Permanent(reason) => StatusError::Permanent(format!(
                    "cannot look up the check run of an earlier creation: {reason}"
                )),
                transient => transient,
            })?;
            if let Some(found) = id {
                tracing::info!(build = %key, id = found, "found the check run of an earlier creation");
            }
        }
        sink.write(run, id).await
    }
}

/// A build's run to write, its lease taken.
struct ClaimedRun {
    run: CheckRun,
    /// The view version `run` shows.
    version: u64,
    /// The run's state as recorded when the lease was taken.
    last: CheckRunRecord,
    id: Option<u64>,
    earlier_create: bool,
}

/// What one check-run attempt did.
#[derive(Debug)]
pub(crate) enum Written {
    /// Written, rejected, or nothing to write.
    Done,
    /// Written, but the view moved on meanwhile: write again.
    Again,
    /// Another replica holds the run's lease: look again after this wait.
    Busy(Duration),
}

/// How long to wait before looking again at a run another replica holds for `busy` yet.
fn lease_poll(busy: time::Duration) -> Duration {
    Duration::try_from(busy)
        .unwrap_or(LEASE_POLL)
        .min(LEASE_POLL)
}

fn store_error(err: anyhow::Error) -> StatusError {
    StatusError::Transient {
        reason: format!("cannot read or record the build's check run: {err:#}"),
        retry_after: None,
    }
}
