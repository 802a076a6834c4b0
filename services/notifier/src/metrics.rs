//! Every metric of the notifier, registered in one place, and the delivery counters a caller
//! (benchmark, `prx-ci up`) can read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The notifier's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    chat: Family<OutcomeLabels, Counter>,
    statuses: Family<OutcomeLabels, Counter>,
    check_runs: Family<OutcomeLabels, Counter>,
    /// Builds waiting for their message to be delivered.
    pub chat_queue: Gauge,
    /// Commit statuses waiting to be written.
    pub status_queue: Gauge,
    /// Builds whose check run waits to be written.
    pub check_run_queue: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            chat: Family::default(),
            statuses: Family::default(),
            check_runs: Family::default(),
            chat_queue: Gauge::default(),
            status_queue: Gauge::default(),
            check_run_queue: Gauge::default(),
        };
        // The outcomes alerts and boards read exist from the start, so the first counts.
        for outcome in ["posted", "updated", "rejected", "failed"] {
            drop(metrics.chat.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
        }
        for outcome in ["written", "rejected", "failed"] {
            drop(metrics.statuses.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
            drop(metrics.check_runs.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
        }
        registry.register(
            "prx_ci_notifier_chat",
            "Chat deliveries by outcome (posted, updated, unchanged, coalesced, failed, ...)",
            metrics.chat.clone(),
        );
        registry.register(
            "prx_ci_notifier_statuses",
            "Commit status writes by outcome (written, coalesced, failed, ...)",
            metrics.statuses.clone(),
        );
        registry.register(
            "prx_ci_notifier_check_runs",
            "Check-run writes by outcome (written, coalesced, unchanged, failed, ...)",
            metrics.check_runs.clone(),
        );
        registry.register(
            "prx_ci_notifier_check_run_queue",
            "Builds whose check run waits to be written",
            metrics.check_run_queue.clone(),
        );
        registry.register(
            "prx_ci_notifier_chat_queue",
            "Builds waiting for their message to be delivered",
            metrics.chat_queue.clone(),
        );
        registry.register(
            "prx_ci_notifier_status_queue",
            "Commit statuses waiting to be written",
            metrics.status_queue.clone(),
        );
        metrics
    }

    /// Counts one chat delivery outcome.
    pub fn chat(&self, outcome: &str) {
        self.chat
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one check-run outcome.
    pub fn check_run(&self, outcome: &str) {
        self.check_runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one commit-status outcome.
    pub fn status(&self, outcome: &str) {
        self.statuses
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Counters a caller (benchmark, `prx-ci up`) can read while the notifier runs.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStats {
    pub events_applied: Arc<AtomicU64>,
    pub chat_requested: Arc<AtomicU64>,
    pub chat_sent: Arc<AtomicU64>,
    pub statuses_requested: Arc<AtomicU64>,
    pub statuses_written: Arc<AtomicU64>,
    pub check_runs_requested: Arc<AtomicU64>,
    pub check_runs_written: Arc<AtomicU64>,
    /// Check-run attempts put off because another replica held the run's lease.
    pub check_runs_leased_elsewhere: Arc<AtomicU64>,
}

/// Adds one to a [`DeliveryStats`] counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
