//! One stateful fake GitHub, served over HTTP on a loopback port, for tests that drive the real
//! [`GitHubClient`](crate::github::GitHubClient) (and services built on it).
//!
//! It keeps repositories (commits with their trees, branches), commit statuses, check runs,
//! the GitHub App's installations and the installation tokens it minted, and a webhook
//! deliveries log; tests set state up and read it back through the Rust API. Authentication is
//! GitHub's: in App mode `/app/...` needs a JWT signed by the App's key (RS256, `iss` the App
//! id, at most 10 minutes long) and repository calls an unexpired, unrevoked installation
//! token of the repository's installation; in token mode the configured token.
//!
//! ```no_run
//! # async fn example() {
//! use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub};
//! let github = FakeGitHub::start(FakeAuth::Token("t0ken".into())).await;
//! github.add_commit("octo/hello", FakeCommit::new("a".repeat(40)).file("buildspec.yml", "version: 0.2\n"));
//! // ... point `[github] api_url` at github.url() ...
//! # }
//! ```
//!
//! Served: `GET /repos/{o}/{r}/contents/{path}?ref=`, `GET /repos/{o}/{r}/commits/{ref}`,
//! `GET /repos/{o}/{r}/compare/{base}...{head}`, `POST /repos/{o}/{r}/statuses/{sha}`,
//! `POST /repos/{o}/{r}/check-runs`, `PATCH|GET /repos/{o}/{r}/check-runs/{id}`,
//! `GET /repos/{o}/{r}/commits/{ref}/check-runs`, `GET /repos/{o}/{r}/installation`,
//! `GET /app`, `POST /app/installations/{id}/access_tokens`, `GET /app/hook/deliveries`,
//! `GET /app/hook/deliveries/{id}`, `POST /app/hook/deliveries/{id}/attempts`, and the same
//! three under `/orgs/{org}/hooks/1/` (the one webhook as an organisation hook, id 1; token
//! mode's token or any installation token). Directory
//! listings of `contents` are not served (404). Files are also served raw, as
//! `raw.githubusercontent.com` serves a public repository's (no credentials), at
//! `GET /raw/{o}/{r}/{ref}/{path}` ([`FakeGitHub::raw_url`]).
//!
//! Every request is recorded before it is answered ([`FakeGitHub::requests`]), so a test
//! counts the calls it expects (or that none were made). Faults (5xx, rate limits, lost
//! answers, delays): put a [`FaultProxy`](super::fault_proxy::FaultProxy) in front and point
//! the client at the proxy; it counts every attempt, faulted or forwarded.

mod api;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use self::state::State;
pub use self::state::{
    CheckRunWrite, FakeApp, FakeAuth, FakeCheckRun, FakeCommit, FakeDelivery, FakeRequest,
    FakeStatus,
};

