//! The webhook HTTP handler: verify, parse, store, answer (`POST /webhooks/github`).
//!
//! Order of checks, each answered at the first failure:
//! 0. fewer than `max_concurrent_requests` webhook requests are in flight (else 503 with
//!    `Retry-After`, at once: nothing queues);
//! 1. a signature header is present and well-formed (else 401, the body is not even read);
//! 2. the body fits `max_body_bytes` (else 413; a `Content-Length` above it before reading)
//!    and the body budget (else 503 with `Retry-After`; a `Content-Length` is reserved
//!    before reading, a chunked body chunk by chunk), and arrives within
//!    `body_read_timeout` (else 408);
//! 3. the signature matches a configured secret (else 401);
//! 4. `X-GitHub-Event` and `X-GitHub-Delivery` are present (else 400);
//! 5. `ping` is answered 200; an event type outside `allowed_events` 202 "ignored";
//! 6. the body is a JSON object (raw or form-encoded `payload=`) (else 400);
//! 7. the `WebhookReceived` event is stored in JetStream: 202 after the ack (also for a
//!    duplicate), 503 if that does not happen within `store_timeout`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::{Stored, telemetry};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use tower_http::timeout::TimeoutError;

use crate::budget::{BodyBudget, BodyPermit};
use crate::metrics::{IngressMetrics, Outcome};
use crate::signature::{Verifier, VerifyError};
use crate::webhook::{DELIVERY_HEADER, EVENT_HEADER, Webhook, WebhookHeaders};

/// How often to look at the NATS connection while it is down (only during outages).
const RECONNECT_POLL: Duration = Duration::from_millis(20);

/// The webhook handler and what every request needs (shared, immutable).
#[derive(Debug)]
pub(crate) struct WebhookHandler {
    pub(crate) verifier: Verifier,
    pub(crate) allowed_events: HashSet<String>,
    pub(crate) max_body_bytes: usize,
    pub(crate) budget: BodyBudget,
    pub(crate) body_read_timeout: Duration,
    /// `Retry-After` of the 503s for load: by then the requests holding the budget or the
    /// concurrency slots have ended (each is bounded by the body timeout).
    pub(crate) retry_after: HeaderValue,
    pub(crate) store_timeout: Duration,
    pub(crate) publisher: EventPublisher,
    pub(crate) client: async_nats::Client,
    pub(crate) metrics: IngressMetrics,
}

/// One span per request, named by delivery and event, child of the caller's `traceparent`
/// when spans are recorded. Signature headers are never recorded.
pub(crate) fn request_span(request: &Request<Body>) -> tracing::Span {
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
    // Here, before the span is entered (which starts it when spans are recorded).
    telemetry::set_parent(&span, traceparent(request.headers()));
    span
}

fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
}

pub(crate) async fn handle_webhook(
    State(state): State<Arc<WebhookHandler>>,
    request: Request,
) -> Response {
    let _in_flight = state.metrics.in_flight();
    // The stored event carries the trace context whether or not spans are recorded.
    let trace = telemetry::TraceContext::continuing(traceparent(request.headers()));
    let reply = telemetry::in_trace(trace, state.handle(request)).await;
    state.metrics.count(reply.outcome());
    reply.into_response()
}

impl WebhookHandler {
    /// The answer to `POST /webhooks/github` when `max_concurrent_requests` are in flight.
    pub(crate) fn over_concurrency(&self) -> Response {
        // Debug, not warn: under a flood this fires for most requests; the counter is the
        // signal.
        tracing::debug!("webhook rejected: max_concurrent_requests reached");
        let reply = Reply::OverConcurrency {
            retry_after: self.retry_after.clone(),
        };
        self.metrics.count(reply.outcome());
        reply.into_response()
    }

