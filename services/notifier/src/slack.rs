//! The Slack Web API client (`chat.postMessage`, `chat.update`, `conversations.history`):
//! bot token, configurable base URL, and retries through the shared helper that honour
//! HTTP 429 `Retry-After`.

use std::time::Duration;

use async_trait::async_trait;
use prx_ci_shared::retry::{self, Backoff, Retry};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::chat::{ChatError, ChatSink, MessageRef, OutgoingMessage};
use crate::config::SlackConfig;

/// `metadata.event_type` of every build message.
pub const METADATA_EVENT_TYPE: &str = "prx_ci_build";

/// Slack errors that mean "try again later".
const TRANSIENT_ERRORS: [&str; 5] = [
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Slack failures after which "some aspect of the operation" may have succeeded (Slack's
/// words): HTTP 5xx, `internal_error`, `fatal_error`. A post answered so may exist.
const MAYBE_DONE_ERRORS: [&str; 2] = ["internal_error", "fatal_error"];

/// What a failed call means: `error` is Slack's error code, or `HTTP <status>` for a 429 or
/// 5xx answer. A call that may have been carried out (`may_duplicate`: a post) is
/// [`ChatError::Uncertain`], never retried blindly: the caller looks for the message first.
fn failed_call(
    method: &str,
    error: &str,
    retry_after: Option<Duration>,
    may_duplicate: bool,
) -> ChatError {
    let reason = format!("{method}: {error}");
    let server_error = error.starts_with("HTTP 5");
    if may_duplicate && (server_error || MAYBE_DONE_ERRORS.contains(&error)) {
        ChatError::Uncertain(reason)
    } else if server_error || error.starts_with("HTTP 429") || TRANSIENT_ERRORS.contains(&error) {
        ChatError::Transient {
            reason,
            retry_after,
        }
    } else if GONE_ERRORS.contains(&error) {
        ChatError::MessageGone(reason)
    } else {
        ChatError::Permanent(reason)
    }
}

/// Slack errors that mean "the message to update is gone".
const GONE_ERRORS: [&str; 2] = ["message_not_found", "cant_update_message"];

/// The Web API client.
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    api_url: String,
    token: SecretString,
    backoff: Backoff,
}

impl std::fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackClient")
            .field("api_url", &self.api_url)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    messages: Vec<HistoryMessage>,
}

#[derive(Deserialize)]
struct HistoryMessage {
    ts: String,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    event_payload: serde_json::Value,
}

