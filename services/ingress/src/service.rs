//! The HTTP service: `POST /webhooks/github` plus the ops endpoints, and the store step.
//!
//! Order of checks, each answered at the first failure:
//! 1. a signature header is present and well-formed (else 401, the body is not even read);
//! 2. the body fits `max_body_bytes` (else 413);
//! 3. the signature matches a configured secret (else 401);
//! 4. `X-GitHub-Event` and `X-GitHub-Delivery` are present (else 400);
//! 5. `ping` is answered 200; an event type outside `allowed_events` 202 "ignored";
//! 6. the body is a JSON object (raw or form-encoded `payload=`) (else 400);
//! 7. the `WebhookReceived` event is stored in JetStream: 202 after the ack (also for a
//!    duplicate), 503 if that does not happen within `store_timeout`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use prx_ci_shared::config::Validate as _;
use prx_ci_shared::ops_http::{self, ReadinessCheck};
use prx_ci_shared::publish::EventPublisher;
use prx_ci_shared::subject::WEBHOOKS_STREAM;
use prx_ci_shared::{Runtime, Stored, telemetry};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::config::IngressConfig;
use crate::metrics::{IngressMetrics, Outcome};
use crate::signature::{Verifier, VerifyError};
use crate::webhook::{DELIVERY_HEADER, EVENT_HEADER, Webhook, WebhookHeaders};

/// Where GitHub posts deliveries.
pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// How often to look at the NATS connection while it is down (only during outages).
const RECONNECT_POLL: Duration = Duration::from_millis(20);

/// The ingress service. See the crate docs for how to run it.
#[derive(Debug)]
pub struct Ingress {
    state: Arc<Shared>,
    readiness_client: async_nats::Client,
    readiness_js: async_nats::jetstream::Context,
}

/// What every request needs (shared, immutable).
#[derive(Debug)]
struct Shared {
    verifier: Verifier,
    allowed_events: HashSet<String>,
    max_body_bytes: usize,
    store_timeout: Duration,
    publisher: EventPublisher,
    client: async_nats::Client,
    metrics: IngressMetrics,
}

impl Ingress {
    /// Validates `config` and registers the metrics in `registry`.
    pub fn new(
        rt: Runtime,
        config: IngressConfig,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [ingress]: {reason}"))?;
        let verifier = Verifier::new(&config.secrets, config.legacy_sha1)
            .context("cannot build the signature verifier")?;
        let metrics = IngressMetrics::register(registry);
        let max_body_bytes =
            storable_body_limit(config.max_body_bytes, rt.client.server_info().max_payload);
        let state = Shared {
            verifier,
            allowed_events: config.allowed_events.iter().cloned().collect(),
            max_body_bytes,
            store_timeout: config.store_timeout,
            publisher: rt.publisher.clone().with_ack_timeout(config.store_timeout),
            client: rt.client.clone(),
            metrics,
        };
        Ok(Self {
            state: Arc::new(state),
            readiness_client: rt.client,
            readiness_js: rt.js,
        })
    }

    /// `POST /webhooks/github` alone (with its body limit and request span).
    pub fn webhook_router(&self) -> Router {
        Router::new()
            .route(WEBHOOK_PATH, post(handle_webhook))
            .layer(DefaultBodyLimit::max(self.state.max_body_bytes))
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .with_state(Arc::clone(&self.state))
    }

    /// Ready when NATS is connected and the PRX_WEBHOOKS stream exists.
    pub fn readiness(&self) -> ReadinessCheck {
        ops_http::nats_readiness(
            self.readiness_client.clone(),
            self.readiness_js.clone(),
            vec![WEBHOOKS_STREAM],
        )
    }

    /// Everything the listener serves: the webhook route plus `/healthz`, `/readyz` and
    /// `/metrics` (of `registry`, the process-wide registry the ingress registered in).
    pub fn router(&self, registry: Arc<Registry>) -> Router {
        self.webhook_router()
            .merge(ops_http::ops_router(registry, self.readiness()))
    }

    /// Serves [`Ingress::router`] on `listener` until `shutdown` is cancelled, then lets
    /// in-flight requests finish (each is bounded by `store_timeout`) and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr().ok();
        tracing::info!(?address, path = WEBHOOK_PATH, "ingress listening");
        ops_http::serve(listener, self.router(registry), shutdown)
            .await
            .context("ingress HTTP server failed")?;
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// One span per request, named by delivery and event, child of the caller's `traceparent`.
/// Signature headers are never recorded.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let span = tracing::info_span!(
        "webhook",
        method = %request.method(),
        path = request.uri().path(),
        delivery = header(DELIVERY_HEADER),
        event = header(EVENT_HEADER),
    );
    let traceparent = header("traceparent");
    if !traceparent.is_empty() {
        telemetry::set_parent_from_traceparent(&span, traceparent);
    }
    span
}

