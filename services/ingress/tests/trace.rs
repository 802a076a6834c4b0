//! With spans recorded (an exporter configured), the ingress's request span is a child of the
//! caller's `traceparent` and the stored event carries that span's context. (Own test binary:
//! the global tracing subscriber can be set once per process.)

use std::sync::Arc;

use async_nats::jetstream;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use prometheus_client::registry::Registry;
use prx_ci_ingress::{Ingress, IngressConfig, WEBHOOK_PATH, signature_256};
use prx_ci_shared::bus::subject::WEBHOOKS_STREAM;
use prx_ci_shared::telemetry::{self, TRACEPARENT, TelemetryConfig, TraceContext};
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::{CancellationToken, Runtime};

const SECRET: &str = "trace secret";

#[tokio::test]
async fn a_recorded_request_span_continues_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    telemetry::init_with_provider(
        "ingress-trace-test",
        &TelemetryConfig {
            log_filter: Some("info".into()),
            ..Default::default()
        },
        provider.clone(),
    )
    .unwrap();

    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.unwrap();
    let config = IngressConfig::default().with_secrets_from_env_value(SECRET);
    let ingress = Ingress::new(rt, config, &mut registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ingress.serve(listener, None, Arc::new(registry), shutdown.clone()));

    let body = br#"{"repository":{"full_name":"PRX/app"}}"#;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{WEBHOOK_PATH}"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "trace-delivery-1")
        .header("x-hub-signature-256", signature_256(SECRET, body))
        .header(TRACEPARENT, caller)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let webhook = spans
        .iter()
        .find(|s| s.name == "webhook")
        .expect("the request span was recorded");
    let caller = TraceContext::parse(caller).unwrap();
    assert_eq!(
        u128::from_be_bytes(webhook.span_context.trace_id().to_bytes()),
        caller.trace_id
    );
    assert_eq!(
        u64::from_be_bytes(webhook.parent_span_id.to_bytes()),
        caller.span_id
    );
    assert!(webhook.parent_span_is_remote);

    let stream = jetstream::new(server.connect().await)
        .get_stream(WEBHOOKS_STREAM)
        .await
        .unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    let stored = TraceContext::parse(stored.headers.get(TRACEPARENT).unwrap().as_str()).unwrap();
    assert_eq!(stored.trace_id, caller.trace_id);
    assert_eq!(
        stored.span_id,
        u64::from_be_bytes(webhook.span_context.span_id().to_bytes()),
        "the stored event's parent is the request span"
    );
    assert!(stored.sampled);
}
