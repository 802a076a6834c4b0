//! Every publisher metric: one struct ([`PublisherMetrics`]), registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::parameter_store::StoreError;

/// The publisher's metrics (the consumer's own come from `shared::telemetry`).
#[derive(Debug, Clone)]
pub struct PublisherMetrics {
    /// `prx_ci_publisher_parameters`: parameters handled, by outcome.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// `prx_ci_publisher_store_errors`: failed parameter-store (SSM) calls, by error.
    pub store_errors: Family<StoreErrorLabels, Counter>,
    /// The ordering fence's metrics.
    pub fence: FenceMetrics,
}

/// Label of [`PublisherMetrics::outcomes`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or the skip reason.
    pub outcome: String,
}

/// Label of [`PublisherMetrics::store_errors`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    /// `refused` (nothing written, retryable), `rejected` (nothing written, never will be),
    /// `unknown` (no usable answer).
    pub error: String,
}

impl PublisherMetrics {
    /// Creates every metric and registers it in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        // Exported from the start (skip reasons appear when they first happen).
        drop(outcomes.get_or_create(&OutcomeLabels {
            outcome: "applied".to_owned(),
        }));
        registry.register(
            "prx_ci_publisher_parameters",
            "Parameters handled, by outcome (applied or the skip reason)",
            outcomes.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        for error in ["refused", "rejected", "unknown"] {
            drop(store_errors.get_or_create(&StoreErrorLabels {
                error: error.to_owned(),
            }));
        }
        registry.register(
            "prx_ci_publisher_store_errors",
            "Parameter-store (SSM) writes that failed after the adapter's own retries, by error \
             (refused: retryable, rejected: never written, unknown: no usable answer)",
            store_errors.clone(),
        );
        let fence = FenceMetrics::new();
        fence.register(registry);
        Self {
            outcomes,
            store_errors,
            fence,
        }
    }

    /// Counts one failed parameter-store call.
    pub fn store_error(&self, error: &StoreError) {
        let error = match error {
            StoreError::NotWritten {
                retryable: true, ..
            } => "refused",
            StoreError::NotWritten { .. } => "rejected",
            StoreError::Unknown { .. } => "unknown",
        };
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    /// Counts one parameter's outcome (`applied` or the skip reason).
    pub fn outcome(&self, outcome: String) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Fence metrics.
#[derive(Debug, Clone)]
pub struct FenceMetrics {
    /// Time spent on fence records per publication (reads and compare-and-sets, excluding the
    /// store write and waits on other claims).
    pub overhead_seconds: Histogram,
    /// Waits on another replica's claim.
    pub waits: Counter,
    /// Abandoned claims resolved after their lease.
    pub takeovers: Counter,
    /// Compare-and-set conflicts (another replica changed the record in between).
    pub conflicts: Counter,
    /// Writes whose claim was gone when they were marked: the residual race happened (see
    /// docs/ordering.md). Alert on any.
    pub lost_after_write: Counter,
}

impl FenceMetrics {
    #[expect(
        clippy::new_without_default,
        reason = "histogram buckets are chosen here"
    )]
    pub fn new() -> Self {
        Self {
            overhead_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            waits: Counter::default(),
            takeovers: Counter::default(),
            conflicts: Counter::default(),
            lost_after_write: Counter::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "prx_ci_publisher_fence_overhead_seconds",
            "Time spent on fence records per publication",
            self.overhead_seconds.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_waits",
            "Waits on another replica's claim",
            self.waits.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_takeovers",
            "Abandoned claims resolved after their lease",
            self.takeovers.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_conflicts",
            "Compare-and-set conflicts on fence records",
            self.conflicts.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_lost_after_write",
            "Writes that landed after their claim was taken over (residual race; alert)",
            self.lost_after_write.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_exported_from_the_start_and_counted_by_kind() {
        let mut registry = Registry::default();
        let metrics = PublisherMetrics::register(&mut registry);
        let text = prx_ci_shared::testing::metrics_text(&registry);
        for series in [
            r#"prx_ci_publisher_store_errors_total{error="refused"} 0"#,
            r#"prx_ci_publisher_store_errors_total{error="rejected"} 0"#,
            r#"prx_ci_publisher_store_errors_total{error="unknown"} 0"#,
            r#"prx_ci_publisher_parameters_total{outcome="applied"} 0"#,
            "prx_ci_publisher_fence_lost_after_write_total 0",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
        let refused = StoreError::NotWritten {
            message: "ThrottlingException".into(),
            retryable: true,
        };
        metrics.store_error(&refused);
        metrics.store_error(&refused);
        metrics.store_error(&StoreError::NotWritten {
            message: "ParameterMaxVersionLimitExceeded".into(),
            retryable: false,
        });
        metrics.store_error(&StoreError::Unknown {
            message: "timeout".into(),
        });
        let text = prx_ci_shared::testing::metrics_text(&registry);
        for series in [
            r#"prx_ci_publisher_store_errors_total{error="refused"} 2"#,
            r#"prx_ci_publisher_store_errors_total{error="rejected"} 1"#,
            r#"prx_ci_publisher_store_errors_total{error="unknown"} 1"#,
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
    }
}
