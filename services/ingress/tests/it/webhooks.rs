//! What each kind of request is answered, and what is (not) stored.

use prx_ci_ingress::WEBHOOK_PATH;
use prx_ci_ingress::signature::signature_sha1;
use prx_ci_proto::v1::Origin;
use prx_ci_shared::telemetry::{TRACEPARENT, TraceContext};
use secrecy::SecretString;

use crate::utils::*;

#[tokio::test]
async fn a_signed_push_is_stored_once_and_answered_202() {
    let mut h = Harness::start().await;
    let body = push_body();
    let delivery = new_delivery_id();

    let (status, answer) = h.send("push", &delivery, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "stored");
    assert_eq!(answer["delivery"], delivery.as_str());
    assert_eq!(answer["stream"], "PRX_WEBHOOKS");
    assert_eq!(answer["duplicate"], false);
    let sequence = answer["sequence"].as_u64().unwrap();

    let stored = h.stored().await;
    assert_eq!(stored.len(), 1);
    let (subject, envelope) = &stored[0];
    assert_eq!(subject, "prx.webhook.push.PRX.example-app");
    assert_eq!(envelope.event_id, delivery);
    assert_eq!(envelope.correlation_id, delivery);
    assert!(envelope.time.is_some());
    let webhook = webhook_received(envelope);
    assert_eq!(webhook.delivery_id, delivery);
    assert_eq!(webhook.event_name, "push");
    assert_eq!(webhook.repository, "PRX/example-app");
    assert_eq!(webhook.hook_id, "512345678");
    assert_eq!(webhook.origin, i32::from(Origin::Github));
    assert_eq!(webhook.payload, body, "payload stored byte for byte");

    let message = h.stream().await.get_raw_message(sequence).await.unwrap();
    assert_eq!(
        message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        Some(delivery.clone())
    );

    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"prx_ci_ingress_requests_total{outcome="stored"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "prx_ci_ingress_store_seconds_count"),
        Some(1.0)
    );
    h.stop().await;
}

