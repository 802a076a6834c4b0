//! One trace per delivery: the trace context travels in NATS headers, so the handler spans of
//! two consumers, one triggered by the other's output, hang under the publisher's root span.
//! (Own test binary: the global tracing subscriber can be set once per process.)

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::nats::ConsumerDefinition;
use prx_ci_shared::bus::subject::{EVENTS_STREAM, EventKind, WEBHOOKS_STREAM};
use prx_ci_shared::run_consumer;
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Delivery, EventPublisher, Handler, HandlerError, Runtime};
use tokio::sync::Mutex;
use tracing::Instrument as _;

const WAIT: Duration = Duration::from_secs(20);

/// Turns every webhook into a follow-up event (as the dispatcher does).
struct Decide {
    publisher: EventPublisher,
}

impl Handler for Decide {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let chain = Chain::caused_by(&delivery.envelope);
        let skipped = chain.envelope(
            chain.derive_id(&["skip"]),
            Payload::BuildSkipped(v1::BuildSkipped {
                repository: "PRX/app".into(),
                detail: "traced".into(),
                ..Default::default()
            }),
        );
        self.publisher
            .publish(&skipped)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

#[derive(Default)]
struct Sink {
    seen: Mutex<Vec<String>>,
}

impl Handler for Sink {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.seen.lock().await.push(delivery.envelope.event_id);
        Ok(())
    }
}

async fn durable(rt: &Runtime, stream: &str, name: &str, filter: String) -> ConsumerSettings {
    let definition = ConsumerDefinition {
        stream: stream.into(),
        config: consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: filter,
            max_deliver: 3,
            ..Default::default()
        },
    };
    rt.js
        .create_consumer_on_stream(definition.config.clone(), stream)
        .await
        .unwrap();
    ConsumerSettings::from_definition(&definition)
}

#[tokio::test]
async fn one_delivery_is_one_trace_across_consumers() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    telemetry::init_with_provider(
        "trace-test",
        &TelemetryConfig {
            log_filter: Some("info".into()),
            ..Default::default()
        },
        provider.clone(),
    )
    .unwrap();

    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let first = durable(
        &rt,
        WEBHOOKS_STREAM,
        "trace-decide",
        EventKind::WebhookReceived.filter(),
    )
    .await;
    let second = durable(
        &rt,
        EVENTS_STREAM,
        "trace-sink",
        EventKind::BuildSkipped.filter(),
    )
    .await;
    let shutdown = CancellationToken::new();
    let sink = Arc::new(Sink::default());
    let loops = [
        tokio::spawn(run_consumer(
            rt.js.clone(),
            rt.publisher.clone(),
            first,
            Arc::new(Decide {
                publisher: rt.publisher.clone(),
            }),
            rt.consumer_metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(run_consumer(
            rt.js.clone(),
            rt.publisher.clone(),
            second,
            sink.clone(),
            rt.consumer_metrics.clone(),
            shutdown.clone(),
        )),
    ];

    let webhook = Chain::starting("delivery-1").envelope(
        "delivery-1".into(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: "delivery-1".into(),
            event_name: "push".into(),
            repository: "PRX/app".into(),
            payload: b"{}".to_vec().into(),
            ..Default::default()
        }),
    );
    let root = tracing::info_span!("webhook_request");
    rt.publisher
        .publish(&webhook)
        .instrument(root.clone())
        .await
        .unwrap();
    drop(root);

    wait_until(WAIT, "the follow-up event to be handled", || {
        let sink = sink.clone();
        async move { (!sink.seen.lock().await.is_empty()).then_some(()) }
    })
    .await;
    shutdown.cancel();
    for l in loops {
        l.await.unwrap().unwrap();
    }
    let spans = wait_until(WAIT, "three finished spans", || {
        let exporter = exporter.clone();
        let provider = provider.clone();
        async move {
            let _ = provider.force_flush();
            let spans = exporter.get_finished_spans().ok()?;
            let wanted = ["webhook_request", "handle"];
            let relevant: Vec<_> = spans
                .into_iter()
                .filter(|s| wanted.contains(&s.name.as_ref()))
                .collect();
            (relevant.len() >= 3).then_some(relevant)
        }
    })
    .await;

    let root = spans
        .iter()
        .find(|s| s.name == "webhook_request")
        .expect("the root span");
    let handles: Vec<_> = spans.iter().filter(|s| s.name == "handle").collect();
    assert_eq!(handles.len(), 2, "one handler span per consumer");
    let trace_id = root.span_context.trace_id();
    for span in &spans {
        assert_eq!(
            span.span_context.trace_id(),
            trace_id,
            "{} left the trace",
            span.name
        );
    }
    let consumer_of = |s: &opentelemetry_sdk::trace::SpanData| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "consumer")
            .map(|kv| kv.value.to_string())
            .unwrap_or_default()
    };
    let decide = handles
        .iter()
        .find(|s| consumer_of(s) == "trace-decide")
        .expect("the first consumer's span");
    let sink_span = handles
        .iter()
        .find(|s| consumer_of(s) == "trace-sink")
        .expect("the second consumer's span");
    assert_eq!(decide.parent_span_id, root.span_context.span_id());
    assert_eq!(sink_span.parent_span_id, decide.span_context.span_id());
    assert!(decide.parent_span_is_remote && sink_span.parent_span_is_remote);
}
