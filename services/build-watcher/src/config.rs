//! The `[build_watcher]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use prx_ci_shared::config::{Mode, Validate};
use serde::Deserialize;

/// Most ids `BatchGetBuilds` accepts in one call.
pub const MAX_BATCH_GET_BUILDS: usize = 100;

/// Settings of the build-watcher (section `[build_watcher]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildWatcherConfig {
    /// URL of the SQS queue an EventBridge rule feeds with `CodeBuild Build State Change` and
    /// `CodeBuild Build Phase Change` events. Default: none (no SQS source; local mode).
    pub queue_url: Option<String>,
    /// Long-poll wait of one `ReceiveMessage` (at most 20 s). Default `20s`.
    #[serde(with = "humantime_serde")]
    pub sqs_wait_time: Duration,
    /// Messages asked for per `ReceiveMessage` (1 to 10). Default 10.
    pub sqs_max_messages: i32,
    /// Visibility timeout asked for on receive: how long a message that could not be stored
    /// stays hidden before it is tried again. Default: none (the queue's own setting).
    #[serde(with = "humantime_serde")]
    pub sqs_visibility_timeout: Option<Duration>,
    /// A build in flight not heard of for this long is looked up with `BatchGetBuilds`.
    /// Default `5m`.
    #[serde(with = "humantime_serde")]
    pub reconcile_after: Duration,
    /// How often the reconciler looks for such builds. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Build ids per `BatchGetBuilds` call (1 to 100). Default 100.
    pub reconcile_batch_size: usize,
    /// Least time between two `BatchGetBuilds` calls (rate limit). Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub reconcile_call_spacing: Duration,
    /// How long a report whose build has no record yet waits, in the handler (first delivery
    /// only), for the BuildRequested to be processed before it is retried with the consumer's
    /// backoff (1 s, then 2 s, 5 s, ...). Default `2s`.
    ///
    /// The wait ends as soon as the record is written (the process's watch of the builds
    /// bucket wakes it; a wait costs the server nothing), so this bound only matters when the
    /// request is really late: the request consumer is behind, or nobody requested the build
    /// (a console retry, a build started by hand, a shadow-mode report before its shadow
    /// request). A waiting report holds one of the `report_concurrency` strands: the reports
    /// of the repositories that strand handles queue behind it, and once its small queue is
    /// full the consumer pulls nothing more until it is free. 2 s is well past the request
    /// consumer's lag short of a backlog (the race is lost by milliseconds), so a late request
    /// rarely costs a nak and a 1 s retry (the end-to-end bench's 1 s p99 at 100 pushes/s is
    /// read as that retry, behind the former 500 ms bound), while a build nobody requested holds
    /// its strand at most 2 s, once. A longer bound only helps when the request consumer is
    /// seconds behind, where the retries with backoff do about as well.
    #[serde(with = "humantime_serde")]
    pub request_wait: Duration,
    /// A report still without a BuildRequested this long after it was stored (and after the
    /// request consumer caught up with it) is a build nobody requested (started by hand): it
    /// is reported with what the report itself says. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub unrequested_after: Duration,
    /// Reports handled at once by this process, those of one repository one at a time in the
    /// order they were stored (so each build's events follow its reports' order); replicas are
    /// kept consistent by compare-and-set. Default 8.
    pub report_concurrency: usize,
    /// Requests and cancellations handled at once by this process, those of one subject (one
    /// kind, one repository) one at a time in the order stored. Each request is several NATS
    /// round trips (record, index, in-flight entry), so one at a time bounded the whole system
    /// below 200 pushes/s in the end-to-end bench, with reports waiting for their request
    /// (docs/benchmarks/e2e.md). A cancellation that overtakes its request is retried until the
    /// request is recorded (`request_handler.rs`). Default 8.
    pub request_concurrency: usize,
    /// Address of `/healthz`, `/readyz` and `/metrics` (binary only). Default `127.0.0.1:9103`.
    pub ops_listen: SocketAddr,
    /// `live` (default) or `shadow`: the reported builds are the original system's, each
    /// adopted into the shadow request of its repository, commit and architecture
    /// (`BuildRef.shadowed`; docs/migrating.md).
    pub mode: Mode,
    /// How long reading the end of a failed build's CloudWatch Logs stream (its log tail, on
    /// `BuildCompleted`) may take; past it the completion goes out with the tail marked
    /// unavailable. Needs `logs:GetLogEvents` (docs/check-runs.md). Default `3s`.
    #[serde(with = "humantime_serde")]
    pub log_tail_timeout: Duration,
}

