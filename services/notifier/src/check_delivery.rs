//! GitHub check-run delivery (App mode): one queue of build keys in which a build already
//! waiting is not queued again; its worker loads the build's newest record, renders the run
//! ([`crate::check_run`]) and writes it through the check-run sink, within its write budget.
//! A burst of events of one build therefore goes out as one write, with the newest state.
//!
//! The build's record keeps the run's id, so every later write (and every write after a
//! restart) updates the same run; a creation whose id was never stored (a crash between the
//! write and the record) is found again by its `external_id` before another is created.

use std::sync::Arc;
use std::time::Duration;

use prx_ci_shared::retry::Backoff;

use crate::check_run::{CheckRun, desired_check_run};
use crate::github_checks::CheckRunSink;
use crate::github_status::StatusError;
use crate::metrics::bump;
use crate::notification_record::NotificationRecord;
use crate::service::Core;
use crate::status_delivery::retry_delay;

/// Longest wait before a failed write is tried again (unless GitHub asks for longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

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
            let Err(StatusError::Transient {
                reason,
                retry_after,
            }) = self.write_check_run(sink.as_ref(), &key).await
            else {
                continue;
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

    /// Writes the build's current run. `Err` only for what may work later; a rejected run is
    /// recorded (its content given up on, the next event of the build tries again).
    async fn write_check_run(&self, sink: &dyn CheckRunSink, key: &str) -> Result<(), StatusError> {
        let store_error = |err: anyhow::Error| StatusError::Transient {
            reason: format!("cannot read or record the build's check run: {err:#}"),
            retry_after: None,
        };
        let Some((record, _)) = self
            .store
            .load(key)
            .await
            .map_err(|e| store_error(e.into()))?
        else {
            return Ok(());
        };
        let Some(run) = self.desired_check_run(&record) else {
            return Ok(());
        };
        if record.check_run.quiet || !record.check_run_dirty() {
            return Ok(());
        }
        let digest = run.digest();
        let version = record.view.version;
        if record.check_run.digest.as_deref() == Some(digest.as_str()) {
            // The newer events changed nothing the run shows.
            self.metrics.check_run("unchanged");
            self.store
                .modify(key, |record| {
                    let error = record.check_run.last_error.clone();
                    record.mark_check_run_written(None, &digest, version, error)
                })
                .await
                .map_err(|e| store_error(e.into()))?;
            return Ok(());
        }
        let (known, earlier) = self
            .store
            .modify(key, NotificationRecord::start_check_run_create)
            .await
            .map_err(|e| store_error(e.into()))?
            .0;
        // Id 0 is shadow mode's: nothing was created.
        let mut id = known.filter(|id| *id != 0);
        if id.is_none() && earlier {
            id = sink.find(&run).await?;
            if let Some(found) = id {
                tracing::info!(build = %key, id = found, "found the check run of an earlier creation");
            }
        }
        let (written, error) = match sink.write(&run, id).await {
            Ok(written) => {
                self.metrics.check_run("written");
                bump(&self.stats.check_runs_written);
                (Some(written), None)
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
            Err(transient) => return Err(transient),
        };
        if let Err(err) = self
            .store
            .modify(key, |record| {
                record.mark_check_run_written(written, &digest, version, error.clone())
            })
            .await
        {
            // The run is on GitHub; its id is found again by its external id before the
            // build's next write creates anything.
            tracing::warn!(build = %key, error = format!("{err:#}"), "cannot record the written check run");
        }
        Ok(())
    }
}