    async fn handle(&self, request: Request) -> Reply {
        let (mut parts, body) = request.into_parts();
        let claimed = match self.verifier.claimed_signature(&parts.headers) {
            Ok(claimed) => claimed,
            Err(err) => return Reply::unauthorized(err),
        };
        let headers: HeaderMap = std::mem::take(&mut parts.headers);
        // Held until this function returns (also when the client hangs up and the handler
        // is dropped): the body's bytes, and what is derived from them, are in memory
        // until then.
        let (body, _permit) = match self.read_body(&headers, body).await {
            Ok(read) => read,
            Err(reply) => return reply,
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

    /// Reads the body within the budget, `max_body_bytes` and the body deadline.
    ///
    /// With a `Content-Length`, it is checked against the size limit and reserved in full
    /// before anything is read, so a request the budget cannot hold is answered without
    /// reading its body (hyper then closes the connection instead of draining it). A chunked
    /// body reserves each chunk as it arrives.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, BodyPermit), Reply> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let too_large = || {
            tracing::warn!(limit = self.max_body_bytes, "webhook body too large");
            Reply::TooLarge {
                limit: self.max_body_bytes,
            }
        };
        let mut permit = match declared {
            Some(length) if length > self.max_body_bytes => return Err(too_large()),
            Some(length) => match self.budget.try_reserve(length) {
                Some(permit) => permit,
                None => return Err(self.over_budget(length)),
            },
            None => self.budget.empty(),
        };
        // The budget counts the buffer's capacity, i.e. the memory actually held: exactly
        // the declared length, or for a chunked body its buffer as it grows (doubling).
        let mut buffer: Vec<u8> = Vec::new();
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| self.body_error(&err))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if buffer.is_empty() && declared == Some(data.len()) {
                // The whole body in one frame (what hyper hands over when one read brought it
                // in): kept as it is, not copied. A further frame would exceed the declared
                // length, which hyper refuses.
                return Ok((data, permit));
            }
            if buffer.capacity() == 0 {
                buffer.reserve_exact(declared.unwrap_or(0));
            }
            let received = buffer.len() + data.len();
            if declared.is_none() && received > buffer.capacity() {
                if received > self.max_body_bytes {
                    return Err(too_large());
                }
                let capacity = received
                    .max(buffer.capacity().saturating_mul(2))
                    .min(self.max_body_bytes);
                let more = capacity.saturating_sub(permit.bytes());
                if !self.budget.try_grow(&mut permit, more) {
                    return Err(self.over_budget(received));
                }
                buffer.reserve_exact(capacity - buffer.len());
            }
            buffer.extend_from_slice(&data);
        }
        Ok((Bytes::from(buffer), permit))
    }

    fn over_budget(&self, bytes: usize) -> Reply {
        // Debug, not warn: under a flood this fires for most requests; the counter is the
        // signal.
        let (shared, reserve) = self.budget.available();
        tracing::debug!(
            bytes,
            available = shared,
            reserve,
            "webhook rejected: body budget exhausted"
        );
        Reply::OverBudget {
            retry_after: self.retry_after.clone(),
        }
    }

    /// A body that could not be read: too slow (408), or cut off by the client (400; the
    /// client is usually gone and never sees it).
    fn body_error(&self, err: &axum::Error) -> Reply {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if e.is::<TimeoutError>() {
                tracing::warn!(timeout = ?self.body_read_timeout, "webhook rejected: body not received in time");
                return Reply::BodyTimeout {
                    timeout: self.body_read_timeout,
                };
            }
            source = e.source();
        }
        Reply::bad_request(format!("cannot read body: {err}"))
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
                // Debug: one line per delivery costs more than the rest of the logging; the
                // `stored` and `duplicate` outcomes are counted in the metrics.
                tracing::debug!(
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
    BodyTimeout { timeout: Duration },
    OverBudget { retry_after: HeaderValue },
    OverConcurrency { retry_after: HeaderValue },
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
            Reply::BodyTimeout { .. } => Outcome::BodyTimeout,
            Reply::OverBudget { .. } => Outcome::OverBudget,
            Reply::OverConcurrency { .. } => Outcome::OverConcurrency,
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
        let retry_after = match &self {
            Reply::OverBudget { retry_after } | Reply::OverConcurrency { retry_after } => {
                Some(retry_after.clone())
            }
            _ => None,
        };
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
            Reply::BodyTimeout { timeout } => (
                StatusCode::REQUEST_TIMEOUT,
                Answer {
                    reason: Some(format!("body not received within {timeout:?}")),
                    ..Answer::status("body_timeout")
                },
            ),
            Reply::OverBudget { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Answer {
                    reason: Some("too many request bodies in flight; retry later".to_owned()),
                    ..Answer::status("over_budget")
                },
            ),
            Reply::OverConcurrency { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Answer {
                    reason: Some("too many requests in flight; retry later".to_owned()),
                    ..Answer::status("over_concurrency")
                },
            ),
        };
        let mut response = match serde_json::to_vec(&answer) {
            Ok(mut body) => {
                body.push(b'\n');
                (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(_) => code.into_response(),
        };
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

/// Room the envelope and headers need around a webhook body in one NATS message.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;

/// The body limit actually enforced: the configured one, lowered to what the broker can carry
/// (its `max_payload`, 1 MB by default while GitHub sends up to 25 MB). A body the broker
/// cannot store is answered 413 at once rather than 503 on every redelivery.
pub(crate) fn storable_body_limit(configured: usize, server_max_payload: usize) -> usize {
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
