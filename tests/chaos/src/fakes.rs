//! The run's GitHub (the shared fake, [`prx_ci_shared::testing::fake_github`], serving each
//! commit's buildspec and recording commit statuses) and fake Slack (`chat.postMessage`,
//! `chat.update`, `conversations.history`, every call recorded: a small axum server on a
//! loopback port).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeGitHub};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::history::{SlackCall, StatusWrite};

/// The run's GitHub: the shared fake in token mode (the services' `[github] token`), serving
/// `buildspecs` ((repository, commit) -> `buildspec.yml`) and recording commit statuses.
pub async fn github(token: &str, buildspecs: &HashMap<(String, String), String>) -> FakeGitHub {
    let github = FakeGitHub::start(FakeAuth::Token(token.to_owned())).await;
    for ((repository, commit), text) in buildspecs {
        github.set_file(repository, commit, "buildspec.yml", text.as_str());
    }
    github
}

/// Every commit status `github` was sent, in arrival order.
pub fn status_writes(github: &FakeGitHub) -> Vec<StatusWrite> {
    github
        .statuses()
        .into_iter()
        .map(|s| StatusWrite {
            repository: s.repository,
            sha: s.sha,
            context: s.context,
            state: s.state,
        })
        .collect()
}

fn lock<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(app: Router) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "a fake server stopped");
        }
    });
    Ok(url)
}

/// One message fake Slack keeps.
#[derive(Debug, Clone)]
struct Message {
    channel: String,
    ts: String,
    metadata: Value,
}

#[derive(Debug, Default)]
struct SlackState {
    messages: Vec<Message>,
    calls: Vec<SlackCall>,
    timed: Vec<TimedSlackCall>,
}

/// A post or update with the time it arrived and its whole request body (what the
/// end-to-end bench reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedSlackCall {
    pub at: time::OffsetDateTime,
    pub call: SlackCall,
    /// The request's JSON body, as sent.
    pub body: String,
}

/// A running fake Slack Web API.
#[derive(Debug, Clone)]
pub struct FakeSlack {
    pub url: String,
    state: Arc<Mutex<SlackState>>,
}

impl FakeSlack {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(SlackState::default()));
        let app = Router::new()
            .route("/chat.postMessage", post(post_message))
            .route("/chat.update", post(update_message))
            .route("/conversations.history", get(history))
            .with_state(state.clone());
        let url = serve(app).await?;
        Ok(Self { url, state })
    }

    /// Every post and update, in arrival order.
    pub fn calls(&self) -> Vec<SlackCall> {
        lock(&self.state).calls.clone()
    }

    /// Every post and update from the `from`th on, with arrival times and bodies.
    pub fn timed_calls_from(&self, from: usize) -> Vec<TimedSlackCall> {
        lock(&self.state)
            .timed
            .get(from..)
            .unwrap_or_default()
            .to_vec()
    }
}

