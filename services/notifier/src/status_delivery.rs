//! GitHub commit-status delivery: one queue keyed by (repository, commit, context) in which a
//! newer state replaces a waiting older one, written one at a time through the status sink.

use std::sync::Arc;
use std::time::Duration;

use prx_ci_proto::v1;
use prx_ci_shared::retry::Backoff;

use crate::github_status::StatusError;
use crate::metrics::bump;
use crate::notification_record::NotificationRecord;
use crate::service::Core;
use prx_ci_shared::notice::commit_status::{CommitStatus, desired_status};

/// Statuses remembered as in flight or written (a cache; cleared when full).
const MAX_RECENT_STATUSES: usize = 10_000;
/// Longest wait before a failed write is tried again (unless GitHub asks for longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Longest wait GitHub is believed when it asks (its rate-limit windows are an hour).
const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// The wait before the next round of a failed status write: the backoff, or longer when GitHub
/// asked for longer (`Retry-After`, `X-RateLimit-Reset`), so a rate limit is not hammered.
pub(crate) fn retry_delay(backoff: Duration, server_wait: Option<Duration>) -> Duration {
    backoff.max(server_wait.unwrap_or_default().min(MAX_SERVER_WAIT))
}

/// What identifies a status on GitHub: (repository, commit, context).
pub(crate) type StatusKey = (String, String, String);

/// A status waiting to be written, with every build whose state it carries.
#[derive(Debug, Clone)]
pub(crate) struct PendingStatus {
    status: CommitStatus,
    /// The build whose state is `status`.
    build_key: String,
    /// Builds whose older states were superseded by `status` while waiting.
    superseded: Vec<String>,
    attempts: u32,
}

impl Core {
    /// Commit statuses are written: enabled, and no check runs instead (GitHub App mode).
    fn statuses_on(&self) -> bool {
        self.config.statuses.enabled && self.checks.is_none()
    }

