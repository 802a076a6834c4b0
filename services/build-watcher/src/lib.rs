//! The build-watcher: turns build state changes into build events, each transition once.
//!
//! Every source produces the same thing, a `BuildReportReceived` envelope holding a CodeBuild
//! EventBridge event (`prx.runner.report.<owner>.<repo>` in PRX_EVENTS):
//! - [`sqs`]: the EventBridge rule's SQS queue (production);
//! - [`reconciler`]: `BatchGetBuilds` for builds in flight not heard of for a while, and for all
//!   of them at start-up (production);
//! - the local runner (`prx-ci up`) publishes its reports itself.
//!
//! One consumer ([`report_handler`]) parses them ([`report`]), runs them through the per-build
//! [`state`] machine and publishes `BuildStarted`, `BuildPhaseChanged` and `BuildCompleted`
//! ([`emit`]) in the chain of the build's `BuildRequested`, which another consumer
//! ([`request_handler`]) records. Both keep one [`watched_build`] record per build in KV
//! ([`build_store`]); a report that beats its request waits for the record in-process
//! ([`record_waiters`]), woken by the one watch of the bucket the process keeps
//! ([`builds_watch`]). A build nobody requested whose environment is a request's (a CodeBuild
//! console "Retry build") is adopted into that request's chain ([`console_retry`]).
//!
//! ```no_run
//! # async fn local(rt: prx_ci_shared::Runtime, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
//! use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
//! // `prx-ci up`, after provisioning: only the two consumers run (no CodeBuild, no SQS).
//! let mut registry = prometheus_client::registry::Registry::default();
//! let watcher = BuildWatcher::new(rt, BuildWatcherConfig::default(), None, None, &mut registry)?;
//! watcher.run(shutdown).await
//! # }
//! ```
//!
//! Production (`prx-ci-build-watcher`) passes a CodeBuild client (reconciler) and, with
//! `queue_url` set, an SQS client.

pub mod build_store;
pub mod builds_watch;
pub mod cloudwatch_logs;
pub mod config;
pub mod console_retry;
pub mod emit;
pub mod log_tail;
pub mod metrics;
pub mod reconciler;
pub mod record_waiters;
pub mod report;
pub mod report_handler;
pub mod request_handler;
pub mod service;
pub mod sqs;
pub mod state;
pub mod watched_build;

pub use build_store::BuildStore;
pub use config::BuildWatcherConfig;
pub use service::{BuildWatcher, REPORTS_CONSUMER, REQUESTS_CONSUMER};
pub use watched_build::{InFlightRecord, WatchedBuildRecord};
