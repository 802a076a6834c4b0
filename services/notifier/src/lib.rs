//! The notifier service: one living Slack message per build (posted once, updated in place)
//! and GitHub commit statuses, from the build events in `PRX_EVENTS`.
//!
//! - `prx_ci_shared::notice` holds the pure part, shared with the ops dashboard: `view` folds a
//!   build's events into its view (idempotent, state only moves forward), `render` turns a view
//!   into the Slack message (snapshot-tested here, `tests/render_snapshots.rs`), putting every
//!   value into text only through `mrkdwn`'s escaper and link builder, and `commit_status` into
//!   the commit status it calls for; [`check_run`] (here) renders the GitHub check run of App
//!   mode (status, conclusion, details link, Markdown summary);
//! - [`notification_record`] is the per-build record and its rules (the lease, what a delivery
//!   records), kept by [`notification_store`] in the KV bucket `prx_ci_notifications`;
//! - [`chat`] / [`slack`], [`github_status`] and [`github_checks`] are the delivery ports and
//!   their adapters;
//! - [`commits`] lists a push's commits through GitHub's compare API;
//! - [`handler`] folds the consumed events; [`chat_delivery`], [`status_delivery`] and
//!   [`check_delivery`] deliver, per-channel paced and coalescing, within the GitHub write
//!   budgets;
//! - [`service`] wires it (durable consumer `notifier`); [`metrics`] holds its metrics.
//!
//! # Wiring
//! [`chat_sink`], [`status_sink`], [`check_run_sink`] and [`commit_source`] pick the adapters
//! from the configuration (no token: the log, no commit lists; a GitHub App: check runs instead
//! of statuses), as `prx-ci up` and the binary do:
//! ```no_run
//! # async fn wire(
//! #     runtime: prx_ci_shared::Runtime,
//! #     config: prx_ci_notifier::NotifierConfig,
//! #     github: prx_ci_shared::github::GitHubConfig,
//! #     shutdown: prx_ci_shared::CancellationToken,
//! # ) -> anyhow::Result<()> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let chat = prx_ci_notifier::chat_sink(&config.slack)?;
//! let statuses = prx_ci_notifier::status_sink(&github, &config.statuses)?;
//! let commits = prx_ci_notifier::commit_source(&github)?;
//! let checks = prx_ci_notifier::check_run_sink(&github, &config.checks)?;
//! let mut notifier =
//!     prx_ci_notifier::Notifier::new(runtime, config, chat, statuses, commits, &mut registry)?;
//! if let Some(checks) = checks {
//!     notifier = notifier.with_check_runs(checks);
//! }
//! notifier.run(shutdown).await
//! # }
//! ```

pub mod chat;
pub mod chat_delivery;
pub mod check_delivery;
pub mod check_run;
pub mod commits;
pub mod config;
pub mod github_checks;
pub mod github_status;
pub mod handler;
pub mod metrics;
pub mod notification_record;
pub mod notification_store;
pub mod queue;
pub mod service;
pub mod slack;
pub mod status_delivery;

use std::sync::Arc;

use prx_ci_shared::github::{GitHubClient, GitHubConfig};

pub use chat::{ChatSink, LogChatSink, ShadowChatSink};
pub use commits::{CommitSource, GitHubCommitSource};
pub use config::NotifierConfig;
pub use github_checks::{CheckRunSink, GitHubCheckRunSink, ShadowCheckRunSink};
pub use github_status::{GitHubStatusSink, LogStatusSink, ShadowStatusSink, StatusSink};
pub use metrics::DeliveryStats;
pub use notification_record::NotificationRecord;
pub use service::Notifier;
pub use slack::SlackClient;

/// Slack when `config` has a token, else the log.
pub fn chat_sink(config: &config::SlackConfig) -> anyhow::Result<Arc<dyn ChatSink>> {
    Ok(match config.token {
        Some(_) => Arc::new(SlackClient::new(config)?),
        None => Arc::new(LogChatSink::new()),
    })
}

/// GitHub commit statuses (within `statuses`' budget) when `github` has credentials (a token or
/// a GitHub App), else the log.
pub fn status_sink(
    github: &GitHubConfig,
    statuses: &config::StatusConfig,
) -> anyhow::Result<Arc<dyn StatusSink>> {
    Ok(if github.has_credentials() {
        Arc::new(GitHubStatusSink::new(
            GitHubClient::new(github.clone())?,
            statuses.per_minute,
            statuses.per_hour,
        ))
    } else {
        Arc::new(LogStatusSink)
    })
}

/// GitHub check runs (within `checks`' budget) in GitHub App mode with check runs enabled;
/// else none, and the notifier writes commit statuses ([`status_sink`]).
pub fn check_run_sink(
    github: &GitHubConfig,
    checks: &config::CheckRunConfig,
) -> anyhow::Result<Option<Arc<dyn CheckRunSink>>> {
    Ok(if github.is_app() && checks.enabled {
        Some(Arc::new(GitHubCheckRunSink::new(
            GitHubClient::new(github.clone())?,
            checks.per_minute,
            checks.per_hour,
        )))
    } else {
        None
    })
}

/// GitHub's compare API when `github` has credentials, else none (no commit lists).
pub fn commit_source(github: &GitHubConfig) -> anyhow::Result<Option<Arc<dyn CommitSource>>> {
    Ok(if github.has_credentials() {
        Some(Arc::new(GitHubCommitSource::new(GitHubClient::new(
            github.clone(),
        )?)))
    } else {
        None
    })
}
