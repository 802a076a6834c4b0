//! The ingress's Prometheus metrics: requests by outcome, ignored events by name, store
//! latency.

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
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Stored,
        Outcome::Duplicate,
        Outcome::Ping,
        Outcome::Ignored,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::BadRequest,
        Outcome::Unavailable,
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
        Self {
            by_outcome,
            ignored_events,
            store_seconds,
            in_flight,
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
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"prx_ci_ingress_requests_total{outcome="stored"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"prx_ci_ingress_requests_total{outcome="unavailable"} 1"#));
        assert!(text.contains(r#"prx_ci_ingress_requests_total{outcome="too_large"} 0"#));
        assert!(text.contains(r#"prx_ci_ingress_ignored_events_total{event="issues"} 1"#));
        assert!(text.contains("prx_ci_ingress_store_seconds_count 1"));
    }
}
