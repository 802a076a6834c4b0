//! The ingress's Prometheus metrics: requests by outcome (rejections by cause among them),
//! ignored events by name, store latency, requests and body bytes in flight, connections
//! closed for slow headers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What happened to a webhook request (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Stored in JetStream (202).
    Stored,
    /// Already stored earlier: a redelivery (202).
    Duplicate,
    /// `ping` (200, not stored).
    Ping,
    /// Event type not in `allowed_events` (202, not stored).
    Ignored,
    /// Missing or wrong signature (401).
    Unauthorized,
    /// Body over `max_body_bytes` (413).
    TooLarge,
    /// Not a webhook (400).
    BadRequest,
    /// Not stored within `store_timeout` or the broker refused (503).
    Unavailable,
    /// The body did not arrive within `body_read_timeout` (408).
    BodyTimeout,
    /// The body did not fit in what was left of `body_budget_bytes` (503, `Retry-After`).
    OverBudget,
    /// `max_concurrent_requests` were already being handled (503, `Retry-After`).
    OverConcurrency,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Stored,
        Outcome::Duplicate,
        Outcome::Ping,
        Outcome::Ignored,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::BadRequest,
        Outcome::Unavailable,
        Outcome::BodyTimeout,
        Outcome::OverBudget,
        Outcome::OverConcurrency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Ping => "ping",
            Outcome::Ignored => "ignored",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::OverBudget => "over_budget",
            Outcome::OverConcurrency => "over_concurrency",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// The ingress's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngressMetrics {
    /// One counter per [`Outcome`], resolved once so the request path takes no lock.
    by_outcome: [Counter; Outcome::ALL.len()],
    ignored_events: Family<EventLabels, Counter>,
    store_seconds: Histogram,
    in_flight: Gauge,
    body_bytes_in_flight: Gauge,
    header_timeouts: Counter,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl IngressMetrics {
    /// Registers the metrics in `registry` (once per process).
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<OutcomeLabels, Counter>::default();
        let by_outcome = Outcome::ALL.map(|outcome| {
            requests
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.name(),
                })
                .clone()
        });
        let ignored_events = Family::<EventLabels, Counter>::default();
        // 0.25 ms .. ~8 s: covers the whole store deadline.
        let store_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "prx_ci_ingress_requests",
            "Webhook requests by outcome",
            requests,
        );
        registry.register(
            "prx_ci_ingress_ignored_events",
            "Verified deliveries not stored because their event type is not allowed",
            ignored_events.clone(),
        );
        registry.register(
            "prx_ci_ingress_store_seconds",
            "Time from starting the store to JetStream's ack (or giving up)",
            store_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "prx_ci_ingress_in_flight",
            "Webhook requests being handled",
            in_flight.clone(),
        );
        let body_bytes_in_flight = Gauge::default();
        registry.register(
            "prx_ci_ingress_body_bytes_in_flight",
            "Request-body bytes reserved from body_budget_bytes by requests in flight",
            body_bytes_in_flight.clone(),
        );
        let header_timeouts = Counter::default();
        registry.register(
            "prx_ci_ingress_header_timeouts",
            "Connections closed because a request's headers did not arrive within \
             header_read_timeout (including idle keep-alive connections)",
            header_timeouts.clone(),
        );
        Self {
            by_outcome,
            ignored_events,
            store_seconds,
            in_flight,
            body_bytes_in_flight,
            header_timeouts,
        }
    }

    pub fn count(&self, outcome: Outcome) {
        // `ALL` lists the variants in declaration order, so the discriminant is the index.
        self.by_outcome[outcome as usize].inc();
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn count_ignored(&self, event: &str) {
        self.ignored_events
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    pub fn observe_store(&self, seconds: f64) {
        self.store_seconds.observe(seconds);
    }

    /// The gauge the body budget keeps up to date.
    pub fn body_bytes_in_flight(&self) -> Gauge {
        self.body_bytes_in_flight.clone()
    }

    /// The counter of connections closed for slow headers.
    pub fn header_timeouts(&self) -> Counter {
        self.header_timeouts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_under_their_names() {
        let mut registry = Registry::default();
        let metrics = IngressMetrics::register(&mut registry);
        metrics.count(Outcome::Stored);
        metrics.count(Outcome::Stored);
        metrics.count(Outcome::Unavailable);
        metrics.count_ignored("issues");
        metrics.observe_store(0.002);
        let text = prx_ci_shared::testing::metrics_text(&registry);
        assert!(
            text.contains(r#"prx_ci_ingress_requests_total{outcome="stored"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"prx_ci_ingress_requests_total{outcome="unavailable"} 1"#));
        assert!(text.contains(r#"prx_ci_ingress_requests_total{outcome="too_large"} 0"#));
        metrics.count(Outcome::OverConcurrency);
        metrics.count(Outcome::OverBudget);
        metrics.count(Outcome::BodyTimeout);
        metrics.header_timeouts().inc();
        let text = prx_ci_shared::testing::metrics_text(&registry);
        for series in [
            r#"prx_ci_ingress_requests_total{outcome="over_concurrency"} 1"#,
            r#"prx_ci_ingress_requests_total{outcome="over_budget"} 1"#,
            r#"prx_ci_ingress_requests_total{outcome="body_timeout"} 1"#,
            "prx_ci_ingress_header_timeouts_total 1",
            "prx_ci_ingress_body_bytes_in_flight 0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
        assert!(text.contains(r#"prx_ci_ingress_ignored_events_total{event="issues"} 1"#));
        assert!(text.contains("prx_ci_ingress_store_seconds_count 1"));
    }
}
