//! The build-watcher: turns build state changes into build events, each transition once.
//!
//! Every source produces the same thing, a `BuildReportReceived` envelope holding a CodeBuild
//! EventBridge event (`prx.runner.report.<owner>.<repo>` in PRX_EVENTS):
//! - [`sqs`]: the EventBridge rule's SQS queue (production);
//! - [`reconciler`]: `BatchGetBuilds` for builds in flight not heard of for a while, and for all
//!   of them at start-up (production);
//! - the local runner (`prx-ci up`) publishes its reports itself.
//!
//! One consumer ([`reports`]) runs them through the per-build [`state`] machine and publishes
//! `BuildStarted`, `BuildPhaseChanged` and `BuildCompleted` in the chain of the build's
//! `BuildRequested` (which another consumer, [`requests`], records in a KV projection, [`store`]).
//!
//! For `prx-ci up` (local mode): `BuildWatcher::new(rt, BuildWatcherConfig::default(), None,
//! None, &mut registry)?` after `rt.provision(..)`, then `run(shutdown)`: only the two
//! consumers run. Production (`prx-ci-build-watcher`): a CodeBuild client (reconciler) and,
//! with `queue_url` set, an SQS client.

pub mod config;
pub mod emit;
pub mod metrics;
pub mod reconciler;
pub mod report;
pub mod reports;
pub mod requests;
mod service;
pub mod sqs;
pub mod state;
pub mod store;

pub use config::BuildWatcherConfig;
pub use service::{BuildWatcher, REPORTS_CONSUMER, REQUESTS_CONSUMER};
