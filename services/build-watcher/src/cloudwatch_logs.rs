//! The log port and its CloudWatch Logs adapter: the last events of a CodeBuild build's log
//! stream (`GetLogEvents` from the end, `startFromHead = false`; the events come oldest
//! first), for the log tail of a failed build.

use std::fmt;

use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata as _;
use aws_sdk_cloudwatchlogs::operation::get_log_events::GetLogEventsError as GetLogEvents;

/// Where a build's log is: its CloudWatch Logs group and stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLocation {
    pub group: String,
    pub stream: String,
}

impl fmt::Display for LogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.stream)
    }
}

/// Why the end of a log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogReadError {
    /// The group or the stream does not exist (the build wrote no log, or logs are off).
    #[error("log stream {0} does not exist")]
    NotFound(LogLocation),
    /// Refused (`logs:GetLogEvents` not allowed) or failed (throttled, network). `reason`: the
    /// error code only (the message may name the role and account; it is logged instead).
    #[error("reading log stream {location} failed: {reason}")]
    Failed {
        location: LogLocation,
        reason: String,
    },
}

/// Reads the end of a build's log.
#[async_trait::async_trait]
pub trait LogSource: Send + Sync + fmt::Debug {
    /// The last `limit` (at most) messages of the log, oldest first. Fewer than `limit` does
    /// not mean the log has no more: CloudWatch Logs stops at 1 MB of events, and may answer
    /// with fewer (even none) while the stream holds more.
    async fn last_messages(
        &self,
        location: &LogLocation,
        limit: usize,
    ) -> Result<Vec<String>, LogReadError>;
}

/// CloudWatch Logs (`logs:GetLogEvents` on the builds' log groups).
#[derive(Debug, Clone)]
pub struct CloudWatchLogs {
    client: aws_sdk_cloudwatchlogs::Client,
}

impl CloudWatchLogs {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl LogSource for CloudWatchLogs {
    async fn last_messages(
        &self,
        location: &LogLocation,
        limit: usize,
    ) -> Result<Vec<String>, LogReadError> {
        let answer = self
            .client
            .get_log_events()
            .log_group_name(&location.group)
            .log_stream_name(&location.stream)
            .start_from_head(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|err| match err.as_service_error() {
                Some(GetLogEvents::ResourceNotFoundException(_)) => {
                    LogReadError::NotFound(location.clone())
                }
                _ => {
                    // The full error (it may name the role and account) goes to the log only;
                    // the tail, shown on GitHub, gets the error code.
                    tracing::warn!(
                        log_group = %location.group,
                        log_stream = %location.stream,
                        error = %aws_smithy_types::error::display::DisplayErrorContext(&err),
                        "GetLogEvents failed"
                    );
                    LogReadError::Failed {
                        location: location.clone(),
                        reason: err.code().map_or_else(
                            || "the request failed (see the build-watcher's log)".to_owned(),
                            |code| format!("{code} (see the build-watcher's log)"),
                        ),
                    }
                }
            })?;
        let mut messages: Vec<String> = answer
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_owned))
            .collect();
        // GetLogEvents returns events oldest first already; at most `limit` of them.
        let extra = messages.len().saturating_sub(limit);
        messages.drain(..extra);
        Ok(messages)
    }
}