    /// Queues the status `record`'s view calls for, unless it is written or in flight.
    pub(crate) fn enqueue_status(&self, key: &str, record: &NotificationRecord) {
        if !self.statuses_on() {
            return;
        }
        let Some(status) = desired_status(&self.config.statuses.context, &record.view) else {
            return;
        };
        if record.status.written.as_ref() == Some(&status) {
            return;
        }
        if self
            .recent_statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&status.key())
            == Some(&status)
        {
            return;
        }
        self.queue_status(key, status);
    }

    /// Queues `status` of the build `key` (merged into a waiting status of its commit and
    /// context).
    fn queue_status(&self, key: &str, status: CommitStatus) {
        bump(&self.stats.statuses_requested);
        let pending = PendingStatus {
            status: status.clone(),
            build_key: key.to_owned(),
            superseded: vec![],
            attempts: 0,
        };
        let fresh = self
            .status_queue
            .push(status.key(), pending, |waiting, newer| {
                if waiting.build_key != newer.build_key {
                    waiting.superseded.push(waiting.build_key.clone());
                }
                waiting.status = newer.status;
                waiting.build_key = newer.build_key;
            });
        if fresh {
            self.metrics.status_queue.inc();
        } else {
            self.metrics.status("coalesced");
        }
    }

    /// After this process wrote `written` for the build `key`: when the build's record (as
    /// stored now) calls for another status, that one is queued again, even if the record says
    /// it was written: another replica may have folded a newer state and written it before
    /// `written` (older) landed, and GitHub shows the last status written. Nothing is queued when
    /// that status already waits here (this process folded the newer state itself).
    fn requeue_if_behind(&self, key: &str, record: &NotificationRecord, written: &CommitStatus) {
        if !self.statuses_on() {
            return;
        }
        let Some(status) = desired_status(&self.config.statuses.context, &record.view) else {
            return;
        };
        if status == *written
            || self
                .status_queue
                .waiting(&status.key(), |waiting| waiting.status == status)
        {
            return;
        }
        tracing::info!(
            repository = %status.repository,
            commit = %status.sha,
            context = %status.context,
            state = status.state.as_str(),
            "the build moved on while an older status was written; writing its current one"
        );
        self.queue_status(key, status);
    }

    /// [`Self::requeue_if_behind`] once the build's record can be read (the broker may be down
    /// right after a write), trying again with a growing pause until it can or the notifier
    /// stops.
    fn requeue_if_behind_later(self: &Arc<Self>, key: String, written: CommitStatus) {
        let core = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(500);
            loop {
                match core.store.load(&key).await {
                    Ok(Some((record, _))) => {
                        core.requeue_if_behind(&key, &record, &written);
                        return;
                    }
                    Ok(None) => return,
                    Err(err) => {
                        tracing::debug!(build = %key, error = format!("{err:#}"), "cannot read the build's record after writing its status yet");
                    }
                }
                tokio::select! {
                    () = core.shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Writes commit statuses one at a time, newest state per (commit, context).
    pub(crate) async fn status_worker(self: Arc<Self>) {
        while let Some((status_key, mut pending)) = self.status_queue.pop(&self.shutdown).await {
            self.metrics.status_queue.dec();
            {
                let mut recent = self
                    .recent_statuses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if recent.len() >= MAX_RECENT_STATUSES {
                    recent.clear();
                }
                recent.insert(status_key.clone(), pending.status.clone());
            }
            match self.statuses.write(&pending.status).await {
                Ok(()) => {
                    self.metrics.status("written");
                    bump(&self.stats.statuses_written);
                    self.mark_status_written(&pending).await;
                }
                Err(StatusError::Permanent(reason)) => {
                    self.metrics.status("rejected");
                    tracing::error!(
                        repository = %pending.status.repository,
                        commit = %pending.status.sha,
                        reason,
                        "commit status rejected"
                    );
                    self.mark_status_written(&pending).await;
                }
                Err(StatusError::Transient {
                    reason,
                    retry_after,
                }) => {
                    self.metrics.status("failed");
                    self.recent_statuses
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&status_key);
                    pending.attempts += 1;
                    let backoff = Backoff {
                        initial: Duration::from_secs(1),
                        max: MAX_RETRY_DELAY,
                        max_attempts: u32::MAX,
                    }
                    .delay(pending.attempts);
                    let delay = retry_delay(backoff, retry_after);
                    tracing::warn!(reason, ?delay, "commit status write failed; will retry");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    self.metrics.status_queue.inc();
                    // Back at the front, unless a newer state arrived meanwhile.
                    self.status_queue
                        .push_front(status_key, pending, |newer, mut older| {
                            older.superseded.clear();
                            newer.superseded.push(older.build_key);
                        });
                }
            }
        }
    }

    /// Records the written status on its build, and on the builds whose older states it
    /// superseded (so a restart does not write those stale states again); then checks that the
    /// build has not moved on meanwhile ([`Self::requeue_if_behind`]), from the record as
    /// stored by that write, or, when it could not be stored, as soon as it can be read.
    async fn mark_status_written(self: &Arc<Self>, pending: &PendingStatus) {
        let statuses = &self.config.statuses;
        let written = &pending.status;
        let mut builds = vec![pending.build_key.clone()];
        builds.extend(pending.superseded.iter().cloned());
        for key in builds {
            let own = key == pending.build_key;
            let result = self
                .store
                .modify(&key, |record| {
                    record.mark_status_written(written, own, statuses)
                })
                .await;
            match result {
                Ok(((), record)) if own => {
                    let event = record.delivered_event(
                        v1::NotificationChannel::GithubStatus,
                        written.context.clone(),
                        written.state.as_str(),
                        &["status", &key, &written.description],
                        self.config.mode.is_shadow(),
                    );
                    self.publish_delivered(&event).await;
                    self.requeue_if_behind(&key, &record, written);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(build = %key, error = format!("{err:#}"), "cannot record the written status");
                    if own {
                        self.requeue_if_behind_later(key, written.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_round_waits_what_github_asks_when_it_is_longer_than_the_backoff() {
        let secs = Duration::from_secs;
        assert_eq!(retry_delay(secs(2), None), secs(2));
        assert_eq!(retry_delay(secs(2), Some(secs(1))), secs(2));
        assert_eq!(retry_delay(secs(2), Some(secs(30))), secs(30));
        // A reset more than an hour away (a skewed clock) is not believed.
        assert_eq!(retry_delay(secs(2), Some(secs(86_400))), MAX_SERVER_WAIT);
    }
}
