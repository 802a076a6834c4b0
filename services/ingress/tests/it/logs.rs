//! Secrets and signatures never reach the logs, whatever the outcome, even at TRACE level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use prx_ci_ingress::signature_256;

use crate::utils::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime: the ingress, NATS client and HTTP client all log on this thread,
// where the capturing subscriber is the default.
#[tokio::test]
async fn secrets_and_signatures_never_appear_in_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing-core caches a callsite's interest when it is first hit; while a single
    // dispatcher is registered it asks only the hitting thread's default, so a callsite first
    // hit by a test on another thread (no subscriber) stays disabled here too. A second
    // registered dispatcher makes it ask every registered one (this capturing one included).
    let _second_dispatcher = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    let mut h = Harness::start_with(|c| c.store_timeout = std::time::Duration::from_secs(1)).await;
    let body = push_body();
    let good = signature_256(SECRET, &body);
    let wrong = signature_256("a wrong secret", &body);
    let (status, _) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 202);
    let response = h
        .webhook("push", &new_delivery_id(), &body, "a wrong secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (status, _) = h.send("push", &new_delivery_id(), b"not json").await;
    assert_eq!(status, 400);
    h.server.stop();
    let (status, _) = h.send("push", &new_delivery_id(), &body).await;
    assert_eq!(status, 503);
    h.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("delivery stored"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains("not authenticated"), "{logs}");
    for needle in [
        SECRET,
        "a wrong secret",
        &good["sha256=".len()..],
        &wrong["sha256=".len()..],
    ] {
        assert!(!logs.contains(needle), "{needle:?} appears in the logs");
    }
}
