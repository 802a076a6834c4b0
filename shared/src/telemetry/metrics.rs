//! Metrics shared by every consumer loop (one family per process, labelled by consumer).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a handled message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub consumer: String,
    /// `acked`, `retried`, `parked`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// Counters and latencies of consumer loops.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    pub messages: Family<OutcomeLabels, Counter>,
    pub handle_seconds: Family<ConsumerLabels, Histogram>,
}

impl ConsumerMetrics {
    /// Registers the families in `registry` (call once per process).
    pub fn register(registry: &mut Registry) -> Self {
        let messages = Family::<OutcomeLabels, Counter>::default();
        let handle_seconds = Family::<ConsumerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "prx_ci_consumer_messages",
            "Messages handled by consumer loops, by outcome",
            messages.clone(),
        );
        registry.register(
            "prx_ci_consumer_handle_seconds",
            "Time spent handling one message",
            handle_seconds.clone(),
        );
        Self {
            messages,
            handle_seconds,
        }
    }

    pub(crate) fn count(&self, consumer: &str, outcome: &str) {
        self.messages
            .get_or_create(&OutcomeLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
