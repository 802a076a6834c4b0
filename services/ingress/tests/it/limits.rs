//! Hostile load: slow headers and bodies are cut off, bodies in flight stay within the
//! budget (with a reserve that keeps small deliveries flowing), the budget is released when
//! requests end, and the concurrency limit answers 503 instead of queueing.

use std::time::{Duration, Instant};

use prx_ci_ingress::IngressConfig;
use prx_ci_shared::testing::wait_until;

use crate::utils::*;

const MIB: usize = 1024 * 1024;
const IN_FLIGHT: &str = "prx_ci_ingress_in_flight";
const BODY_BYTES: &str = "prx_ci_ingress_body_bytes_in_flight";
const HEADER_TIMEOUTS: &str = "prx_ci_ingress_header_timeouts_total";

/// 2 MiB any body may use, plus 256 KiB only bodies of at most 64 KiB may use (the recorded
/// push is about 10 KB); bodies up to 1 MiB.
fn small_budget(c: &mut IngressConfig) {
    c.max_body_bytes = MIB;
    c.small_body_reserve_bytes = 256 * 1024;
    c.small_body_bytes = 64 * 1024;
    c.body_budget_bytes = 2 * MIB + c.small_body_reserve_bytes;
    // Never fires while a test holds requests open on purpose.
    c.body_read_timeout = WAIT;
}

fn outcome(name: &str) -> String {
    format!("prx_ci_ingress_requests_total{{outcome=\"{name}\"}}")
}

async fn metric_value(h: &Harness, series: &str) -> f64 {
    metric(&h.metrics().await, series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Waits until the metric `series` has `value` (the server has caught up with the client).
async fn wait_for_metric(h: &Harness, series: &str, value: f64) {
    wait_until(WAIT, &format!("{series} == {value}"), || async move {
        (metric(&h.metrics().await, series) == Some(value)).then_some(())
    })
    .await;
}

/// A hostile upload that has sent its headers and `sent` bytes of a `length`-byte body.
async fn slow_upload(h: &Harness, length: usize, sent: usize) -> RawRequest {
    let mut request =
        RawRequest::start(h.addr, Framing::ContentLength(length), WRONG_SIGNATURE).await;
    request.send(&vec![b' '; sent]).await;
    request
}

/// Sends the rest of a [`slow_upload`]; its wrong signature then gets 401.
async fn finish_upload(request: RawRequest, rest: usize) {
    let (mut reader, mut writer) = request.into_parts();
    writer.send(&vec![b' '; rest]).await.unwrap();
    let response = reader.response().await;
    assert_eq!(response.status, 401, "{}", response.body);
}

#[tokio::test]
async fn a_body_that_keeps_trickling_past_the_body_timeout_is_cut_off_with_408() {
    let timeout = Duration::from_millis(500);
    let h = Harness::start_with(|c| c.body_read_timeout = timeout).await;

    let started = Instant::now();
    let (mut reader, mut writer) =
        RawRequest::start(h.addr, Framing::ContentLength(100_000), WRONG_SIGNATURE)
            .await
            .into_parts();
    // A byte every 20 ms: the connection is never idle, so only a deadline on the whole body
    // (not an idle timeout) cuts it off.
    let trickle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        loop {
            ticks.tick().await;
            if writer.send(b" ").await.is_err() {
                return;
            }
        }
    });
    let response = reader.response().await;
    let took = started.elapsed();
    assert_eq!(response.status, 408, "{}", response.body);
    assert_eq!(response.json()["status"], "body_timeout");
    assert!(
        took >= timeout,
        "cut off after {took:?}, before {timeout:?}"
    );
    reader.closed().await;
    trickle.abort();

    assert_eq!(metric_value(&h, &outcome("body_timeout")).await, 1.0);
    assert_eq!(metric_value(&h, BODY_BYTES).await, 0.0, "budget released");
    assert_eq!(h.message_count().await, 0);
    // A delivery that arrives in time is unaffected.
    let (status, _) = h.send("push", &new_delivery_id(), &push_body()).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn headers_slower_than_the_header_timeout_close_the_connection() {
    let timeout = Duration::from_millis(300);
    let h = Harness::start_with(|c| c.header_read_timeout = timeout).await;

    let started = Instant::now();
    let (reader, _writer) = RawRequest::start_raw(
        h.addr,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\n",
            prx_ci_ingress::WEBHOOK_PATH
        )
        .as_bytes(),
    )
    .await
    .into_parts();
    reader.closed().await;
    let took = started.elapsed();
    assert!(took >= timeout, "closed after {took:?}, before {timeout:?}");
    wait_for_metric(&h, HEADER_TIMEOUTS, 1.0).await;
    assert_eq!(
        metric_value(&h, IN_FLIGHT).await,
        0.0,
        "never became a request"
    );
}