#[tokio::test]
async fn the_same_delivery_three_times_is_stored_once() {
    let h = Harness::start().await;
    let body = push_body();
    let delivery = new_delivery_id();
    let mut sequences = Vec::new();
    for attempt in 0..3 {
        let (status, answer) = h.send("push", &delivery, &body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["duplicate"], attempt > 0, "{answer}");
        assert_eq!(
            answer["status"],
            if attempt > 0 { "duplicate" } else { "stored" }
        );
        sequences.push(answer["sequence"].as_u64().unwrap());
    }
    assert!(sequences.windows(2).all(|w| w[0] == w[1]), "{sequences:?}");
    assert_eq!(h.message_count().await, 1);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"prx_ci_ingress_requests_total{outcome="duplicate"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn old_and_new_secrets_are_both_accepted_during_rotation() {
    let h = Harness::start_with(|c| {
        c.secrets = vec![
            SecretString::from("old secret".to_owned()),
            SecretString::from("new secret".to_owned()),
        ];
    })
    .await;
    let body = push_body();
    for secret in ["old secret", "new secret"] {
        let response = h
            .webhook("push", &new_delivery_id(), &body, secret)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{secret}");
    }
    let (status, _) = answer(
        h.webhook("push", &new_delivery_id(), &body, "retired secret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(h.message_count().await, 2);
}

#[tokio::test]
async fn wrong_or_missing_signatures_are_401_and_nothing_is_stored() {
    let h = Harness::start().await;
    let body = push_body();

    let (status, answer_wrong) = answer(
        h.webhook("push", &new_delivery_id(), &body, "not the secret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(answer_wrong["status"], "unauthorized");

    let missing = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", new_delivery_id())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);

    // A valid signature of another body.
    let tampered = h
        .webhook("push", &new_delivery_id(), b"{}", SECRET)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);

    // SHA-1 is not accepted unless enabled.
    let sha1 = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("x-github-event", "push")
        .header("x-github-delivery", new_delivery_id())
        .header("x-hub-signature", signature_sha1(SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sha1.status(), 401);

    assert_eq!(h.message_count().await, 0);
    let metrics = h.metrics().await;
    assert!(!metrics.contains(SECRET), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            r#"prx_ci_ingress_requests_total{outcome="unauthorized"}"#
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn legacy_sha1_signatures_are_accepted_when_enabled() {
    let h = Harness::start_with(|c| c.legacy_sha1 = true).await;
    let body = push_body();
    let response = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", new_delivery_id())
        .header("x-hub-signature", signature_sha1(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(h.message_count().await, 1);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_nothing_is_stored() {
    let h = Harness::start_with(|c| c.max_body_bytes = 4096).await;
    let body = push_body();
    assert!(body.len() > 4096);
    let (status, answer) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["status"], "too_large");
    // Just under the limit is fine.
    let small = br#"{"ref":"refs/heads/main","repository":{"full_name":"PRX/small"}}"#;
    let (status, _) = h.send("push", &new_delivery_id(), small).await;
    assert_eq!(status, 202);
    assert_eq!(h.message_count().await, 1);
}

#[tokio::test]
async fn requests_that_are_not_webhooks_are_400_and_nothing_is_stored() {
    let h = Harness::start().await;

    let (status, answer) = h.send("push", &new_delivery_id(), b"not json at all").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["status"], "bad_request");
    let (status, _) = h.send("push", &new_delivery_id(), b"[1,2,3]").await;
    assert_eq!(status, 400);
    let (status, _) = h.send("push", &new_delivery_id(), b"{\"truncated\":").await;
    assert_eq!(status, 400);

    let body = push_body();
    let no_delivery = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("x-github-event", "push")
        .header(
            "x-hub-signature-256",
            prx_ci_ingress::signature_256(SECRET, &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_delivery.status(), 400);
    let no_event = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("x-github-delivery", new_delivery_id())
        .header(
            "x-hub-signature-256",
            prx_ci_ingress::signature_256(SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_event.status(), 400);

    assert_eq!(h.message_count().await, 0);
}

#[tokio::test]
async fn ping_is_200_and_not_stored() {
    let h = Harness::start().await;
    let delivery = new_delivery_id();
    let (status, answer) = h.send("ping", &delivery, &recorded("ping.json")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "pong");
    assert_eq!(answer["delivery"], delivery.as_str());
    assert_eq!(h.message_count().await, 0);
}

#[tokio::test]
async fn event_types_outside_the_allow_list_are_ignored_counted_and_not_stored() {
    let h = Harness::start().await;
    let body =
        br#"{"action":"opened","issue":{"number":1},"repository":{"full_name":"PRX/example-app"}}"#;
    let (status, answer) = h.send("issues", &new_delivery_id(), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "ignored");
    assert_eq!(answer["event"], "issues");
    assert_eq!(h.message_count().await, 0);

    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"prx_ci_ingress_ignored_events_total{event="issues"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"prx_ci_ingress_requests_total{outcome="ignored"}"#
        ),
        Some(1.0)
    );

    // The allow-list is configurable.
    let only_pr = Harness::start_with(|c| c.allowed_events = vec!["pull_request".into()]).await;
    let (_, answer) = only_pr.send("push", &new_delivery_id(), &push_body()).await;
    assert_eq!(answer["status"], "ignored");
    let (status, _) = only_pr
        .send(
            "pull_request",
            &new_delivery_id(),
            &recorded("pull_request-opened.json"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(only_pr.message_count().await, 1);
}

#[tokio::test]
async fn form_encoded_deliveries_are_accepted() {
    let h = Harness::start().await;
    let json = push_body();
    let form = format!(
        "payload={}",
        url_encode(std::str::from_utf8(&json).unwrap())
    );
    let delivery = new_delivery_id();
    let response = h
        .http
        .post(h.url(WEBHOOK_PATH))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "push")
        .header("x-github-delivery", &delivery)
        // The signature is over the raw form body.
        .header(
            "x-hub-signature-256",
            prx_ci_ingress::signature_256(SECRET, form.as_bytes()),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let stored = h.stored().await;
    assert_eq!(stored.len(), 1);
    let webhook = webhook_received(&stored[0].1);
    assert_eq!(webhook.payload, json, "the decoded JSON is stored");
    assert_eq!(webhook.repository, "PRX/example-app");
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn health_and_readiness_are_served_on_the_webhook_listener() {
    let h = Harness::start().await;
    let health = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let get = h.http.get(h.url(WEBHOOK_PATH)).send().await.unwrap();
    assert_eq!(get.status(), 405);
}

/// The `traceparent` header of the stored message at `sequence`, parsed.
async fn stored_trace(h: &Harness, sequence: u64) -> TraceContext {
    let message = h.stream().await.get_raw_message(sequence).await.unwrap();
    let value = message
        .headers
        .get(TRACEPARENT)
        .expect("a traceparent header")
        .as_str()
        .to_owned();
    TraceContext::parse(&value).unwrap_or_else(|| panic!("{value:?} is a traceparent"))
}

#[tokio::test]
async fn every_stored_delivery_carries_trace_context_even_when_nothing_is_recorded() {
    // No subscriber and no exporter here: no span is recorded.
    let mut h = Harness::start().await;
    let body = push_body();

    let (status, reply) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 202, "{reply}");
    let first = stored_trace(&h, reply["sequence"].as_u64().unwrap()).await;
    let (status, reply) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 202, "{reply}");
    let second = stored_trace(&h, reply["sequence"].as_u64().unwrap()).await;
    assert_ne!(first.trace_id, second.trace_id, "a new trace per delivery");

    // The caller's trace is continued: with no span recorded here, its context is passed on
    // unchanged (a span id of our own would name a parent no exporter ever saw).
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let response = h
        .webhook("push", &new_delivery_id(), &body, SECRET)
        .header(TRACEPARENT, caller)
        .send()
        .await
        .unwrap();
    let (status, reply) = answer(response).await;
    assert_eq!(status, 202, "{reply}");
    let continued = stored_trace(&h, reply["sequence"].as_u64().unwrap()).await;
    let caller = TraceContext::parse(caller).unwrap();
    assert_eq!(continued.trace_id, caller.trace_id);
    assert!(!continued.sampled);
    assert_eq!(continued.span_id, caller.span_id);
    h.stop().await;
}