fn build_of(body: &Value) -> String {
    body.pointer("/metadata/event_payload/build")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn record(state: &mut SlackState, call: SlackCall, body: &Value) {
    state.timed.push(TimedSlackCall {
        at: time::OffsetDateTime::now_utc(),
        call: call.clone(),
        body: body.to_string(),
    });
    state.calls.push(call);
}

async fn post_message(
    State(state): State<Arc<Mutex<SlackState>>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let channel = body
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut state = lock(&state);
    let ts = format!("1700000000.{:06}", state.messages.len() + 1);
    state.messages.push(Message {
        channel: channel.clone(),
        ts: ts.clone(),
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
    });
    let call = SlackCall::Post {
        ts: ts.clone(),
        build: build_of(&body),
    };
    record(&mut state, call, &body);
    Json(json!({"ok": true, "channel": channel, "ts": ts}))
}

async fn update_message(
    State(state): State<Arc<Mutex<SlackState>>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default();
    let (channel, ts) = (text("channel"), text("ts"));
    let mut state = lock(&state);
    if !state
        .messages
        .iter()
        .any(|m| m.channel == channel && m.ts == ts)
    {
        return Json(json!({"ok": false, "error": "message_not_found"}));
    }
    let call = SlackCall::Update {
        ts: ts.to_owned(),
        build: build_of(&body),
    };
    record(&mut state, call, &body);
    Json(json!({"ok": true, "channel": channel, "ts": ts}))
}

async fn history(
    State(state): State<Arc<Mutex<SlackState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let channel = query.get("channel").cloned().unwrap_or_default();
    let state = lock(&state);
    let messages: Vec<Value> = state
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == channel)
        .map(|m| json!({"ts": m.ts, "metadata": m.metadata}))
        .collect();
    Json(json!({"ok": true, "channel": channel, "messages": messages, "has_more": false}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn github_serves_buildspecs_to_the_token_and_records_statuses() {
        let github = github(
            "t0ken",
            &HashMap::from([(
                ("chaos/app-0".to_owned(), "abc".to_owned()),
                "version: 0.2\n".to_owned(),
            )]),
        )
        .await;
        let http = reqwest::Client::new();
        let get = |reference: &str, token: &str| {
            http.get(format!(
                "{}/repos/chaos/app-0/contents/buildspec.yml?ref={reference}",
                github.url()
            ))
            .bearer_auth(token)
            .send()
        };
        let found: Value = get("abc", "t0ken").await.unwrap().json().await.unwrap();
        assert_eq!(found["content"], "dmVyc2lvbjogMC4yCg==\n");
        assert_eq!(get("zzz", "t0ken").await.unwrap().status(), 404);
        assert_eq!(get("abc", "other").await.unwrap().status(), 401);
        let written = http
            .post(format!("{}/repos/chaos/app-0/statuses/abc", github.url()))
            .bearer_auth("t0ken")
            .json(&json!({"state": "success", "context": "prx-ci/x86_64"}))
            .send()
            .await
            .unwrap();
        assert_eq!(written.status(), 201);
        assert_eq!(
            status_writes(&github),
            [StatusWrite {
                repository: "chaos/app-0".into(),
                sha: "abc".into(),
                context: "prx-ci/x86_64".into(),
                state: "success".into(),
            }]
        );
    }

    #[tokio::test]
    async fn slack_records_posts_and_updates_and_finds_messages_by_metadata() {
        let slack = FakeSlack::start().await.unwrap();
        let http = reqwest::Client::new();
        let metadata = json!({"event_type": "prx_ci_build", "event_payload": {"build": "b1"}});
        let posted: Value = http
            .post(format!("{}/chat.postMessage", slack.url))
            .json(&json!({"channel": "C1", "text": "hi", "metadata": metadata}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ts = posted["ts"].as_str().unwrap().to_owned();
        let updated: Value = http
            .post(format!("{}/chat.update", slack.url))
            .json(&json!({"channel": "C1", "ts": ts, "metadata": metadata}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(updated["ok"], true);
        let unknown: Value = http
            .post(format!("{}/chat.update", slack.url))
            .json(&json!({"channel": "C1", "ts": "1.2", "metadata": metadata}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(unknown["error"], "message_not_found");
        let found: Value = http
            .get(format!("{}/conversations.history?channel=C1", slack.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            found["messages"][0]["metadata"]["event_payload"]["build"],
            "b1"
        );
        assert_eq!(
            slack.calls(),
            [
                SlackCall::Post {
                    ts: ts.clone(),
                    build: "b1".into()
                },
                SlackCall::Update {
                    ts,
                    build: "b1".into()
                }
            ]
        );
        let timed = slack.timed_calls_from(0);
        assert_eq!(
            timed.iter().map(|t| t.call.clone()).collect::<Vec<_>>(),
            slack.calls()
        );
        assert!(timed[0].at <= timed[1].at);
        assert!(
            timed[1].body.contains("\"prx_ci_build\""),
            "{}",
            timed[1].body
        );
        assert_eq!(slack.timed_calls_from(1).len(), 1);
        assert!(slack.timed_calls_from(5).is_empty());
    }
}
