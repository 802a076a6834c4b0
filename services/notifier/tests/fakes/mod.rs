//! Fake Slack Web API: a small stateful axum server on loopback that records every request,
//! keeps the messages it holds, and can be told to fail; and what Slack makes of mrkdwn.
//! GitHub is the shared stateful fake, `prx_ci_shared::testing::fake_github`.

#![allow(
    dead_code,
    reason = "each test binary and the bench use their own part of the fakes"
)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub at: Instant,
    pub body: Value,
}

/// A message the fake Slack holds.
#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub text: String,
    /// The section's mrkdwn.
    pub mrkdwn: String,
    pub color: String,
    pub build: String,
    pub updates: u32,
}

/// A canned failure answered instead of the real thing.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub error: Option<&'static str>,
}

#[derive(Debug, Default)]
pub struct SlackState {
    pub calls: Vec<Call>,
    pub messages: Vec<Message>,
    pub failures: HashMap<String, VecDeque<Failure>>,
    next_ts: u64,
}

/// The fake Slack.
#[derive(Debug, Clone)]
pub struct FakeSlack {
    pub url: String,
    pub state: Arc<Mutex<SlackState>>,
}

pub const SLACK_TOKEN: &str = "xoxb-test-token";

fn channel_id(channel: &str) -> String {
    match channel.strip_prefix('#') {
        Some(name) => format!("C{}", name.to_uppercase().replace('-', "")),
        None => channel.to_owned(),
    }
}

impl FakeSlack {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(SlackState::default()));
        let router = Router::new()
            .route("/chat.postMessage", post(post_message))
            .route("/chat.update", post(update))
            .route("/conversations.history", get(history))
            .with_state(state.clone());
        let url = serve(router).await;
        Self { url, state }
    }

    /// Answers the next calls of `method` with `failures`, in order.
    pub fn fail_next(&self, method: &str, failures: Vec<Failure>) {
        self.state
            .lock()
            .unwrap()
            .failures
            .entry(method.to_owned())
            .or_default()
            .extend(failures);
    }

    /// A message already in the channel (as if posted before a crash).
    pub fn seed(&self, channel: &str, build: &str, text: &str) -> String {
        let mut state = self.state.lock().unwrap();
        state.next_ts += 1;
        let ts = format!("1764144000.{:06}", state.next_ts);
        state.messages.push(Message {
            channel: channel_id(channel),
            ts: ts.clone(),
            text: text.to_owned(),
            mrkdwn: text.to_owned(),
            color: String::new(),
            build: build.to_owned(),
            updates: 0,
        });
        ts
    }

    /// Deletes every message (as a person deleting them in Slack would).
    pub fn delete_all(&self) {
        self.state.lock().unwrap().messages.clear();
    }

    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    pub fn all_calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
}

fn authorised(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SLACK_TOKEN}"))
}

fn canned(state: &mut SlackState, method: &str) -> Option<Response> {
    let failure = state.failures.get_mut(method)?.pop_front()?;
    let mut response = (
        StatusCode::from_u16(failure.status).unwrap(),
        Json(json!({"ok": false, "error": failure.error.unwrap_or("ratelimited")})),
    )
        .into_response();
    if let Some(after) = failure.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.to_string().parse().unwrap());
    }
    Some(response)
}

