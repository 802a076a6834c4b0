//! From a verified request to a webhook: the `X-GitHub-*` headers, the JSON payload (raw or
//! form-encoded `payload=`), the repository it is about, and the `WebhookReceived` envelope.
//! No I/O.

use std::borrow::Cow;

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::Chain;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::signature::VerifiedDelivery;

/// The event name (`push`, `pull_request`, `ping`, ...).
pub const EVENT_HEADER: &str = "x-github-event";
/// The delivery's GUID; stays the same when GitHub redelivers it.
pub const DELIVERY_HEADER: &str = "x-github-delivery";
/// The id of the webhook that sent the delivery.
pub const HOOK_ID_HEADER: &str = "x-github-hook-id";

/// The event GitHub sends when a webhook is created; answered 200, never stored.
pub const PING_EVENT: &str = "ping";

/// Longest accepted delivery id (GitHub's are 36-character GUIDs). It becomes the
/// `Nats-Msg-Id`, so it is kept short and printable.
const MAX_DELIVERY_ID_LEN: usize = 128;
/// Longest accepted event name (it becomes a subject token).
const MAX_EVENT_NAME_LEN: usize = 64;

/// Why a (verified) request is not a GitHub webhook. Answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAWebhook {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("{0} header is not a valid value")]
    InvalidHeader(&'static str),
    #[error("form-encoded body has no `payload` field")]
    NoFormPayload,
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
}

/// The `X-GitHub-*` headers of a delivery.
///
/// GitHub signs only the body: these values are as trustworthy as the network path. In
/// particular a captured, validly signed body replayed with a new delivery id is stored again
/// (only a replay with the same id is collapsed by deduplication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookHeaders {
    pub event_name: String,
    pub delivery_id: String,
    pub hook_id: String,
}

impl WebhookHeaders {
    pub fn parse(headers: &HeaderMap) -> Result<Self, NotAWebhook> {
        let delivery_id = header_token(headers, DELIVERY_HEADER, MAX_DELIVERY_ID_LEN)?
            .ok_or(NotAWebhook::MissingHeader("X-GitHub-Delivery"))?;
        let event_name = header_token(headers, EVENT_HEADER, MAX_EVENT_NAME_LEN)?
            .ok_or(NotAWebhook::MissingHeader("X-GitHub-Event"))?;
        let hook_id = header_token(headers, HOOK_ID_HEADER, MAX_DELIVERY_ID_LEN)
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok(Self {
            event_name,
            delivery_id,
            hook_id,
        })
    }

    pub fn is_ping(&self) -> bool {
        self.event_name == PING_EVENT
    }
}

/// A header value that is non-empty visible ASCII (no spaces) of at most `max_len` bytes.
fn header_token(
    headers: &HeaderMap,
    name: &'static str,
    max_len: usize,
) -> Result<Option<String>, NotAWebhook> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let value = value.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > max_len || !value.iter().all(u8::is_ascii_graphic) {
        return Err(NotAWebhook::InvalidHeader(name));
    }
    // All bytes are ASCII graphic, hence UTF-8.
    Ok(Some(String::from_utf8_lossy(value).into_owned()))
}

/// The JSON payload of a delivery and what the ingress reads from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPayload {
    /// The JSON document (for a form-encoded delivery, its decoded `payload` field).
    pub json: Bytes,
    /// `repository.full_name`, when the payload has one.
    pub repository: Option<String>,
}

/// Just what the ingress needs; the rest of the document is validated as JSON and skipped.
#[derive(Deserialize)]
struct PayloadFields<'a> {
    #[serde(borrow, default)]
    repository: Option<RepositoryFields<'a>>,
}

#[derive(Deserialize)]
struct RepositoryFields<'a> {
    #[serde(borrow, default)]
    full_name: Option<Cow<'a, str>>,
}