#[tokio::test]
async fn with_the_budget_held_by_slow_uploads_a_large_request_gets_503_unread_and_a_small_signed_one_202()
 {
    let h = Harness::start_with(small_budget).await;

    // Two hostile 1 MiB uploads hold the whole part of the budget any body may use.
    let slow = [
        slow_upload(&h, MIB, 1000).await,
        slow_upload(&h, MIB, 1000).await,
    ];
    wait_for_metric(&h, BODY_BYTES, (2 * MIB) as f64).await;

    // A third large request is refused on its Content-Length: not one byte of its body is
    // sent, yet it is answered (and its connection closed, so the body is never read).
    let large = RawRequest::start(h.addr, Framing::ContentLength(MIB), WRONG_SIGNATURE).await;
    let response = large.response_then_close().await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["status"], "over_budget");
    assert_eq!(response.header("retry-after"), Some("30"));

    // A small legitimate delivery still gets through, from the reserve.
    let delivery = new_delivery_id();
    let (status, answer) = h.send("push", &delivery, &push_body()).await;
    assert_eq!(status, 202, "{answer}");

    // The uploads end (401: wrong signature); whatever the outcome, their bytes are released.
    for request in slow {
        finish_upload(request, MIB - 1000).await;
    }
    assert_eq!(metric_value(&h, BODY_BYTES).await, 0.0);

    // ... so a large legitimate delivery now fits.
    let (status, answer) = h
        .send("push", &new_delivery_id(), &padded_body(MIB - 100))
        .await;
    assert_eq!(status, 202, "{answer}");

    let metrics = h.metrics().await;
    assert_eq!(metric(&metrics, &outcome("over_budget")), Some(1.0));
    assert_eq!(metric(&metrics, &outcome("unauthorized")), Some(2.0));
    assert_eq!(metric(&metrics, &outcome("stored")), Some(2.0));
    assert_eq!(metric(&metrics, BODY_BYTES), Some(0.0));
    assert_eq!(h.message_count().await, 2);
}

#[tokio::test]
async fn a_chunked_body_is_counted_as_it_arrives_and_refused_when_it_outgrows_the_budget() {
    let h = Harness::start_with(small_budget).await;
    let _holders = [
        slow_upload(&h, MIB, 0).await,
        slow_upload(&h, MIB / 2, 0).await,
    ];
    wait_for_metric(&h, BODY_BYTES, (MIB + MIB / 2) as f64).await;

    // Without a Content-Length nothing is reserved up front; the body's buffer is, as the
    // chunks arrive.
    let (mut reader, mut writer) = RawRequest::start(h.addr, Framing::Chunked, WRONG_SIGNATURE)
        .await
        .into_parts();
    let chunk = vec![b' '; 128 * 1024];
    writer.send_chunk(&chunk).await.unwrap();
    let held = (MIB + MIB / 2) as f64;
    wait_until(WAIT, "the first chunk to be reserved", || async {
        metric(&h.metrics().await, BODY_BYTES).filter(|bytes| *bytes > held)
    })
    .await;

    // 512 KiB are left (the reserve is only for small bodies): the body is refused before it
    // reaches 1 MiB. The server may close before the client finished writing; the answer is
    // what counts.
    for _ in 1..8 {
        if writer.send_chunk(&chunk).await.is_err() {
            break;
        }
    }
    let response = reader.response().await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["status"], "over_budget");
    assert_eq!(
        metric_value(&h, BODY_BYTES).await,
        held,
        "the refused body's bytes are released"
    );
}

#[tokio::test]
async fn at_the_concurrency_limit_a_request_gets_503_at_once_instead_of_waiting() {
    let h = Harness::start_with(|c| {
        c.max_concurrent_requests = 2;
        c.body_read_timeout = WAIT;
    })
    .await;
    let mut slow = vec![
        slow_upload(&h, 1000, 10).await,
        slow_upload(&h, 1000, 10).await,
    ];
    wait_for_metric(&h, IN_FLIGHT, 2.0).await;

    // Both slots are held for as long as the uploads last (up to 30 s here): a request that
    // queued would wait that long; this one is answered at once.
    let body = push_body();
    let response = h
        .webhook("push", &new_delivery_id(), &body, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let (_, answer) = answer(response).await;
    assert_eq!(answer["status"], "over_concurrency");

    // One upload ends: its slot is free again.
    finish_upload(slow.pop().unwrap(), 990).await;
    let (status, answer) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(metric_value(&h, &outcome("over_concurrency")).await, 1.0);
    assert_eq!(h.message_count().await, 1);
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let h = Harness::start_with_listeners(|_| {}, true).await;
    let metrics_addr = h.metrics_addr.expect("a metrics listener");
    let get = |url: String| {
        let http = h.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };

    let (status, _) = h.send("push", &new_delivery_id(), &push_body()).await;
    assert_eq!(status, 202);
    let metrics = h.metrics().await;
    assert_eq!(metric(&metrics, &outcome("stored")), Some(1.0), "{metrics}");

    assert_eq!(
        get(h.url("/metrics")).await,
        404,
        "not on the webhook listener"
    );
    assert_eq!(get(h.url("/healthz")).await, 200);
    assert_eq!(get(h.url("/readyz")).await, 200);
    assert_eq!(get(format!("http://{metrics_addr}/healthz")).await, 200);
    assert_eq!(get(format!("http://{metrics_addr}/readyz")).await, 200);
}
