//! Metrics shared by every consumer loop (one family per process, labelled by consumer): what
//! was handled, how long it took, and the backlog the server reports for the durable consumer.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// The `outcome` values of [`ConsumerMetrics::messages`].
pub const OUTCOMES: [&str; 3] = ["acked", "retried", "parked"];

/// Counters, latencies and backlog of consumer loops.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    pub messages: Family<OutcomeLabels, Counter>,
    pub handle_seconds: Family<ConsumerLabels, Histogram>,
    /// Messages the consumer's filter matches that were not delivered yet (`num_pending`).
    pub pending: Family<ConsumerLabels, Gauge>,
    /// Messages delivered and not acknowledged yet (`num_ack_pending`).
    pub ack_pending: Family<ConsumerLabels, Gauge>,
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
        let pending = Family::<ConsumerLabels, Gauge>::default();
        let ack_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "prx_ci_consumer_pending",
            "Messages of the consumer's stream not delivered to it yet, at its last poll",
            pending.clone(),
        );
        registry.register(
            "prx_ci_consumer_ack_pending",
            "Messages delivered to the consumer and not acknowledged yet, at its last poll",
            ack_pending.clone(),
        );
        Self {
            messages,
            handle_seconds,
            pending,
            ack_pending,
        }
    }

    /// Creates every series of `consumer` at zero, so each is exported from the start (a rate
    /// or an alert on a series that appears with its first event misses that event).
    pub(crate) fn start_consumer(&self, consumer: &str) {
        for outcome in OUTCOMES {
            drop(self.messages.get_or_create(&OutcomeLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.to_owned(),
            }));
        }
        let labels = ConsumerLabels {
            consumer: consumer.to_owned(),
        };
        drop(self.handle_seconds.get_or_create(&labels));
        drop(self.pending.get_or_create(&labels));
        drop(self.ack_pending.get_or_create(&labels));
    }

    /// Records the backlog the server reported for `consumer`.
    pub(crate) fn backlog(&self, consumer: &str, pending: u64, ack_pending: usize) {
        let labels = ConsumerLabels {
            consumer: consumer.to_owned(),
        };
        self.pending
            .get_or_create(&labels)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.ack_pending
            .get_or_create(&labels)
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
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