/// Reads a webhook body: `application/x-www-form-urlencoded` → the `payload` field, anything
/// else → the body itself; then checks it is one JSON object and extracts the repository.
pub fn parse_payload(
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<ParsedPayload, NotAWebhook> {
    let json = if is_form(content_type) {
        let payload = url::form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or(NotAWebhook::NoFormPayload)?;
        Bytes::from(payload)
    } else {
        body.clone()
    };
    // A derived struct would also accept a JSON array; a webhook is always an object.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(NotAWebhook::NotAnObject);
    }
    let fields: PayloadFields<'_> =
        serde_json::from_slice(&json).map_err(|e| NotAWebhook::InvalidJson(e.to_string()))?;
    let repository = fields
        .repository
        .and_then(|r| r.full_name)
        .filter(|name| !name.is_empty())
        .map(Cow::into_owned);
    Ok(ParsedPayload { json, repository })
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    })
}

/// A verified, well-formed delivery, ready to store. Only [`Webhook::parse`] makes one, from a
/// [`VerifiedDelivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    headers: WebhookHeaders,
    payload: ParsedPayload,
    origin: v1::Origin,
}

impl Webhook {
    /// Parses the payload of a verified delivery (see [`parse_payload`]).
    pub fn parse(
        headers: WebhookHeaders,
        request_headers: &HeaderMap,
        verified: VerifiedDelivery,
    ) -> Result<Self, NotAWebhook> {
        let content_type = request_headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let payload = parse_payload(content_type, verified.body())?;
        Ok(Self {
            headers,
            payload,
            origin: v1::Origin::Github,
        })
    }

    /// A delivery that never reached the ingress, as the reconciler fetched it through
    /// GitHub's authenticated API (so it has no signature to check): `payload` is checked as
    /// a delivery's body is (one JSON object, repository read). Stored with origin
    /// `ORIGIN_RECOVERED` under its original delivery id.
    pub fn recovered(headers: WebhookHeaders, payload: &Bytes) -> Result<Self, NotAWebhook> {
        let payload = parse_payload(Some("application/json"), payload)?;
        Ok(Self {
            headers,
            payload,
            origin: v1::Origin::Recovered,
        })
    }

    pub fn delivery_id(&self) -> &str {
        &self.headers.delivery_id
    }

    pub fn event_name(&self) -> &str {
        &self.headers.event_name
    }

    /// `repository.full_name` of the payload, if any.
    pub fn repository(&self) -> Option<&str> {
        self.payload.repository.as_deref()
    }

    /// The JSON payload.
    pub fn json(&self) -> &Bytes {
        &self.payload.json
    }

