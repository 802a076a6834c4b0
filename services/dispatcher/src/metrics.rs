//! Every dispatcher metric, in one struct registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prx_ci_shared::domain::Architecture;

/// The dispatcher's own metrics (the consumer's are `shared::telemetry`'s).
#[derive(Debug, Clone)]
pub struct DispatcherMetrics {
    decisions: Family<DecisionLabels, Counter>,
    builds_started: Family<ArchitectureLabels, Counter>,
    builds_reannounced: Counter,
    builds_cancelled: Counter,
    reruns: Family<RerunLabels, Counter>,
    webhook_to_start_seconds: Histogram,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RerunLabels {
    /// `started`, or why not (`exhausted`, `unrequested`, `unrecorded`).
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `build` or `skip`.
    outcome: String,
    /// The skip reason ("" for builds).
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArchitectureLabels {
    architecture: String,
}

impl DispatcherMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            builds_started: Family::default(),
            builds_reannounced: Counter::default(),
            builds_cancelled: Counter::default(),
            reruns: Family::default(),
            // 50 ms .. ~27 min.
            webhook_to_start_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
        };
        // These series exist from the start, so rates and alerts on any increase see the first
        // event (skip reasons appear when they first happen).
        for outcome in ["started", "exhausted", "unrequested", "unrecorded"] {
            metrics.rerun_counter(outcome);
        }
        drop(metrics.decisions.get_or_create(&DecisionLabels {
            outcome: "build".to_owned(),
            reason: String::new(),
        }));
        for architecture in [Architecture::X86_64, Architecture::Aarch64] {
            drop(metrics.builds_started.get_or_create(&ArchitectureLabels {
                architecture: architecture.as_str().to_owned(),
            }));
        }
        registry.register(
            "prx_ci_dispatcher_reruns",
            "Builds lost to the system's failure (FAULT): re-runs started, or why none was",
            metrics.reruns.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_decisions",
            "Webhooks decided, by outcome and skip reason",
            metrics.decisions.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_started",
            "Builds started through the backend",
            metrics.builds_started.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_reannounced",
            "Redelivered webhooks whose build was already started (announced again, not restarted)",
            metrics.builds_reannounced.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_builds_cancelled",
            "Superseded builds stopped",
            metrics.builds_cancelled.clone(),
        );
        registry.register(
            "prx_ci_dispatcher_webhook_to_start_seconds",
            "Time from the ingress receiving a push to the backend accepting its build",
            metrics.webhook_to_start_seconds.clone(),
        );
        metrics
    }

    /// A webhook decided: `build`, or `skip` with its reason.
    pub fn decision(&self, outcome: &str, reason: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn build_started(&self, architecture: Architecture) {
        self.builds_started
            .get_or_create(&ArchitectureLabels {
                architecture: architecture.as_str().to_owned(),
            })
            .inc();
    }

    /// A build lost to the system: `started` its re-run, or why not.
    pub fn rerun(&self, outcome: &str) {
        self.rerun_counter(outcome).inc();
    }

    fn rerun_counter(&self, outcome: &str) -> Counter {
        self.reruns
            .get_or_create(&RerunLabels {
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// A build the backend accepted `seconds` after its webhook was received.
    pub fn webhook_to_start(&self, seconds: f64) {
        self.webhook_to_start_seconds.observe(seconds.max(0.0));
    }

    pub fn build_reannounced(&self) {
        self.builds_reannounced.inc();
    }

    pub fn build_cancelled(&self) {
        self.builds_cancelled.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_alerts_read_exist_from_the_start() {
        let mut registry = Registry::default();
        let metrics = DispatcherMetrics::register(&mut registry);
        let text = prx_ci_shared::testing::metrics_text(&registry);
        for series in [
            r#"prx_ci_dispatcher_reruns_total{outcome="started"} 0"#,
            r#"prx_ci_dispatcher_reruns_total{outcome="exhausted"} 0"#,
            r#"prx_ci_dispatcher_reruns_total{outcome="unrequested"} 0"#,
            r#"prx_ci_dispatcher_reruns_total{outcome="unrecorded"} 0"#,
            r#"prx_ci_dispatcher_decisions_total{outcome="build",reason=""} 0"#,
            r#"prx_ci_dispatcher_builds_started_total{architecture="x86_64"} 0"#,
            r#"prx_ci_dispatcher_builds_started_total{architecture="aarch64"} 0"#,
            "prx_ci_dispatcher_webhook_to_start_seconds_count 0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
        metrics.rerun("exhausted");
        metrics.webhook_to_start(3.0);
        metrics.webhook_to_start(-1.0);
        let text = prx_ci_shared::testing::metrics_text(&registry);
        for series in [
            r#"prx_ci_dispatcher_reruns_total{outcome="exhausted"} 1"#,
            "prx_ci_dispatcher_webhook_to_start_seconds_count 2",
            "prx_ci_dispatcher_webhook_to_start_seconds_sum 3.0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
    }
}
