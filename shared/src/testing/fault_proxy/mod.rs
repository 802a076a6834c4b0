//! A fault-injecting HTTP reverse proxy for tests and chaos runs: it stands in front of one
//! upstream (the AWS emulator, a fake GitHub or Slack) and, by rules changed at run time,
//! answers without forwarding, forwards and loses the answer, or delays; it records every
//! request and counts the faults it injected.
//!
//! ```no_run
//! # async fn example(moto: &prx_ci_shared::testing::MotoServer) {
//! use prx_ci_shared::testing::fault_proxy::{Fault, FaultProxy, FaultRule, Match};
//! let proxy = FaultProxy::start(&moto.endpoint()).await;
//! // The next two PutParameter calls are throttled; the third goes through.
//! proxy.add(FaultRule::new(Match::aws("AmazonSSM.PutParameter"), Fault::ssm_throttling()).times(2));
//! // ... point the SDK at proxy.url() ...
//! assert_eq!(proxy.count(&Match::aws("AmazonSSM.PutParameter")), 3);
//! # }
//! ```
//!
//! Rules are tried in the order they were added; the first that matches the request and fires
//! (its next-N budget is not spent, or its seeded coin comes up) decides what happens. Bodies
//! are buffered (requests and answers are small). The seeded coin is drawn in the order
//! requests arrive: sequential requests get the same faults from the same seed, concurrent ones
//! may interleave differently from run to run.

mod rules;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use tokio_util::sync::CancellationToken;

/// The largest request or answer body the proxy buffers.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The seed of [`FaultProxy::start`].
pub const DEFAULT_SEED: u64 = 0x5eed;
/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), plus the ones
/// the proxy recomputes.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub use rules::{Fault, FaultKind, FaultRule, Firing, Match};

/// The handle of an added rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(u64);

/// What the proxy did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the upstream's answer passed through.
    Forwarded,
    /// Answered without forwarding.
    Injected(FaultKind),
    /// Held back this long, then forwarded.
    Delayed(Duration),
    /// Forwarded (the upstream answered `upstream_status`), then the answer replaced.
    LostAnswer { upstream_status: u16 },
    /// The upstream could not be reached; answered 502.
    UpstreamUnreachable,
}

impl Outcome {
    /// Whether the upstream received the request.
    pub fn reached_upstream(&self) -> bool {
        matches!(
            self,
            Self::Forwarded | Self::Delayed(_) | Self::LostAnswer { .. }
        )
    }
}

/// One request as the proxy saw it, recorded when it was answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    /// `X-Amz-Target`, for AWS JSON protocol calls.
    pub target: Option<String>,
    pub body: Bytes,
    pub outcome: Outcome,
    /// The status the client was given.
    pub status: u16,
    /// When the request arrived (to measure the waits between attempts).
    pub received: std::time::Instant,
}

impl RecordedRequest {
    /// Whether `matcher` matches this request.
    pub fn matches(&self, matcher: &Match) -> bool {
        matcher.matches(&self.method, &self.path, self.target.as_deref())
    }
}

#[derive(Debug)]
struct Rule {
    id: RuleId,
    rule: FaultRule,
    fired: u64,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<Rule>,
    next_rule: u64,
    rng: StdRng,
    log: Vec<RecordedRequest>,
    injected: BTreeMap<FaultKind, u64>,
}

