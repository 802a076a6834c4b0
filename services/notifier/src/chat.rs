//! The chat port: post a build's message once, then update it in place. Slack's Web API in
//! production ([`crate::slack::SlackClient`]), the log in local mode ([`LogChatSink`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use prx_ci_shared::notice::render::SlackMessage;

/// A message to post or update.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    pub channel: String,
    pub username: Option<String>,
    pub icon_emoji: Option<String>,
    /// The projection key of the build, attached to the message as metadata so a post whose
    /// reference was lost can be found again.
    pub build_key: String,
    pub message: SlackMessage,
}

/// A posted message: the channel id Slack answered and the message `ts`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageRef {
    pub channel: String,
    pub ts: String,
}

impl std::fmt::Display for MessageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.channel, self.ts)
    }
}

/// How a chat call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// Not done, may work later (rate limited after retries, Slack outage).
    #[error("chat temporarily unavailable: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request may or may not have reached Slack (connection lost after sending). For a
    /// post this means the message may exist.
    #[error("chat outcome unknown: {0}")]
    Uncertain(String),
    /// The message to update no longer exists (deleted): post a new one.
    #[error("message is gone: {0}")]
    MessageGone(String),
    /// Will never work as configured (`channel_not_found`, `invalid_auth`, ...).
    #[error("chat rejected the message: {0}")]
    Permanent(String),
}

/// Where build messages go.
#[async_trait]
pub trait ChatSink: Send + Sync + std::fmt::Debug {
    /// Posts a new message.
    async fn post(&self, message: &OutgoingMessage) -> Result<MessageRef, ChatError>;
    /// Replaces the content of a posted message.
    async fn update(
        &self,
        reference: &MessageRef,
        message: &OutgoingMessage,
    ) -> Result<(), ChatError>;
    /// Finds a message posted for `build_key` in `channel` since `since` (recovery after a post
    /// whose reference was not stored). `Ok(None)` = certainly not there.
    async fn find(
        &self,
        channel: &str,
        build_key: &str,
        since: OffsetDateTime,
    ) -> Result<Option<MessageRef>, ChatError>;

    /// Whether messages to one channel must keep `[notifier.slack] min_interval` apart (Slack's
    /// per-channel limit). The log has no such limit.
    fn paced(&self) -> bool {
        true
    }
}

/// Local mode: the rendered message goes to the log as readable multi-line text.
#[derive(Debug, Default)]
pub struct LogChatSink {
    next: AtomicU64,
}

impl LogChatSink {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ChatSink for LogChatSink {
    async fn post(&self, message: &OutgoingMessage) -> Result<MessageRef, ChatError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let reference = MessageRef {
            channel: message.channel.clone(),
            ts: format!("log.{n}"),
        };
        tracing::info!(
            channel = %message.channel,
            build = %message.build_key,
            reference = %reference,
            "build message\n{}",
            message.message.to_log_text()
        );
        Ok(reference)
    }

    async fn update(
        &self,
        reference: &MessageRef,
        message: &OutgoingMessage,
    ) -> Result<(), ChatError> {
        tracing::info!(
            channel = %message.channel,
            build = %message.build_key,
            reference = %reference,
            "build message updated\n{}",
            message.message.to_log_text()
        );
        Ok(())
    }

    async fn find(
        &self,
        _channel: &str,
        _build_key: &str,
        _since: OffsetDateTime,
    ) -> Result<Option<MessageRef>, ChatError> {
        Ok(None)
    }

    fn paced(&self) -> bool {
        false
    }
}

/// Shadow mode (`[notifier] mode = "shadow"`): nothing is sent. A post answers a stable
/// pseudo reference (`shadow:<build key>`), so the build's later renderings are would-be
/// updates of it, each recorded once, as live records what it sent.
#[derive(Debug, Default)]
pub struct ShadowChatSink;

#[async_trait]
impl ChatSink for ShadowChatSink {
    async fn post(&self, message: &OutgoingMessage) -> Result<MessageRef, ChatError> {
        tracing::debug!(build = %message.build_key, "shadow mode: build message not posted");
        Ok(MessageRef {
            channel: message.channel.clone(),
            ts: format!("shadow:{}", message.build_key),
        })
    }

    async fn update(
        &self,
        _reference: &MessageRef,
        message: &OutgoingMessage,
    ) -> Result<(), ChatError> {
        tracing::debug!(build = %message.build_key, "shadow mode: build message not updated");
        Ok(())
    }

    async fn find(
        &self,
        _channel: &str,
        _build_key: &str,
        _since: OffsetDateTime,
    ) -> Result<Option<MessageRef>, ChatError> {
        Ok(None)
    }

    fn paced(&self) -> bool {
        false
    }
}