async fn handle_webhook(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let _in_flight = state.metrics.in_flight();
    let reply = state.handle(request).await;
    state.metrics.count(reply.outcome());
    reply.into_response()
}

impl Shared {
    async fn handle(&self, request: Request) -> Reply {
        let (mut parts, body) = request.into_parts();
        let claimed = match self.verifier.claimed_signature(&parts.headers) {
            Ok(claimed) => claimed,
            Err(err) => return Reply::unauthorized(err),
        };
        let headers: HeaderMap = std::mem::take(&mut parts.headers);
        // The extractor honours the DefaultBodyLimit set on the route (413 above it).
        let body = match Bytes::from_request(Request::from_parts(parts, body), &()).await {
            Ok(body) => body,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                tracing::warn!(limit = self.max_body_bytes, "webhook body too large");
                return Reply::TooLarge {
                    limit: self.max_body_bytes,
                };
            }
            Err(rejection) => {
                return Reply::bad_request(format!("cannot read body: {}", rejection.body_text()));
            }
        };
        let verified = match self.verifier.verify(&claimed, body) {
            Ok(verified) => verified,
            Err(err) => return Reply::unauthorized(err),
        };
        let webhook_headers = match WebhookHeaders::parse(&headers) {
            Ok(h) => h,
            Err(err) => return Reply::bad_request(err.to_string()),
        };
        if webhook_headers.is_ping() {
            tracing::info!("ping answered");
            return Reply::Ping {
                delivery_id: webhook_headers.delivery_id,
            };
        }
        if !self.allowed_events.contains(&webhook_headers.event_name) {
            tracing::info!("event type not allowed: ignored");
            self.metrics.count_ignored(&webhook_headers.event_name);
            return Reply::Ignored {
                delivery_id: webhook_headers.delivery_id,
                event: webhook_headers.event_name,
            };
        }
        let webhook = match Webhook::parse(webhook_headers, &headers, verified) {
            Ok(webhook) => webhook,
            Err(err) => return Reply::bad_request(err.to_string()),
        };
        self.store(webhook).await
    }

    /// Stores the webhook and waits for JetStream's ack, within `store_timeout`.
    ///
    /// "Nothing half-done remains" on a 503: a stored message is all-or-nothing, and its
    /// message id is the delivery id, so the only way a 503'd delivery can still be stored is
    /// a late ack (the publish reached the server, the ack did not reach us in time, or
    /// async-nats flushed a buffered publish after a reconnect, or the caller hung up while we
    /// waited). That copy is harmless: when the delivery is redelivered (GitHub's "Redeliver",
    /// or an operator re-fetching failed deliveries) within the 72 h duplicate window of
    /// PRX_WEBHOOKS, JetStream collapses it into the stored one and we answer 202
    /// "duplicate", so the delivery ends up stored exactly once either way. To keep such late
    /// stores rare, nothing is handed to the client while it knows it is disconnected.
    async fn store(&self, webhook: Webhook) -> Reply {
        let started = Instant::now();
        let deadline = started + self.store_timeout;
        let delivery_id = webhook.delivery_id().to_owned();

        if !self.connected_by(deadline).await {
            self.metrics.observe_store(started.elapsed().as_secs_f64());
            tracing::error!(
                timeout = ?self.store_timeout,
                "NATS not connected: delivery not stored"
            );
            return Reply::Unavailable { delivery_id };
        }
        let envelope = webhook.into_envelope(OffsetDateTime::now_utc());
        let result = tokio::time::timeout_at(deadline, self.publisher.publish(&envelope)).await;
        self.metrics.observe_store(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(stored)) => {
                tracing::info!(
                    sequence = stored.sequence,
                    duplicate = stored.duplicate,
                    "delivery stored"
                );
                Reply::Stored {
                    delivery_id,
                    stored,
                }
            }
            Ok(Err(err)) => {
                let err = anyhow::Error::new(err);
                tracing::error!(error = format!("{err:#}"), "delivery not stored");
                Reply::Unavailable { delivery_id }
            }
            Err(_elapsed) => {
                tracing::error!(timeout = ?self.store_timeout, "delivery not stored in time");
                Reply::Unavailable { delivery_id }
            }
        }
    }

    /// Waits (until `deadline`) for the NATS connection to be up.
    async fn connected_by(&self, deadline: Instant) -> bool {
        use async_nats::connection::State::Connected;
        loop {
            if self.client.connection_state() == Connected {
                return true;
            }
            if Instant::now() + RECONNECT_POLL > deadline {
                return false;
            }
            tokio::time::sleep(RECONNECT_POLL).await;
        }
    }
}

