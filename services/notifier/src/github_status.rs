//! The commit-status port: GitHub's statuses API within a write budget
//! ([`GitHubStatusSink`]), or the log in local mode ([`LogStatusSink`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prx_ci_shared::github::{GitHubClient, GitHubError};
use serde_json::json;
use tokio::time::Instant;

use prx_ci_shared::notice::commit_status::CommitStatus;

/// How a GitHub write (a commit status, or a check run: [`crate::github_checks`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// May work later (GitHub down, rate limited after retries); `retry_after`: the wait
    /// GitHub asked for, if it did.
    #[error("cannot write to GitHub now: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will not work (no access, unknown commit, too many statuses).
    #[error("GitHub rejected the write: {0}")]
    Permanent(String),
}

impl From<GitHubError> for StatusError {
    /// Transient when GitHub may take it later, with the wait it asked for.
    fn from(err: GitHubError) -> Self {
        if err.is_transient() {
            Self::Transient {
                reason: format!("{err:#}"),
                retry_after: err.retry_after(),
            }
        } else {
            Self::Permanent(format!("{err:#}"))
        }
    }
}

/// Where commit statuses go.
#[async_trait]
pub trait StatusSink: Send + Sync + std::fmt::Debug {
    async fn write(&self, status: &CommitStatus) -> Result<(), StatusError>;
}

/// Local mode: statuses are logged.
#[derive(Debug, Default)]
pub struct LogStatusSink;

#[async_trait]
impl StatusSink for LogStatusSink {
    async fn write(&self, status: &CommitStatus) -> Result<(), StatusError> {
        tracing::info!(
            repository = %status.repository,
            commit = %status.sha,
            context = %status.context,
            state = status.state.as_str(),
            target_url = status.target_url.as_deref().unwrap_or(""),
            "commit status: {}",
            status.description
        );
        Ok(())
    }
}

/// Shadow mode (`[notifier] mode = "shadow"`): statuses are neither written nor logged as
/// written; the notifier records what it would have written (`NotificationDelivered.shadow`).
#[derive(Debug, Default)]
pub struct ShadowStatusSink;

#[async_trait]
impl StatusSink for ShadowStatusSink {
    async fn write(&self, status: &CommitStatus) -> Result<(), StatusError> {
        tracing::debug!(
            repository = %status.repository,
            commit = %status.sha,
            context = %status.context,
            state = status.state.as_str(),
            "shadow mode: commit status not written"
        );
        Ok(())
    }
}

/// A token bucket with two windows (per minute and per hour), for GitHub's content-creation
/// limits. Callers reserve a token and wait until it is theirs, so waiting callers queue fairly.
#[derive(Debug)]
pub struct WriteBudget {
    state: Mutex<BudgetState>,
    per_minute: f64,
    per_hour: f64,
}

#[derive(Debug)]
struct BudgetState {
    minute_tokens: f64,
    hour_tokens: f64,
    updated: Instant,
}

impl WriteBudget {
    /// Full buckets of `per_minute` and `per_hour` tokens.
    pub fn new(per_minute: u32, per_hour: u32) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                minute_tokens: f64::from(per_minute),
                hour_tokens: f64::from(per_hour),
                updated: Instant::now(),
            }),
            per_minute: f64::from(per_minute.max(1)),
            per_hour: f64::from(per_hour.max(1)),
        }
    }

    /// Takes one token; returns how long to wait before using it.
    pub fn reserve(&self) -> Duration {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(state.updated).as_secs_f64();
        state.updated = now;
        let minute_rate = self.per_minute / 60.0;
        let hour_rate = self.per_hour / 3600.0;
        state.minute_tokens = (state.minute_tokens + elapsed * minute_rate).min(self.per_minute);
        state.hour_tokens = (state.hour_tokens + elapsed * hour_rate).min(self.per_hour);
        state.minute_tokens -= 1.0;
        state.hour_tokens -= 1.0;
        let wait_minute = (-state.minute_tokens).max(0.0) / minute_rate;
        let wait_hour = (-state.hour_tokens).max(0.0) / hour_rate;
        Duration::from_secs_f64(wait_minute.max(wait_hour))
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tracing::debug!(?wait, "GitHub write budget exhausted; waiting");
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for a token and holds it as a [`WritePermit`], given back unless spent.
    pub async fn permit(self: &Arc<Self>) -> WritePermit {
        self.acquire().await;
        WritePermit {
            budget: Some(self.clone()),
        }
    }

    /// Returns a token taken but not used (no write was made), to both windows.
    fn give_back(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.minute_tokens = (state.minute_tokens + 1.0).min(self.per_minute);
        state.hour_tokens = (state.hour_tokens + 1.0).min(self.per_hour);
    }
}

