//! The build-watcher's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    /// `sqs`, `reconciler`, `local`, ...
    pub source: String,
    /// `applied`, `no_change`, `unrequested`, `adopted` (a console retry: see `console_retry`).
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// Counters of the service (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub reports: Family<SourceOutcome, Counter>,
    pub transitions: Family<Kind, Counter>,
    pub sqs_messages: Family<Outcome, Counter>,
    pub reconciler_calls: Family<Outcome, Counter>,
    pub reconciled_builds: Counter,
    pub in_flight: Gauge,
    pub console_retries: Family<Outcome, Counter>,
    pub log_tails: Family<Outcome, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Every kind exists from the start, so rates and alerts see the first transition.
        for kind in ["started", "phase", "completed"] {
            drop(m.transitions.get_or_create(&Kind {
                kind: kind.to_owned(),
            }));
        }
        registry.register(
            "prx_ci_build_watcher_reports",
            "Build reports handled, by source and outcome",
            m.reports.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_transitions",
            "Build transitions emitted, by kind (started, phase, completed)",
            m.transitions.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_sqs_messages",
            "SQS messages, by outcome (stored, duplicate, store_failed, deleted, delete_failed)",
            m.sqs_messages.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_reconciler_calls",
            "BatchGetBuilds calls, by outcome",
            m.reconciler_calls.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_reconciled_builds",
            "Builds the reconciler reported",
            m.reconciled_builds.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_in_flight",
            "Builds in flight at the reconciler's last pass",
            m.in_flight.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_console_retries",
            "Builds nobody requested, by whether they matched a request (adopted, adopted_among_several, unmatched)",
            m.console_retries.clone(),
        );
        registry.register(
            "prx_ci_build_watcher_log_tails",
            "Log tails put on completions of builds that did not succeed, by outcome (fetched from CloudWatch Logs, reported by the local runner, unavailable)",
            m.log_tails.clone(),
        );
        m
    }

    /// A completion got a log tail: `fetched`, `reported` or `unavailable`.
    pub fn log_tail(&self, outcome: &str) {
        self.log_tails
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn report(&self, source: &str, outcome: &str) {
        self.reports
            .get_or_create(&SourceOutcome {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn transition(&self, kind: &str) {
        self.transitions
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn sqs(&self, outcome: &str, n: u64) {
        self.sqs_messages
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// A build nobody requested was looked up in the request index: `adopted` (it retries one
    /// request), `adopted_among_several` (several matched; the newest push was taken),
    /// `unmatched`.
    pub fn console_retry(&self, outcome: &str) {
        self.console_retries
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn reconciler_call(&self, outcome: &str) {
        self.reconciler_calls
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