/// The answer to a webhook request. The one place outcomes become HTTP statuses.
#[derive(Debug)]
enum Reply {
    Stored { delivery_id: String, stored: Stored },
    Ping { delivery_id: String },
    Ignored { delivery_id: String, event: String },
    Unauthorized(VerifyError),
    TooLarge { limit: usize },
    BadRequest(String),
    Unavailable { delivery_id: String },
}

impl Reply {
    fn unauthorized(err: VerifyError) -> Self {
        // The error names what was wrong, never the signature or a secret.
        tracing::warn!(reason = %err, "webhook rejected: not authenticated");
        Reply::Unauthorized(err)
    }

    fn bad_request(reason: String) -> Self {
        tracing::warn!(%reason, "webhook rejected: not a webhook");
        Reply::BadRequest(reason)
    }

    fn outcome(&self) -> Outcome {
        match self {
            Reply::Stored { stored, .. } if stored.duplicate => Outcome::Duplicate,
            Reply::Stored { .. } => Outcome::Stored,
            Reply::Ping { .. } => Outcome::Ping,
            Reply::Ignored { .. } => Outcome::Ignored,
            Reply::Unauthorized(_) => Outcome::Unauthorized,
            Reply::TooLarge { .. } => Outcome::TooLarge,
            Reply::BadRequest(_) => Outcome::BadRequest,
            Reply::Unavailable { .. } => Outcome::Unavailable,
        }
    }
}

/// The JSON body of every answer.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Answer<'_> {
    fn status(status: &str) -> Answer<'_> {
        Answer {
            status,
            delivery: None,
            stream: None,
            sequence: None,
            duplicate: None,
            event: None,
            reason: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let (code, answer) = match &self {
            Reply::Stored {
                delivery_id,
                stored,
            } => (
                StatusCode::ACCEPTED,
                Answer {
                    delivery: Some(delivery_id),
                    stream: Some(&stored.stream),
                    sequence: Some(stored.sequence),
                    duplicate: Some(stored.duplicate),
                    ..Answer::status(if stored.duplicate {
                        "duplicate"
                    } else {
                        "stored"
                    })
                },
            ),
            Reply::Ping { delivery_id } => (
                StatusCode::OK,
                Answer {
                    delivery: Some(delivery_id),
                    ..Answer::status("pong")
                },
            ),
            Reply::Ignored { delivery_id, event } => (
                StatusCode::ACCEPTED,
                Answer {
                    delivery: Some(delivery_id),
                    event: Some(event),
                    reason: Some("event type not in allowed_events; not stored".to_owned()),
                    ..Answer::status("ignored")
                },
            ),
            Reply::Unauthorized(err) => (
                StatusCode::UNAUTHORIZED,
                Answer {
                    reason: Some(err.to_string()),
                    ..Answer::status("unauthorized")
                },
            ),
            Reply::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Answer {
                    reason: Some(format!("body larger than {limit} bytes")),
                    ..Answer::status("too_large")
                },
            ),
            Reply::BadRequest(reason) => (
                StatusCode::BAD_REQUEST,
                Answer {
                    reason: Some(reason.clone()),
                    ..Answer::status("bad_request")
                },
            ),
            Reply::Unavailable { delivery_id } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Answer {
                    delivery: Some(delivery_id),
                    // Opaque on purpose: the cause is in the logs.
                    reason: Some("the delivery could not be stored; redeliver it".to_owned()),
                    ..Answer::status("unavailable")
                },
            ),
        };
        match serde_json::to_vec(&answer) {
            Ok(mut body) => {
                body.push(b'\n');
                (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(_) => code.into_response(),
        }
    }
}

/// Room the envelope and headers need around a webhook body in one NATS message.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;

/// The body limit actually enforced: the configured one, lowered to what the broker can carry
/// (its `max_payload`, 1 MB by default while GitHub sends up to 25 MB). A body the broker
/// cannot store is answered 413 at once rather than 503 on every redelivery.
fn storable_body_limit(configured: usize, server_max_payload: usize) -> usize {
    let storable = server_max_payload.saturating_sub(ENVELOPE_OVERHEAD);
    if storable < configured {
        tracing::warn!(
            configured,
            server_max_payload,
            enforced = storable,
            "the NATS server's max_payload is below the webhook size limit; larger webhooks \
             get 413. Set `max_payload: 32MB` in the nats-server configuration (deploy/nats)"
        );
        storable
    } else {
        configured
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn the_body_limit_fits_the_broker() {
        assert_eq!(storable_body_limit(1000, 32 << 20), 1000);
        assert_eq!(
            storable_body_limit(25 << 20, 1 << 20),
            (1 << 20) - ENVELOPE_OVERHEAD
        );
    }
}