/// The largest request body the fake reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug)]
struct Shared {
    url: String,
    http: reqwest::Client,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fake: listening on a loopback port until dropped.
#[derive(Debug)]
pub struct FakeGitHub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FakeGitHub {
    /// Starts the fake on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(auth: FakeAuth) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake GitHub: cannot bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("fake GitHub: listener has no address");
        let shared = Arc::new(Shared {
            url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("fake GitHub: cannot build the HTTP client"),
            state: Mutex::new(State::new(auth)),
        });
        let router = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "fake GitHub stopped");
            }
        });
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`: the `[github] api_url` of clients of the fake.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    // ---- repositories ----

    /// Creates `full_name` (`owner/repo`) if new; returns its id.
    pub fn add_repository(&self, full_name: &str) -> u64 {
        self.state().repo_mut(full_name).id
    }

    /// Adds `commit` to `full_name` (created if new). Files it does not set are inherited from
    /// its first parent, if that is already there.
    pub fn add_commit(&self, full_name: &str, commit: FakeCommit) {
        self.state().add_commit(full_name, commit);
    }

    /// Sets `path` to `contents` in commit `sha` of `full_name` (both created if new).
    pub fn set_file(&self, full_name: &str, sha: &str, path: &str, contents: impl Into<Vec<u8>>) {
        let mut state = self.state();
        let repo = state.repo_mut(full_name);
        repo.commits
            .entry(sha.to_owned())
            .or_insert_with(|| FakeCommit::new(sha))
            .files
            .insert(path.to_owned(), contents.into());
    }

    /// Where `raw.githubusercontent.com` would serve `path` of `full_name` at `reference` (a
    /// SHA or a branch): `<url>/raw/{owner}/{repo}/{ref}/{path}`, unauthenticated; a file that
    /// is not there answers `404: Not Found`.
    pub fn raw_url(&self, full_name: &str, reference: &str, path: &str) -> String {
        format!("{}/raw/{full_name}/{reference}/{path}", self.shared.url)
    }

    /// Points `branch` of `full_name` at `sha` (refs resolve to SHAs or branch names; a
    /// contents call without `ref` reads `main`).
    pub fn set_branch(&self, full_name: &str, branch: &str, sha: &str) {
        self.state()
            .repo_mut(full_name)
            .branches
            .insert(branch.to_owned(), sha.to_owned());
    }

    // ---- the App, installations, tokens ----

    /// Installs the App as `installation` on `repositories` (created if new).
    pub fn install(&self, installation: u64, repositories: &[&str]) {
        let mut state = self.state();
        for repository in repositories {
            state.repo_mut(repository);
        }
        state
            .installations
            .entry(installation)
            .or_default()
            .extend(repositories.iter().map(|r| r.to_lowercase()));
    }

    /// Uninstalls the App's `installation`: its tokens stop working, minting answers 404.
    pub fn uninstall(&self, installation: u64) {
        let mut state = self.state();
        state.installations.remove(&installation);
        for issued in state.tokens.values_mut() {
            if issued.installation == installation {
                issued.revoked = true;
            }
        }
    }

    /// How long tokens minted from now on live (default one hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().token_lifetime =
            time::Duration::try_from(lifetime).expect("a token lifetime fits time::Duration");
    }

    /// Installation tokens minted so far.
    pub fn mints(&self) -> usize {
        self.state().mints.len()
    }

    /// Installation tokens minted so far for `installation`.
    pub fn mints_for(&self, installation: u64) -> usize {
        self.state()
            .mints
            .iter()
            .filter(|&&i| i == installation)
            .count()
    }

    /// The tokens minted for `installation` so far (to check they never leak).
    pub fn issued_tokens(&self, installation: u64) -> Vec<String> {
        self.state()
            .tokens
            .iter()
            .filter(|(_, issued)| issued.installation == installation)
            .map(|(token, _)| token.clone())
            .collect()
    }

    /// Revokes every token of `installation` issued so far: the next call with one gets 401.
    pub fn revoke_tokens(&self, installation: u64) {
        for issued in self.state().tokens.values_mut() {
            if issued.installation == installation {
                issued.revoked = true;
            }
        }
    }

    /// Tokens of `installation` minted from now on are refused (every call with one gets
    /// 401), as for a GitHub that keeps refusing the App's installation.
    pub fn refuse_tokens(&self, installation: u64) {
        self.state().refused.insert(installation);
    }

    // ---- what was written ----

    /// Every commit status written, in order.
    pub fn statuses(&self) -> Vec<FakeStatus> {
        self.state().statuses.clone()
    }

    /// Check runs as they stand, by id.
    pub fn check_runs(&self) -> Vec<FakeCheckRun> {
        self.state().check_runs.values().cloned().collect()
    }

    /// Every check-run write (create or update), in order.
    pub fn check_run_writes(&self) -> Vec<CheckRunWrite> {
        self.state().check_run_writes.clone()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state().requests.clone()
    }

    // ---- webhooks ----

    /// Where webhooks go (e.g. the ingress's `/webhooks/github`) and the secret they are
    /// signed with.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.state().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    /// Delivers `event` with `payload` to the webhook URL as GitHub does (signed, with a new
    /// delivery GUID), records the delivery (failed when the receiver is unreachable or
    /// answers non-2xx) and returns it. `action`, `installation.id` and `repository.id` come
    /// from the payload.
    ///
    /// # Panics
    /// When no webhook URL is set.
    pub async fn send_webhook(&self, event: &str, payload: Value) -> FakeDelivery {
        assert!(
            self.state().webhook.is_some(),
            "fake GitHub: set_webhook before send_webhook"
        );
        let guid = uuid::Uuid::new_v4().to_string();
        deliver(&self.shared, event, &guid, payload, false).await
    }

    /// Every delivery, oldest first.
    pub fn deliveries(&self) -> Vec<FakeDelivery> {
        self.state().deliveries.clone()
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, GitHub's `X-Hub-Signature-256`.
pub fn signature_256(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `payload` to the webhook URL and records the delivery.
async fn deliver(
    shared: &Shared,
    event: &str,
    guid: &str,
    payload: Value,
    redelivery: bool,
) -> FakeDelivery {
    let (webhook, app_id) = {
        let state = shared.lock();
        (state.webhook.clone(), state.app_id())
    };
    let body = serde_json::to_vec(&payload).expect("a JSON value serializes");
    let mut headers = BTreeMap::from([
        ("Accept".to_owned(), "*/*".to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("User-Agent".to_owned(), "GitHub-Hookshot/fake".to_owned()),
        ("X-GitHub-Delivery".to_owned(), guid.to_owned()),
        ("X-GitHub-Event".to_owned(), event.to_owned()),
        ("X-GitHub-Hook-ID".to_owned(), "1".to_owned()),
        (
            "X-GitHub-Hook-Installation-Target-Type".to_owned(),
            "integration".to_owned(),
        ),
    ]);
    if let Some(app_id) = app_id {
        headers.insert(
            "X-GitHub-Hook-Installation-Target-ID".to_owned(),
            app_id.to_string(),
        );
    }
    let started = Instant::now();
    let (status_code, status, response_body) = match &webhook {
        None => (0, "no webhook URL configured".to_owned(), String::new()),
        Some((url, secret)) => {
            headers.insert(
                "X-Hub-Signature-256".to_owned(),
                signature_256(secret, &body),
            );
            let mut request = shared.http.post(url).body(body.clone());
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Err(_) => (0, "failed to connect".to_owned(), String::new()),
                Ok(response) => {
                    let code = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    let status = if (200..300).contains(&code) {
                        "OK".to_owned()
                    } else {
                        format!("Invalid HTTP Response: {code}")
                    };
                    (code, status, text)
                }
            }
        }
    };
    let duration = started.elapsed().as_secs_f64();
    let mut state = shared.lock();
    let delivery = FakeDelivery {
        id: state.next_id(),
        guid: guid.to_owned(),
        delivered_at: api::github_time(OffsetDateTime::now_utc()),
        redelivery,
        duration,
        status,
        status_code,
        event: event.to_owned(),
        action: payload
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_owned),
        installation_id: payload.pointer("/installation/id").and_then(Value::as_u64),
        repository_id: payload.pointer("/repository/id").and_then(Value::as_u64),
        request_headers: headers,
        payload,
        response_body,
    };
    state.deliveries.push(delivery.clone());
    delivery
}

async fn serve(AxumState(shared): AxumState<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let outcome = {
        let mut state = shared.lock();
        state.requests.push(FakeRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
        });
        let incoming = api::Incoming {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query,
            authorization: parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            body: &body,
        };
        api::handle(&mut state, &shared.url, &incoming)
    };
    let reply = match outcome {
        api::Outcome::Reply(reply) => reply,
        api::Outcome::Redeliver { delivery, reply } => {
            deliver(
                &shared,
                &delivery.event,
                &delivery.guid,
                delivery.payload,
                true,
            )
            .await;
            reply
        }
        api::Outcome::Raw { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                status,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                body,
            )
                .into_response();
        }
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(reply.body)).into_response();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// An RSA key pair for a test GitHub App: the private key as PEM (PKCS#8, what
/// `[github] private_key` takes) and the public key for [`FakeApp`].
#[derive(Clone)]
pub struct TestAppKey {
    pub private_pem: String,
    pub public_key_der: Vec<u8>,
}

impl std::fmt::Debug for TestAppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAppKey").finish_non_exhaustive()
    }
}

impl TestAppKey {
    /// A new 2048-bit key (takes a moment: prefer [`TestAppKey::shared`]).
    pub fn generate() -> Self {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("aws-lc-rs generates RSA keys");
        let pkcs8 = pair.as_der().expect("an RSA key has a PKCS#8 form");
        let encoded = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let mut private_pem = "-----BEGIN PRIVATE KEY-----\n".to_owned();
        for line in encoded.as_bytes().chunks(64) {
            private_pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            private_pem.push('\n');
        }
        private_pem.push_str("-----END PRIVATE KEY-----\n");
        Self {
            private_pem,
            public_key_der: pair.public_key().as_ref().to_vec(),
        }
    }

    /// One key per test binary.
    pub fn shared() -> &'static Self {
        static KEY: std::sync::LazyLock<TestAppKey> =
            std::sync::LazyLock::new(TestAppKey::generate);
        &KEY
    }

    /// The fake's view of an App `app_id` with this key.
    pub fn app(&self, app_id: u64) -> FakeApp {
        FakeApp {
            app_id,
            public_key_der: self.public_key_der.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_githubs() {
        // GitHub's documented example (docs: "Validating webhook deliveries").
        assert_eq!(
            signature_256("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