/// One write a [`WriteBudget`] allows: spent by the write it is handed to, given back to the
/// budget when dropped unspent (nothing was written: the write turned out not to be due).
#[derive(Debug)]
#[must_use = "dropping a permit gives its token back"]
pub struct WritePermit {
    budget: Option<Arc<WriteBudget>>,
}

impl WritePermit {
    /// A permit of no budget (a sink that writes nothing, or spends no budget).
    pub fn unlimited() -> Self {
        Self { budget: None }
    }

    /// The write is made: the token is used.
    pub fn spend(mut self) {
        self.budget = None;
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.give_back();
        }
    }
}

/// GitHub's `POST /repos/{owner}/{repo}/statuses/{sha}` through the shared client, within a
/// [`WriteBudget`].
#[derive(Debug)]
pub struct GitHubStatusSink {
    client: GitHubClient,
    budget: WriteBudget,
}

impl GitHubStatusSink {
    pub fn new(client: GitHubClient, per_minute: u32, per_hour: u32) -> Self {
        Self {
            client,
            budget: WriteBudget::new(per_minute, per_hour),
        }
    }
}

#[async_trait]
impl StatusSink for GitHubStatusSink {
    async fn write(&self, status: &CommitStatus) -> Result<(), StatusError> {
        self.budget.acquire().await;
        let path = format!("/repos/{}/statuses/{}", status.repository, status.sha);
        let mut body = json!({
            "state": status.state.as_str(),
            "description": status.description,
            "context": status.context,
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = json!(url);
        }
        match self
            .client
            .post_json::<serde_json::Value>(&path, &body)
            .await
        {
            Ok(_) => Ok(()),
            Err(err @ GitHubError::Decode { .. }) => {
                // Written; only the answer was odd.
                tracing::debug!(error = %err, "status written, answer not JSON");
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_burst_then_paces() {
        let budget = WriteBudget::new(80, 500);
        for _ in 0..80 {
            assert_eq!(budget.reserve(), Duration::ZERO);
        }
        // The 81st waits for one minute-token (60/80 s).
        let wait = budget.reserve();
        assert!((wait.as_secs_f64() - 0.75).abs() < 0.01, "{wait:?}");
        tokio::time::advance(Duration::from_secs(60)).await;
        // The minute bucket refilled; the hour bucket (500) is not the limit yet.
        assert_eq!(budget.reserve(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_budget_bounds_sustained_writes() {
        let budget = WriteBudget::new(1000, 10);
        for _ in 0..10 {
            assert_eq!(budget.reserve(), Duration::ZERO);
        }
        let wait = budget.reserve();
        assert!((wait.as_secs_f64() - 360.0).abs() < 0.5, "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_dropped_unspent_gives_its_token_back_and_a_spent_one_does_not() {
        let budget = Arc::new(WriteBudget::new(2, 2));
        budget.permit().await.spend();
        drop(budget.permit().await);
        // One token left: the unspent permit's.
        assert_eq!(budget.reserve(), Duration::ZERO);
        assert!(budget.reserve() > Duration::from_secs(60));
        // A full bucket stays full.
        let full = Arc::new(WriteBudget::new(2, 2));
        full.give_back();
        full.give_back();
        for _ in 0..2 {
            assert_eq!(full.reserve(), Duration::ZERO);
        }
        assert!(full.reserve() > Duration::ZERO);
    }
}