impl Default for BuildWatcherConfig {
    fn default() -> Self {
        Self {
            queue_url: None,
            sqs_wait_time: Duration::from_secs(20),
            sqs_max_messages: 10,
            sqs_visibility_timeout: None,
            reconcile_after: Duration::from_secs(5 * 60),
            reconcile_interval: Duration::from_secs(30),
            reconcile_batch_size: MAX_BATCH_GET_BUILDS,
            reconcile_call_spacing: Duration::from_millis(500),
            request_wait: Duration::from_secs(2),
            unrequested_after: Duration::from_secs(120),
            report_concurrency: 8,
            request_concurrency: 8,
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            mode: Mode::Live,
            log_tail_timeout: Duration::from_secs(3),
        }
    }
}

impl Validate for BuildWatcherConfig {
    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.queue_url
            && url.trim().is_empty()
        {
            return Err("queue_url is empty (leave it out to disable the SQS source)".into());
        }
        if self.sqs_wait_time > Duration::from_secs(20) {
            return Err("sqs_wait_time must be at most 20s (SQS's long-poll limit)".into());
        }
        if !(1..=10).contains(&self.sqs_max_messages) {
            return Err(format!(
                "sqs_max_messages must be 1 to 10, not {}",
                self.sqs_max_messages
            ));
        }
        if let Some(v) = self.sqs_visibility_timeout
            && v > Duration::from_secs(12 * 3600)
        {
            return Err("sqs_visibility_timeout must be at most 12h".into());
        }
        if !(1..=MAX_BATCH_GET_BUILDS).contains(&self.reconcile_batch_size) {
            return Err(format!(
                "reconcile_batch_size must be 1 to {MAX_BATCH_GET_BUILDS}, not {}",
                self.reconcile_batch_size
            ));
        }
        if self.reconcile_interval.is_zero() {
            return Err("reconcile_interval must be positive".into());
        }
        if self.log_tail_timeout.is_zero() || self.log_tail_timeout > Duration::from_secs(30) {
            return Err(format!(
                "log_tail_timeout must be more than 0s and at most 30s (reading a log tail holds \
                 the build's completion back), not {:?}",
                self.log_tail_timeout
            ));
        }
        if self.report_concurrency == 0 {
            return Err("report_concurrency must be at least 1".into());
        }
        if self.request_concurrency == 0 {
            return Err("request_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::config::load_from;

    use super::*;

    fn figment(toml: &str) -> figment::Figment {
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(toml))
    }

    #[test]
    fn defaults_and_file_values() {
        let c: BuildWatcherConfig = load_from(&figment(""), "build_watcher").unwrap();
        assert_eq!(c.reconcile_after, Duration::from_secs(300));
        assert_eq!(c.request_wait, Duration::from_secs(2));
        assert_eq!(c.queue_url, None);
        let c: BuildWatcherConfig = load_from(
            &figment(
                "[build_watcher]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\nreconcile_after = \"2m\"\nsqs_visibility_timeout = \"30s\"\n",
            ),
            "build_watcher",
        )
        .unwrap();
        assert_eq!(c.reconcile_after, Duration::from_secs(120));
        assert_eq!(c.sqs_visibility_timeout, Some(Duration::from_secs(30)));
        assert!(c.queue_url.is_some());
    }

    #[test]
    fn the_example_file_parses_to_the_defaults_plus_its_queue() {
        let c: BuildWatcherConfig = load_from(
            &figment(include_str!("../config.example.toml")),
            "build_watcher",
        )
        .unwrap();
        let d = BuildWatcherConfig::default();
        assert!(c.queue_url.is_some());
        assert_eq!(c.reconcile_after, d.reconcile_after);
        assert_eq!(c.reconcile_interval, d.reconcile_interval);
        assert_eq!(c.reconcile_call_spacing, d.reconcile_call_spacing);
        assert_eq!(c.request_wait, d.request_wait);
        assert_eq!(c.unrequested_after, d.unrequested_after);
        assert_eq!(c.sqs_wait_time, d.sqs_wait_time);
        assert_eq!(c.ops_listen, d.ops_listen);
        assert_eq!(c.log_tail_timeout, d.log_tail_timeout);
        assert_eq!(c.report_concurrency, d.report_concurrency);
        assert_eq!(c.request_concurrency, d.request_concurrency);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            "[build_watcher]\nreconcile_batch_size = 101\n",
            "[build_watcher]\nsqs_max_messages = 0\n",
            "[build_watcher]\nsqs_wait_time = \"21s\"\n",
            "[build_watcher]\nqueue_url = \" \"\n",
            "[build_watcher]\nunknown = 1\n",
            "[build_watcher]\nlog_tail_timeout = \"0s\"\n",
            "[build_watcher]\nlog_tail_timeout = \"1m\"\n",
            "[build_watcher]\nreport_concurrency = 0\n",
            "[build_watcher]\nrequest_concurrency = 0\n",
        ] {
            assert!(
                load_from::<BuildWatcherConfig>(&figment(bad), "build_watcher").is_err(),
                "{bad}"
            );
        }
    }
}
