//! Fake GitHub (contents API serving each commit's buildspec, compare, commit statuses
//! recorded) and fake Slack (`chat.postMessage`, `chat.update`, `conversations.history`,
//! every call recorded): small axum servers on loopback ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::history::{SlackCall, StatusWrite};

/// What fake GitHub serves and records.
#[derive(Debug, Default)]
struct GitHubState {
    /// (repository, commit) -> buildspec.yml
    buildspecs: HashMap<(String, String), String>,
    statuses: Vec<StatusWrite>,
    reads: u64,
}

/// A running fake GitHub.
#[derive(Debug, Clone)]
pub struct FakeGitHub {
    pub url: String,
    state: Arc<Mutex<GitHubState>>,
}

impl FakeGitHub {
    /// Serves `buildspecs` ((repository, commit) -> text) on a free port.
    pub async fn start(buildspecs: HashMap<(String, String), String>) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(GitHubState {
            buildspecs,
            ..GitHubState::default()
        }));
        let app = Router::new()
            .route(
                "/repos/{owner}/{repo}/contents/buildspec.yml",
                get(contents),
            )
            .route("/repos/{owner}/{repo}/compare/{range}", get(compare))
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(write_status))
            .with_state(state.clone());
        let url = serve(app).await?;
        Ok(Self { url, state })
    }

    /// Every commit status written, in arrival order.
    pub fn statuses(&self) -> Vec<StatusWrite> {
        lock(&self.state).statuses.clone()
    }

    /// How many buildspec reads were answered.
    pub fn reads(&self) -> u64 {
        lock(&self.state).reads
    }
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

async fn contents(
    State(state): State<Arc<Mutex<GitHubState>>>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let commit = query.get("ref").cloned().unwrap_or_default();
    let mut state = lock(&state);
    let Some(text) = state
        .buildspecs
        .get(&(format!("{owner}/{repo}"), commit))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"})));
    };
    state.reads += 1;
    (
        StatusCode::OK,
        Json(json!({
            "type": "file",
            "encoding": "base64",
            "name": "buildspec.yml",
            "path": "buildspec.yml",
            "size": text.len(),
            "content": base64::engine::general_purpose::STANDARD.encode(text),
        })),
    )
}

async fn compare() -> Json<Value> {
    Json(json!({"total_commits": 0, "commits": []}))
}

async fn write_status(
    State(state): State<Arc<Mutex<GitHubState>>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default();
    let write = StatusWrite {
        repository: format!("{owner}/{repo}"),
        sha,
        context: text("context").to_owned(),
        state: text("state").to_owned(),
    };
    let mut state = lock(&state);
    state.statuses.push(write);
    let id = state.statuses.len();
    (StatusCode::CREATED, Json(json!({"id": id})))
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
    async fn github_serves_buildspecs_and_records_statuses() {
        let github = FakeGitHub::start(HashMap::from([(
            ("chaos/app-0".to_owned(), "abc".to_owned()),
            "version: 0.2\n".to_owned(),
        )]))
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let found: Value = http
            .get(format!(
                "{}/repos/chaos/app-0/contents/buildspec.yml?ref=abc",
                github.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["content"], "dmVyc2lvbjogMC4yCg==");
        let missing = http
            .get(format!(
                "{}/repos/chaos/app-0/contents/buildspec.yml?ref=zzz",
                github.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let written = http
            .post(format!("{}/repos/chaos/app-0/statuses/abc", github.url))
            .json(&json!({"state": "success", "context": "prx-ci/x86_64"}))
            .send()
            .await
            .unwrap();
        assert_eq!(written.status(), 201);
        assert_eq!(
            github.statuses(),
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