impl SlackClient {
    /// A client for `config` (which must have a token).
    pub fn new(config: &SlackConfig) -> anyhow::Result<Self> {
        let token = config
            .token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("[notifier.slack] has no token"))?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent("PRX/prx-ci-notifier")
            .build()?;
        Ok(Self {
            http,
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            token,
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                max_attempts: 5,
            },
        })
    }

    /// Overrides the retry policy (tests use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Calls `method` once: JSON body (POST) or query (GET).
    async fn call_once(
        &self,
        method: &str,
        body: Option<&serde_json::Value>,
        query: &[(&str, String)],
        may_duplicate: bool,
    ) -> Result<ApiAnswer, ChatError> {
        let url = format!("{}/{method}", self.api_url);
        let request = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url).query(query),
        }
        .bearer_auth(self.token.expose_secret());
        let response = match request.send().await {
            Ok(response) => response,
            // Nothing was sent: safe to retry.
            Err(err) if err.is_connect() => {
                return Err(ChatError::Transient {
                    reason: format!("{method}: {err}"),
                    retry_after: None,
                });
            }
            Err(err) if may_duplicate => {
                return Err(ChatError::Uncertain(format!("{method}: {err}")));
            }
            Err(err) => {
                return Err(ChatError::Transient {
                    reason: format!("{method}: {err}"),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(failed_call(
                method,
                &format!("HTTP {status}"),
                retry_after,
                may_duplicate,
            ));
        }
        let answer: ApiAnswer = match response.json().await {
            Ok(answer) => answer,
            Err(err) if status.is_success() && may_duplicate => {
                return Err(ChatError::Uncertain(format!("{method}: {err}")));
            }
            Err(err) => {
                return Err(ChatError::Permanent(format!(
                    "{method}: HTTP {status}, unreadable answer: {err}"
                )));
            }
        };
        if answer.ok {
            return Ok(answer);
        }
        let error = answer.error.unwrap_or_else(|| "unknown_error".to_owned());
        Err(failed_call(method, &error, retry_after, may_duplicate))
    }

    async fn call(
        &self,
        method: &str,
        body: Option<&serde_json::Value>,
        query: &[(&str, String)],
        may_duplicate: bool,
    ) -> Result<ApiAnswer, ChatError> {
        retry::retry(
            &self.backoff,
            |_| self.call_once(method, body, query, may_duplicate),
            |err| match err {
                ChatError::Transient {
                    retry_after: Some(after),
                    ..
                } => Retry::After(*after),
                ChatError::Transient { .. } => Retry::Backoff,
                _ => Retry::Never,
            },
        )
        .await
    }

    fn body(message: &OutgoingMessage) -> serde_json::Value {
        // Security: the text is already mrkdwn with every value escaped; `parse: none` keeps
        // Slack from re-parsing it, and `link_names: false` from turning names (`@here`,
        // `@someone`, `#channel`) into mentions. Both are Slack's defaults today and are
        // sent anyway so neither a changed default nor a copied snippet can turn them on.
        let mut body = json!({
            "channel": message.channel,
            "text": message.message.text,
            "attachments": message.message.attachments,
            "parse": "none",
            "link_names": false,
            "unfurl_links": false,
            "unfurl_media": false,
            "metadata": {
                "event_type": METADATA_EVENT_TYPE,
                "event_payload": { "build": message.build_key },
            },
        });
        if let Some(username) = &message.username {
            body["username"] = json!(username);
        }
        if let Some(icon) = &message.icon_emoji {
            body["icon_emoji"] = json!(icon);
        }
        body
    }
}

#[async_trait]
impl ChatSink for SlackClient {
    async fn post(&self, message: &OutgoingMessage) -> Result<MessageRef, ChatError> {
        let answer = self
            .call("chat.postMessage", Some(&Self::body(message)), &[], true)
            .await?;
        match (answer.channel, answer.ts) {
            (Some(channel), Some(ts)) => Ok(MessageRef { channel, ts }),
            _ => Err(ChatError::Uncertain(
                "chat.postMessage: answer without channel or ts".to_owned(),
            )),
        }
    }

    async fn update(
        &self,
        reference: &MessageRef,
        message: &OutgoingMessage,
    ) -> Result<(), ChatError> {
        let mut body = Self::body(message);
        body["channel"] = json!(reference.channel);
        body["ts"] = json!(reference.ts);
        // chat.update rejects these.
        if let Some(obj) = body.as_object_mut() {
            for key in ["username", "icon_emoji", "unfurl_links", "unfurl_media"] {
                obj.remove(key);
            }
        }
        self.call("chat.update", Some(&body), &[], false).await?;
        Ok(())
    }

    async fn find(
        &self,
        channel: &str,
        build_key: &str,
        since: OffsetDateTime,
    ) -> Result<Option<MessageRef>, ChatError> {
        let query = [
            ("channel", channel.to_owned()),
            ("oldest", format!("{}", since.unix_timestamp())),
            ("include_all_metadata", "true".to_owned()),
            ("limit", "200".to_owned()),
        ];
        let answer = self
            .call("conversations.history", None, &query, false)
            .await?;
        let channel = answer.channel.unwrap_or_else(|| channel.to_owned());
        Ok(answer
            .messages
            .into_iter()
            .find(|m| {
                m.metadata.as_ref().is_some_and(|md| {
                    md.event_type == METADATA_EVENT_TYPE
                        && md.event_payload.get("build").and_then(|b| b.as_str()) == Some(build_key)
                })
            })
            .map(|m| MessageRef {
                channel: channel.clone(),
                ts: m.ts,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prx_ci_shared::notice::render::{Attachment, Block, BlockText, SlackMessage};

    #[test]
    fn a_post_that_may_have_happened_is_uncertain_never_retried_blindly() {
        let after = Some(Duration::from_secs(3));
        for error in [
            "HTTP 500 Internal Server Error",
            "HTTP 503 Service Unavailable",
            "internal_error",
            "fatal_error",
        ] {
            assert!(
                matches!(
                    failed_call("chat.postMessage", error, None, true),
                    ChatError::Uncertain(_)
                ),
                "{error}"
            );
            // An update or a read is safe to repeat.
            assert!(
                matches!(
                    failed_call("chat.update", error, None, false),
                    ChatError::Transient { .. }
                ),
                "{error}"
            );
        }
        // Refused before doing anything: a post is retried, after Slack's wait.
        for error in [
            "HTTP 429 Too Many Requests",
            "ratelimited",
            "service_unavailable",
        ] {
            assert_eq!(
                failed_call("chat.postMessage", error, after, true),
                ChatError::Transient {
                    reason: format!("chat.postMessage: {error}"),
                    retry_after: after,
                },
            );
        }
        assert!(matches!(
            failed_call("chat.update", "message_not_found", None, false),
            ChatError::MessageGone(_)
        ));
        assert!(matches!(
            failed_call("chat.postMessage", "channel_not_found", None, true),
            ChatError::Permanent(_)
        ));
    }

    #[test]
    fn the_payload_asks_slack_to_parse_nothing_and_link_no_names() {
        let message = OutgoingMessage {
            channel: "#ops-build".into(),
            username: Some("AWS CodeBuild".into()),
            icon_emoji: None,
            build_key: "b".into(),
            message: SlackMessage {
                text: "t".into(),
                attachments: vec![Attachment {
                    color: "#2eb886".into(),
                    blocks: vec![Block {
                        kind: "section".into(),
                        text: BlockText {
                            kind: "mrkdwn".into(),
                            text: "t".into(),
                        },
                    }],
                }],
            },
        };
        let body = SlackClient::body(&message);
        assert_eq!(body["parse"], "none");
        assert_eq!(body["link_names"], false);
    }
}
