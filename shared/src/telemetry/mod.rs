//! Tracing setup (logs, plus OpenTelemetry spans when an exporter is configured) and W3C
//! trace-context propagation through NATS message headers, so one trace runs from the webhook
//! to the SSM write; the consumer metrics every service exports ([`metrics`]).
//!
//! Spans are recorded (by the OpenTelemetry layer) only when `otlp_endpoint` is set, and then
//! only for sampled traces (`sample_ratio`; a sampled incoming `traceparent` is honoured).
//! Without an exporter nothing is recorded, yet every request and every handled message still
//! carries a [`TraceContext`] (random ids, no allocation beyond the header itself), kept in a
//! task-local by [`in_trace`] and written into every published event by
//! [`inject_current_context`], whatever the log level.

pub mod metrics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::HeaderMap;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The W3C trace-context header, in HTTP requests and NATS messages.
pub const TRACEPARENT: &str = "traceparent";

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
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint spans are exported to (e.g. `http://127.0.0.1:4317`). Default: none:
    /// no span is recorded, trace context is still propagated.
    pub otlp_endpoint: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter. Default: `RUST_LOG`, else `info,async_nats=warn`.
    pub log_filter: Option<String>,
    /// Fraction (0 to 1) of new traces marked sampled, i.e. recorded by every service that
    /// exports spans. A request whose incoming `traceparent` is sampled is always recorded.
    /// Default 1: with `otlp_endpoint` set, every trace.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            log_format: LogFormat::default(),
            log_filter: None,
            sample_ratio: 1.0,
        }
    }
}

impl crate::config::Validate for TelemetryConfig {
    /// Checks `sample_ratio` is a fraction.
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "sample_ratio must be between 0 and 1, not {}",
                self.sample_ratio
            ));
        }
        Ok(())
    }
}

/// Keeps the tracer provider (if spans are exported) alive; flushes spans on drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("cannot flush spans: {err}");
        }
    }
}

/// Whether the installed subscriber records spans (has the OpenTelemetry layer).
static RECORDING: AtomicBool = AtomicBool::new(false);
/// `sample_ratio`, as `f64` bits (1.0 until [`init`] sets it).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

fn sample_ratio() -> f64 {
    f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed))
}

/// Installs the global subscriber: a log layer, and an OpenTelemetry layer exporting sampled
/// spans when `otlp_endpoint` is set. Without it no span is recorded; trace context is
/// created and carried across services either way ([`TraceContext`]).
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use crate::config::Validate as _;
    use anyhow::Context as _;

    config
        .validate()
        .map_err(|reason| anyhow::anyhow!("invalid configuration [telemetry]: {reason}"))?;
    let Some(endpoint) = &config.otlp_endpoint else {
        SAMPLE_RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
        let _ = tracing_subscriber::registry()
            .with(log_filter(config)?)
            .with(log_layer(config))
            .try_init();
        return Ok(TelemetryGuard { provider: None });
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .context("cannot build the OTLP span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_batch_exporter(exporter)
        .build();
    init_with_provider(service_name, config, provider.clone())?;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

fn log_filter(config: &TelemetryConfig) -> anyhow::Result<EnvFilter> {
    Ok(match &config.log_filter {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
    })
}

fn log_layer<S>(config: &TelemetryConfig) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    }
}

/// Installs the global subscriber recording spans through `provider` (an exporter is
/// configured; tests pass one with an in-memory exporter, whose sampler decides what is
/// recorded). Does nothing if a global subscriber is already set.
pub fn init_with_provider(
    service_name: &str,
    config: &TelemetryConfig,
    provider: SdkTracerProvider,
) -> anyhow::Result<()> {
    let filter = log_filter(config)?;
    let tracer = provider.tracer(service_name.to_owned());
    opentelemetry::global::set_tracer_provider(provider);
    SAMPLE_RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
    // `try_init` fails only when a subscriber is already installed (tests, `prx-ci up`).
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(config))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Per-span bookkeeping nobody reads (busy/idle times, code location, thread),
                // skipped to keep the span of every webhook request cheap.
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false),
        )
        .try_init()
        .is_ok();
    if installed {
        RECORDING.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// A W3C trace context: the trace, the span that is the parent of whatever it is passed to,
/// and whether the trace is sampled (recorded where spans are exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace with random ids, sampled with probability `[telemetry] sample_ratio`.
    pub fn root() -> Self {
        let trace_id = nonzero(rand::random::<u128>);
        Self {
            trace_id,
            span_id: nonzero(rand::random::<u64>),
            sampled: sampled_by_ratio(trace_id, sample_ratio()),
        }
    }

    /// Parses a `traceparent` value (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`;
    /// later versions may append fields). `None` when it is not a valid one.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let value = traceparent.trim().as_bytes();
        if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let version = hex_u128(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex_u128(&value[3..35])?;
        let span_id = u64::try_from(hex_u128(&value[36..52])?).ok()?;
        let flags = hex_u128(&value[53..55])?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// The context of work started by a message or request carrying `traceparent`: that
    /// context passed through unchanged (a hop that records no span of its own must not invent
    /// a span id, or a recording service further on would name a parent that was never
    /// exported), else (absent or invalid) a new trace. A recorded span's own id replaces it
    /// in what is published ([`inject_current_context`]).
    pub fn continuing(traceparent: Option<&str>) -> Self {
        traceparent.and_then(Self::parse).unwrap_or_else(Self::root)
    }

    fn to_otel(self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            flags,
            true,
            TraceState::default(),
        ))
    }
}

