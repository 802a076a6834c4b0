//! The notifier service: one living Slack message per build (posted once, updated in place)
//! and GitHub commit statuses, from the build events in `PRX_EVENTS`.
//!
//! - [`view`] folds a build's events into its view (idempotent, state only moves forward);
//! - [`render`] turns a view into the Slack message (pure; snapshot-tested), putting every
//!   value into text only through [`mrkdwn`]'s escaper and link builder;
//! - [`commit_status`] turns a view into the commit status it calls for (pure);
//! - [`notification_store`] keeps per-build records in the KV bucket `prx_ci_notifications`;
//! - [`chat`] / [`slack`] and [`github_status`] are the delivery ports and their adapters;
//! - [`commits`] lists a push's commits through GitHub's compare API;
//! - [`service`] wires it: durable consumer `notifier`, per-channel paced and coalescing
//!   delivery, the status write budget.
//!
//! # Wiring (`prx-ci up`)
//! ```text
//! let notifier = Notifier::new(
//!     runtime,
//!     notifier_config,
//!     prx_ci_notifier::chat_sink(&notifier_config.slack)?,     // no token: LogChatSink
//!     prx_ci_notifier::status_sink(&github, &notifier_config.statuses)?, // no token: LogStatusSink
//!     prx_ci_notifier::commit_source(&github)?,                // no token: None
//!     &mut registry,
//! )?;
//! notifier.run(shutdown).await?;
//! ```
//! In local mode (no Slack token, no GitHub token) pass `Arc::new(LogChatSink::new())`,
//! `Arc::new(LogStatusSink)` and `None`: the rendered messages and statuses go to the log.

pub mod chat;
pub mod commits;
pub mod config;
pub mod mrkdwn;
pub mod queue;
pub mod render;
pub mod service;
pub mod slack;
pub mod commit_status;
pub mod github_status;
pub mod notification_store;
pub mod view;

use std::sync::Arc;

use prx_ci_shared::github::{GitHubClient, GitHubConfig};

pub use chat::{ChatSink, LogChatSink};
pub use commits::{CommitSource, GitHubCommitSource};
pub use config::NotifierConfig;
pub use service::{DeliveryStats, Notifier};
pub use slack::SlackClient;
pub use github_status::{GitHubStatusSink, LogStatusSink, StatusSink};

/// Slack when `config` has a token, else the log.
pub fn chat_sink(config: &config::SlackConfig) -> anyhow::Result<Arc<dyn ChatSink>> {
    Ok(match config.token {
        Some(_) => Arc::new(SlackClient::new(config)?),
        None => Arc::new(LogChatSink::new()),
    })
}

/// GitHub commit statuses (within `statuses`' budget) when `github` has a token, else the log.
pub fn status_sink(
    github: &GitHubConfig,
    statuses: &config::StatusConfig,
) -> anyhow::Result<Arc<dyn StatusSink>> {
    Ok(match github.token {
        Some(_) => Arc::new(GitHubStatusSink::new(
            GitHubClient::new(github.clone())?,
            statuses.per_minute,
            statuses.per_hour,
        )),
        None => Arc::new(LogStatusSink),
    })
}

/// GitHub's compare API when `github` has a token, else none (no commit lists).
pub fn commit_source(github: &GitHubConfig) -> anyhow::Result<Option<Arc<dyn CommitSource>>> {
    Ok(match github.token {
        Some(_) => Some(Arc::new(GitHubCommitSource::new(GitHubClient::new(
            github.clone(),
        )?))),
        None => None,
    })
}