impl Inner {
    /// The fault for this request, if a rule fires; counts it.
    fn decide(&mut self, method: &str, path: &str, target: Option<&str>) -> Option<Fault> {
        let Self {
            rules,
            rng,
            injected,
            ..
        } = self;
        for rule in rules.iter_mut() {
            if !rule.rule.matcher.matches(method, path, target) {
                continue;
            }
            let fires = match &mut rule.rule.firing {
                Firing::Always => true,
                Firing::Next(0) => false,
                Firing::Next(n) => {
                    *n -= 1;
                    true
                }
                Firing::Probability(p) => rng.random_bool(*p),
            };
            if fires {
                rule.fired += 1;
                *injected.entry(rule.rule.fault.kind()).or_default() += 1;
                return Some(rule.rule.fault.clone());
            }
        }
        None
    }
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The proxy: listening on a loopback port until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:5000`) on a free
    /// loopback port, with the RNG seeded by [`DEFAULT_SEED`].
    pub async fn start(upstream: &str) -> Self {
        Self::start_seeded(upstream, DEFAULT_SEED).await
    }

    /// Starts a proxy whose probabilistic rules draw from an RNG seeded with `seed`.
    pub async fn start_seeded(upstream: &str, seed: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fault proxy: cannot bind a loopback port");
        Self::serve(listener, upstream, seed)
    }

    /// Serves on `listener` (a chaos run that needs a known address binds it itself).
    ///
    /// # Panics
    /// When `listener` has no local address or `upstream` is not an `http(s)` URL.
    pub fn serve(listener: tokio::net::TcpListener, upstream: &str, seed: u64) -> Self {
        let parsed = url::Url::parse(upstream)
            .unwrap_or_else(|e| panic!("fault proxy: upstream {upstream:?} is not a URL: {e}"));
        assert!(
            matches!(parsed.scheme(), "http" | "https"),
            "fault proxy: upstream {upstream:?} is not an http(s) URL"
        );
        let addr = listener
            .local_addr()
            .expect("fault proxy: listener has no address");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .expect("fault proxy: cannot build the HTTP client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http,
            inner: Mutex::new(Inner {
                rules: Vec::new(),
                next_rule: 0,
                rng: StdRng::seed_from_u64(seed),
                log: Vec::new(),
                injected: BTreeMap::new(),
            }),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "fault proxy stopped");
            }
        });
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`: where clients go instead of the upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream every request is forwarded to.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Adds a rule after the existing ones.
    pub fn add(&self, rule: FaultRule) -> RuleId {
        let mut inner = self.shared.lock();
        let id = RuleId(inner.next_rule);
        inner.next_rule += 1;
        inner.rules.push(Rule { id, rule, fired: 0 });
        id
    }

    /// Removes a rule; returns whether it was there.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut inner = self.shared.lock();
        let before = inner.rules.len();
        inner.rules.retain(|r| r.id != id);
        inner.rules.len() != before
    }

    /// Removes every rule: from now on every request is forwarded untouched.
    pub fn clear(&self) {
        self.shared.lock().rules.clear();
    }

    /// How many times a rule fired (0 for a removed rule).
    pub fn fired(&self, id: RuleId) -> u64 {
        self.shared
            .lock()
            .rules
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.fired)
    }

    /// Every answered request, in the order they were answered.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().log.clone()
    }

    /// How many answered requests `matcher` matches (attempts, faulted or not).
    pub fn count(&self, matcher: &Match) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.matches(matcher))
            .count()
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<FaultKind, u64> {
        self.shared.lock().injected.clone()
    }

    /// Faults injected so far, all kinds.
    pub fn injected_total(&self) -> u64 {
        self.shared.lock().injected.values().sum()
    }

    /// Forgets the recorded requests (the fault counts stay).
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Stops listening (also on drop).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let received = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("fault proxy: cannot read the request body: {err}"),
            );
        }
    };
    let fault = shared.lock().decide(&method, &path, target.as_deref());

    let (outcome, response) = match fault {
        Some(Fault::Respond {
            kind,
            status,
            headers,
            body,
        }) => (Outcome::Injected(kind), respond(status, &headers, body)),
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            match forward(&shared, &parts, query.as_deref(), body.clone()).await {
                Ok(response) => (Outcome::Delayed(delay), response),
                Err(response) => (Outcome::UpstreamUnreachable, response),
            }
        }
        Some(Fault::LoseAnswer { status, body: lost }) => {
            match forward(&shared, &parts, query.as_deref(), body.clone()).await {
                Ok(upstream) => (
                    Outcome::LostAnswer {
                        upstream_status: upstream.status().as_u16(),
                    },
                    respond(
                        status,
                        &[("content-type".to_owned(), "application/json".to_owned())],
                        lost,
                    ),
                ),
                Err(response) => (Outcome::UpstreamUnreachable, response),
            }
        }
        None => match forward(&shared, &parts, query.as_deref(), body.clone()).await {
            Ok(response) => (Outcome::Forwarded, response),
            Err(response) => (Outcome::UpstreamUnreachable, response),
        },
    };
    shared.lock().log.push(RecordedRequest {
        method,
        path,
        query,
        target,
        body,
        outcome,
        status: response.status().as_u16(),
        received,
    });
    response
}

/// Sends the request upstream; its answer, or a 502 naming why it could not be had.
async fn forward(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    query: Option<&str>,
    body: Bytes,
) -> Result<Response, Response> {
    let mut url = format!("{}{}", shared.upstream, parts.uri.path());
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    let sent = shared
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let unreachable = |err: reqwest::Error| {
        plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "fault proxy: cannot reach upstream {}: {err}",
                shared.upstream
            ),
        )
    };
    let upstream = sent.map_err(unreachable)?;
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = upstream.bytes().await.map_err(unreachable)?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

fn respond(status: u16, headers: &[(String, String)], body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(name, "fault proxy: skipping an invalid injected header"),
        }
    }
    response
}

fn plain(status: StatusCode, message: String) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