    /// The `WebhookReceived` event. Its event id is the delivery id, so JetStream's duplicate
    /// window (72 h on PRX_WEBHOOKS, GitHub's redelivery window) stores a redelivery once; the
    /// delivery id is also the correlation id every later event carries.
    pub fn into_envelope(self, received_at: OffsetDateTime) -> Envelope {
        let WebhookHeaders {
            event_name,
            delivery_id,
            hook_id,
        } = self.headers;
        let chain = Chain::starting(&delivery_id);
        chain.envelope_at(
            delivery_id.clone(),
            received_at,
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id,
                event_name,
                payload: self.payload.json,
                hook_id,
                repository: self.payload.repository.unwrap_or_default(),
                origin: self.origin.into(),
                requested_by: String::new(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn github_headers_are_read() {
        let parsed = WebhookHeaders::parse(&headers(&[
            (EVENT_HEADER, "push"),
            (DELIVERY_HEADER, "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            (HOOK_ID_HEADER, "512345678"),
        ]))
        .unwrap();
        assert_eq!(parsed.event_name, "push");
        assert_eq!(parsed.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(parsed.hook_id, "512345678");
        assert!(!parsed.is_ping());

        let no_hook =
            WebhookHeaders::parse(&headers(&[(EVENT_HEADER, "ping"), (DELIVERY_HEADER, "d")]))
                .unwrap();
        assert_eq!(no_hook.hook_id, "");
        assert!(no_hook.is_ping());
    }

    #[test]
    fn missing_or_invalid_headers_are_not_a_webhook() {
        assert_eq!(
            WebhookHeaders::parse(&headers(&[(EVENT_HEADER, "push")])),
            Err(NotAWebhook::MissingHeader("X-GitHub-Delivery"))
        );
        assert_eq!(
            WebhookHeaders::parse(&headers(&[(DELIVERY_HEADER, "d"), (EVENT_HEADER, " ")])),
            Err(NotAWebhook::MissingHeader("X-GitHub-Event"))
        );
        assert_eq!(
            WebhookHeaders::parse(&headers(&[
                (DELIVERY_HEADER, "a b"),
                (EVENT_HEADER, "push")
            ])),
            Err(NotAWebhook::InvalidHeader(DELIVERY_HEADER))
        );
        let long = "x".repeat(129);
        assert_eq!(
            WebhookHeaders::parse(&headers(&[
                (DELIVERY_HEADER, &long),
                (EVENT_HEADER, "push")
            ])),
            Err(NotAWebhook::InvalidHeader(DELIVERY_HEADER))
        );
    }

    #[test]
    fn json_payloads_yield_the_repository() {
        let body = Bytes::from_static(
            br#"{"ref":"refs/heads/main","repository":{"id":1,"full_name":"PRX/app"}}"#,
        );
        let parsed = parse_payload(Some("application/json"), &body).unwrap();
        assert_eq!(parsed.repository.as_deref(), Some("PRX/app"));
        assert_eq!(parsed.json, body);

        // Escaped characters are decoded.
        let body = Bytes::from_static(br#" {"repository":{"full_name":"PRX\/a\u0070p"}}"#);
        let parsed = parse_payload(None, &body).unwrap();
        assert_eq!(parsed.repository.as_deref(), Some("PRX/app"));

        for body in [
            &br#"{"zen":"x"}"#[..],
            br#"{"repository":null}"#,
            br#"{"repository":{}}"#,
        ] {
            let parsed = parse_payload(None, &Bytes::from_static(body)).unwrap();
            assert_eq!(parsed.repository, None);
        }
    }

    #[test]
    fn recovered_deliveries_keep_their_id_and_say_so() {
        let headers = WebhookHeaders {
            event_name: "push".into(),
            delivery_id: "72d3162e".into(),
            hook_id: "1".into(),
        };
        let body = Bytes::from_static(br#"{"repository":{"full_name":"PRX/app"}}"#);
        let envelope = Webhook::recovered(headers.clone(), &body)
            .unwrap()
            .into_envelope(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(envelope.event_id, "72d3162e");
        let Some(Payload::WebhookReceived(webhook)) = envelope.payload else {
            panic!("not a WebhookReceived");
        };
        assert_eq!(webhook.origin(), v1::Origin::Recovered);
        assert_eq!(webhook.delivery_id, "72d3162e");
        assert_eq!(webhook.repository, "PRX/app");
        assert_eq!(
            Webhook::recovered(headers, &Bytes::from_static(b"[1]")),
            Err(NotAWebhook::NotAnObject)
        );
    }

    #[test]
    fn form_payloads_are_decoded() {
        let json = r#"{"repository":{"full_name":"PRX/app"},"x":"a+b&c=d"}"#;
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let parsed = parse_payload(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            &Bytes::from(form),
        )
        .unwrap();
        assert_eq!(parsed.json, json.as_bytes());
        assert_eq!(parsed.repository.as_deref(), Some("PRX/app"));

        assert_eq!(
            parse_payload(
                Some("application/x-www-form-urlencoded"),
                &Bytes::from_static(b"other=1")
            ),
            Err(NotAWebhook::NoFormPayload)
        );
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_rejected() {
        for body in [&b""[..], b"[1]", b"hello", b"\"x\"", b"null"] {
            assert_eq!(
                parse_payload(None, &Bytes::from_static(body)),
                Err(NotAWebhook::NotAnObject),
                "{body:?}"
            );
        }
        for body in [
            &b"{"[..],
            b"{\"a\":1} trailing",
            b"{\"repository\":{\"full_name\":1}}",
        ] {
            assert!(
                matches!(
                    parse_payload(None, &Bytes::from_static(body)),
                    Err(NotAWebhook::InvalidJson(_))
                ),
                "{body:?}"
            );
        }
    }
}