fn nonzero<T: Default + PartialEq>(random: impl Fn() -> T) -> T {
    loop {
        let value = random();
        if value != T::default() {
            return value;
        }
    }
}

/// The `TraceIdRatioBased` decision: the trace id's low 63 bits below `ratio` of their range.
fn sampled_by_ratio(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = (trace_id as u64) >> 1;
    (low as f64) < ratio * (1u64 << 63) as f64
}

/// Lowercase or uppercase hex digits (at most 32) as a number; `None` for anything else.
fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, digit| {
        let value = (*digit as char).to_digit(16)?;
        Some(acc << 4 | u128::from(value))
    })
}

tokio::task_local! {
    static CURRENT_TRACE: TraceContext;
}

/// Runs `future` inside `trace`: every event it publishes carries it ([`inject_current_context`]).
pub fn in_trace<F: Future>(trace: TraceContext, future: F) -> impl Future<Output = F::Output> {
    CURRENT_TRACE.scope(trace, future)
}

/// The trace context set by the enclosing [`in_trace`], if any.
pub fn current_trace() -> Option<TraceContext> {
    CURRENT_TRACE.try_with(|trace| *trace).ok()
}

/// When spans are recorded, makes `span` a child of `traceparent` (if valid). Call it before
/// `span` is first entered: entering starts the recorded span, whose parent is then fixed.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if RECORDING.load(Ordering::Relaxed)
        && let Some(parent) = traceparent.and_then(TraceContext::parse)
    {
        // Fails only when the span is disabled (or already started); then nothing is linked.
        let _ = span.set_parent(parent.to_otel());
    }
}

/// Starts the work on a message carrying `traceparent`: [`set_parent`] on `span` (not entered
/// yet), and the context to run the work in ([`in_trace`]), `traceparent`'s own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) -> TraceContext {
    set_parent(span, traceparent);
    TraceContext::continuing(traceparent)
}

/// [`continue_trace`] from a message's headers.
pub fn continue_trace_from_headers(
    span: &tracing::Span,
    headers: Option<&HeaderMap>,
) -> TraceContext {
    let traceparent = headers.and_then(|h| h.get(TRACEPARENT)).map(|v| v.as_str());
    continue_trace(span, traceparent)
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Writes the current trace context into `headers` (`traceparent`): the current span's when
/// spans are recorded and it has one, else the enclosing [`in_trace`]'s, else a new trace's.
pub fn inject_current_context(headers: &mut HeaderMap) {
    if RECORDING.load(Ordering::Relaxed) {
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
            return;
        }
    }
    let trace = current_trace().unwrap_or_else(TraceContext::root);
    headers.insert(TRACEPARENT, trace.traceparent().as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let trace = TraceContext::parse(value).unwrap();
        assert_eq!(trace.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(trace.span_id, 0xb7ad6b7169203331);
        assert!(trace.sampled);
        assert_eq!(trace.traceparent(), value);
        let unsampled = TraceContext::parse(&value.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        // A later version may append fields.
        assert!(TraceContext::parse(&format!("01{}-extra", &value[2..])).is_some());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for value in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_continued_trace_keeps_its_id_and_sampling() {
        let parent =
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        let child = TraceContext::continuing(Some(&parent.traceparent()));
        assert_eq!(child.trace_id, parent.trace_id);
        assert!(!child.sampled);
        // Passed through: the next recorded span's parent is the last one that existed.
        assert_eq!(child.span_id, parent.span_id);
        let fresh = TraceContext::continuing(Some("garbage"));
        assert_ne!(fresh.trace_id, parent.trace_id);
        assert_ne!(fresh.trace_id, 0);
    }

    #[test]
    fn the_ratio_samples_that_share_of_trace_ids() {
        assert!(sampled_by_ratio(0, 1.0));
        assert!(!sampled_by_ratio(0, 0.0));
        assert!(!sampled_by_ratio(u128::MAX, 0.5));
        let sampled = (0..10_000u128)
            .filter(|i| sampled_by_ratio(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C), 0.25))
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }

    #[tokio::test]
    async fn every_published_event_gets_a_traceparent() {
        let parent =
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        let mut headers = HeaderMap::new();
        in_trace(parent, async { inject_current_context(&mut headers) }).await;
        assert_eq!(
            headers.get(TRACEPARENT).unwrap().as_str(),
            parent.traceparent()
        );
        // Outside any trace: a new one, still written.
        let mut headers = HeaderMap::new();
        inject_current_context(&mut headers);
        let written = TraceContext::parse(headers.get(TRACEPARENT).unwrap().as_str());
        assert!(written.is_some_and(|t| t.trace_id != parent.trace_id));
    }
}
