//! The recorded GitHub payloads of tests/data/github through the real extractor, and through
//! the running ingress.

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use prx_ci_ingress::signature::SIGNATURE_256_HEADER;
use prx_ci_ingress::{Verifier, Webhook, WebhookHeaders};
use secrecy::SecretString;

use crate::utils::*;

/// (file, X-GitHub-Event, repository.full_name)
const RECORDED: [(&str, &str, Option<&str>); 11] = [
    ("push.json", "push", Some("PRX/example-app")),
    (
        "push-non-default-branch.json",
        "push",
        Some("PRX/example-app"),
    ),
    ("push-tag.json", "push", Some("PRX/example-app")),
    ("push-branch-deleted.json", "push", Some("PRX/example-app")),
    (
        "pull_request-opened.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    (
        "pull_request-synchronize.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    (
        "pull_request-closed.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    (
        "pull_request-ready_for_review.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    (
        "pull_request-draft-opened.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    // The base repository, not the fork the head comes from.
    (
        "pull_request-fork.json",
        "pull_request",
        Some("PRX/example-app"),
    ),
    ("ping.json", "ping", None),
];

#[test]
fn recorded_payloads_are_parsed_by_the_extractor() {
    let verifier = Verifier::new(&[SecretString::from(SECRET.to_owned())], false).unwrap();
    for (file, event, repository) in RECORDED {
        let body = Bytes::from(recorded(file));
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", HeaderValue::from_static(event));
        headers.insert("x-github-delivery", HeaderValue::from_static("d-1"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let signature = prx_ci_ingress::signature_256(SECRET, &body);
        headers.insert(
            SIGNATURE_256_HEADER,
            HeaderValue::from_str(&signature).unwrap(),
        );

        let claimed = verifier.claimed_signature(&headers).unwrap();
        let verified = verifier.verify(&claimed, body.clone()).unwrap();
        let webhook_headers = WebhookHeaders::parse(&headers).unwrap();
        assert_eq!(webhook_headers.event_name, event, "{file}");
        let webhook = Webhook::parse(webhook_headers, &headers, verified).unwrap();
        assert_eq!(webhook.repository(), repository, "{file}");
        assert_eq!(webhook.event_name(), event, "{file}");
        assert_eq!(webhook.json(), &body, "{file}");
    }
}

#[tokio::test]
async fn recorded_payloads_are_stored_under_their_event_and_repository() {
    let h = Harness::start().await;
    for (file, event, _) in RECORDED {
        let (status, answer) = h.send(event, &new_delivery_id(), &recorded(file)).await;
        let expected = if event == "ping" { 200 } else { 202 };
        assert_eq!(status, expected, "{file}: {answer}");
    }
    let stored = h.stored().await;
    assert_eq!(stored.len(), RECORDED.len() - 1, "everything but the ping");
    let pushes = stored
        .iter()
        .filter(|(subject, _)| subject == "prx.webhook.push.PRX.example-app")
        .count();
    let pull_requests = stored
        .iter()
        .filter(|(subject, _)| subject == "prx.webhook.pull_request.PRX.example-app")
        .count();
    assert_eq!((pushes, pull_requests), (4, 6));
    for (_, envelope) in &stored {
        assert_eq!(webhook_received(envelope).repository, "PRX/example-app");
    }
}
