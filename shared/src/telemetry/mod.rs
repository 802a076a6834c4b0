//! Tracing setup (logs plus OpenTelemetry spans) and W3C trace-context propagation through
//! NATS message headers, so one trace runs from the webhook to the SSM write; the consumer
//! metrics every service exports ([`metrics`]).

pub mod metrics;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging and tracing settings (section `[telemetry]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint spans are exported to (e.g. `http://127.0.0.1:4317`). Default: none,
    /// spans are still created and propagated but not exported.
    pub otlp_endpoint: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter. Default: `RUST_LOG`, else `info,async_nats=warn`.
    pub log_filter: Option<String>,
}

/// Keeps the tracer provider alive; flushes spans on drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("cannot flush spans: {err}");
        }
    }
}

/// Installs the global subscriber: a log layer and an OpenTelemetry layer. A tracer provider
/// is always installed (exporting only when an endpoint is configured) so that trace context
/// is created and carried across services either way.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use anyhow::Context as _;

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .context("cannot build the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    init_with_provider(service_name, config, provider.clone())?;
    Ok(TelemetryGuard { provider })
}

/// Installs the global subscriber around a given provider (tests pass one with an in-memory
/// exporter). Does nothing if a global subscriber is already set.
pub fn init_with_provider(
    service_name: &str,
    config: &TelemetryConfig,
    provider: SdkTracerProvider,
) -> anyhow::Result<()> {
    let filter = match &config.log_filter {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
    };
    let tracer = provider.tracer(service_name.to_owned());
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    opentelemetry::global::set_tracer_provider(provider);
    // `try_init` fails only when a subscriber is already installed (tests, `prx-ci up`).
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Per-span bookkeeping nobody reads (busy/idle times, code location, thread),
                // skipped to keep the span of every webhook request cheap.
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false),
        )
        .try_init();
    Ok(())
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into `headers`.
pub fn inject_current_context(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(context);
}

/// Makes `span` a child of a `traceparent` value (e.g. from an HTTP request).
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    set_parent_from_headers(span, Some(&headers));
}