fn section(body: &Value) -> (String, String) {
    let attachment = &body["attachments"][0];
    (
        attachment["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        attachment["color"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn post_message(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut state = state.lock().unwrap();
    state.calls.push(Call {
        method: "chat.postMessage".into(),
        at: Instant::now(),
        body: body.clone(),
    });
    if !authorised(&headers) {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if let Some(response) = canned(&mut state, "chat.postMessage") {
        return response;
    }
    let channel = channel_id(body["channel"].as_str().unwrap_or_default());
    state.next_ts += 1;
    let ts = format!("1764144000.{:06}", state.next_ts);
    let (mrkdwn, color) = section(&body);
    state.messages.push(Message {
        channel: channel.clone(),
        ts: ts.clone(),
        text: body["text"].as_str().unwrap_or_default().to_owned(),
        mrkdwn,
        color,
        build: body["metadata"]["event_payload"]["build"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        updates: 0,
    });
    Json(json!({"ok": true, "channel": channel, "ts": ts})).into_response()
}

async fn update(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut state = state.lock().unwrap();
    state.calls.push(Call {
        method: "chat.update".into(),
        at: Instant::now(),
        body: body.clone(),
    });
    if !authorised(&headers) {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if let Some(response) = canned(&mut state, "chat.update") {
        return response;
    }
    let channel = body["channel"].as_str().unwrap_or_default().to_owned();
    let ts = body["ts"].as_str().unwrap_or_default().to_owned();
    let (mrkdwn, color) = section(&body);
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    match state
        .messages
        .iter_mut()
        .find(|m| m.channel == channel && m.ts == ts)
    {
        Some(message) => {
            message.mrkdwn = mrkdwn;
            message.color = color;
            message.text = text;
            message.updates += 1;
            Json(json!({"ok": true, "channel": channel, "ts": ts})).into_response()
        }
        None => Json(json!({"ok": false, "error": "message_not_found"})).into_response(),
    }
}

async fn history(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    state.calls.push(Call {
        method: "conversations.history".into(),
        at: Instant::now(),
        body: json!(query),
    });
    if !authorised(&headers) {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let channel = channel_id(query.get("channel").map_or("", String::as_str));
    let messages: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m.channel == channel)
        .map(|m| {
            json!({
                "type": "message",
                "ts": m.ts,
                "text": m.text,
                "metadata": {"event_type": "prx_ci_build", "event_payload": {"build": m.build}},
            })
        })
        .collect();
    Json(json!({"ok": true, "messages": messages})).into_response()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// What Slack makes of a mrkdwn text: the links it shows, the special commands it acts on
/// (`<!channel>`, `<@U123>`, `<#C123>`, `<!subteam^S1>`) and, since Slack pings on them when
/// it parses names, plain-text broadcasts (`@here`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    /// `(url, label)` of every `<url|label>` (or `<url>`).
    pub links: Vec<(String, String)>,
    pub mentions: Vec<String>,
    /// A `<` with no `>` after it.
    pub unclosed: usize,
    /// Text shown outside link targets with a `&` that begins no `&amp;`, `&lt;` or `&gt;`.
    pub broken_entities: Vec<String>,
}

/// Parses `text` the way Slack reads mrkdwn markup (the parts that can notify or link).
pub fn parse_mrkdwn(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut shown = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        shown.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            parsed.unclosed += 1;
            shown.push_str(after);
            rest = "";
            break;
        };
        let inner = &after[..end];
        if inner.starts_with(['!', '@', '#']) {
            parsed.mentions.push(format!("<{inner}>"));
        } else {
            let (url, label) = inner.split_once('|').unwrap_or((inner, inner));
            parsed.links.push((url.to_owned(), label.to_owned()));
            shown.push_str(label);
        }
        rest = &after[end + 1..];
    }
    shown.push_str(rest);
    let lower = shown.to_ascii_lowercase();
    for word in ["@channel", "@here", "@everyone", "@group"] {
        parsed
            .mentions
            .extend(lower.matches(word).map(str::to_owned));
    }
    for (i, _) in shown.match_indices('&') {
        if !["&amp;", "&lt;", "&gt;"]
            .iter()
            .any(|e| shown[i..].starts_with(e))
        {
            parsed
                .broken_entities
                .push(shown[i..].chars().take(8).collect());
        }
    }
    parsed
}

/// The links of `parsed` that go anywhere but under one of `allowed` (URL prefixes, compared
/// after the URL is normalised, so `..` cannot climb out). An IAM Identity Center deep link
/// (`…awsapps.com/start/#/console?…`) must name one account, one role and one destination,
/// and that destination must itself be allowed.
pub fn forged_links(parsed: &Parsed, allowed: &[&str]) -> Vec<String> {
    fn allowed_url(url: &str, allowed: &[&str]) -> bool {
        let Ok(parsed) = url::Url::parse(url) else {
            return false;
        };
        let normalised = parsed.as_str();
        if parsed
            .host_str()
            .is_some_and(|h| h.ends_with(".awsapps.com"))
        {
            let Some(query) = parsed.fragment().and_then(|f| f.strip_prefix("/console?")) else {
                return false;
            };
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let one = |name: &str| pairs.iter().filter(|(k, _)| k == name).count() == 1;
            let destination = pairs.iter().find(|(k, _)| k == "destination");
            return pairs.len() == 3
                && one("account_id")
                && one("role_name")
                && destination
                    .is_some_and(|(_, d)| !d.contains("awsapps.com") && allowed_url(d, allowed))
                && allowed.iter().any(|p| normalised.starts_with(p));
        }
        allowed.iter().any(|p| normalised.starts_with(p))
    }
    parsed
        .links
        .iter()
        .filter(|(url, _)| !allowed_url(url, allowed))
        .map(|(url, label)| format!("<{url}|{label}>"))
        .collect()
}

/// Asserts that `text`, shown by Slack, notifies nobody, links nowhere but `allowed`, and
/// shows no markup or broken escape.
pub fn assert_inert(text: &str, allowed: &[&str]) {
    let parsed = parse_mrkdwn(text);
    assert!(
        parsed.mentions.is_empty(),
        "mentions {:?} in\n{text}",
        parsed.mentions
    );
    assert_eq!(parsed.unclosed, 0, "unclosed `<` in\n{text}");
    assert!(
        parsed.broken_entities.is_empty(),
        "broken escapes {:?} in\n{text}",
        parsed.broken_entities
    );
    let forged = forged_links(&parsed, allowed);
    assert!(forged.is_empty(), "forged links {forged:?} in\n{text}");
}
