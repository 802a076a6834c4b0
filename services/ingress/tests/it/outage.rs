//! Broker outages and shutdown: 503 within the deadline, nothing answered 2xx that is not
//! stored, recovery after the broker returns, in-flight requests finished on shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prx_ci_shared::testing::wait_until;

use crate::utils::*;

const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack for the answer to travel and the test to be scheduled on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_stopped_broker_gives_503_in_time_and_the_next_delivery_after_restart_is_stored() {
    let mut h = Harness::start_with(|c| c.store_timeout = STORE_TIMEOUT).await;
    let body = push_body();
    let (status, _) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 202);

    h.server.stop();
    let failed = new_delivery_id();
    let started = Instant::now();
    let (status, answer) = h.send("push", &failed, &body).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["status"], "unavailable");
    assert!(
        took <= STORE_TIMEOUT + SLACK,
        "503 after {took:?}, deadline {STORE_TIMEOUT:?}"
    );
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the broker is down");

    h.server.restart().await;
    let next = wait_until(WAIT, "a delivery to be stored after the restart", || {
        let h = &h;
        let body = &body;
        async move {
            let delivery = new_delivery_id();
            let (status, _) = h.send("push", &delivery, body).await;
            (status == 202).then_some(delivery)
        }
    })
    .await;

    // GitHub (or an operator) redelivers the failed one: whether or not the 503'd attempt was
    // flushed late, it ends up stored exactly once.
    let (status, _) = h.send("push", &failed, &body).await;
    assert_eq!(status, 202);
    let (status, answer) = h.send("push", &failed, &body).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (202, Some(true)));

    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for (_, envelope) in h.stored().await {
        *per_delivery.entry(envelope.event_id).or_default() += 1;
    }
    assert_eq!(per_delivery.get(&next), Some(&1), "{per_delivery:?}");
    assert_eq!(per_delivery.get(&failed), Some(&1), "{per_delivery:?}");
    assert!(per_delivery.values().all(|n| *n == 1), "{per_delivery:?}");

    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"prx_ci_ingress_requests_total{outcome="unavailable"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut h = Harness::start_with(|c| c.store_timeout = STORE_TIMEOUT).await;
    // With the broker down, a request stays in flight for the whole store deadline.
    h.server.stop();
    let request = h.webhook("push", &new_delivery_id(), &push_body(), SECRET);
    let in_flight = tokio::spawn(async move { request.send().await });
    wait_until(WAIT, "the request to be in flight", || {
        let h = &h;
        async move {
            let metrics = h.metrics().await;
            (metric(&metrics, "prx_ci_ingress_in_flight") == Some(1.0)).then_some(())
        }
    })
    .await;

    h.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(response.status(), 503);
}
