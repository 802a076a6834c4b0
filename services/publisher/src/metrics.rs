//! Every publisher metric: one struct ([`PublisherMetrics`]), registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The publisher's metrics (the consumer's own come from `shared::telemetry`).
#[derive(Debug, Clone)]
pub struct PublisherMetrics {
    /// `prx_ci_publisher_parameters`: parameters handled, by outcome.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// The ordering fence's metrics.
    pub fence: FenceMetrics,
}

/// Label of [`PublisherMetrics::outcomes`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or the skip reason.
    pub outcome: String,
}

impl PublisherMetrics {
    /// Creates every metric and registers it in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "prx_ci_publisher_parameters",
            "Parameters handled, by outcome (applied or the skip reason)",
            outcomes.clone(),
        );
        let fence = FenceMetrics::new();
        fence.register(registry);
        Self { outcomes, fence }
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
