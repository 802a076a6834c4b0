//! The ops service: the operators' gRPC API over the event streams (`proto/prx/ci/v1/ops.proto`)
//! and the `prx-ci history | builds | rebuild | replay | parked` commands built on it.
//!
//! - `History`: a repository's events (optionally one branch, PR or commit), in order, a page
//!   at a time (the newest first; [`history_page`]): the history index ([`history_index`])
//!   says which, and the page's are read back from `PRX_WEBHOOKS` and `PRX_EVENTS` by
//!   sequence, so a query costs its page, not the history or the log.
//! - `Builds`: a projection of the build events.
//!
//! Both answer from one projection ([`projection`]), kept current by a live read of both
//! streams and rebuildable from scratch with the same result ([`projection_runner::rebuild`]).
//! - `Rebuild`: an operator's push, stored as a `WebhookReceived` with origin OPERATOR.
//! - `Replay`: a temporary replay consumer that the target service runs with its own handler
//!   (every consumer loop runs `prx_ci_shared::bus::replay::ReplayRunner`; see docs/operations.md).
//! - `Parked` / `RetryParked` / `DropParked`: dead-lettered messages, and putting one back or
//!   dropping it (with a reason), once ([`parked`], [`parked_record`]).
//! - `ParameterOwners` / `TransferParameter`: who may publish which parameter name, and the
//!   audited move of a claimed name to another repository (`docs/operations.md`).
//!
//! Every call needs the configured bearer token ([`auth`]).
//!
//! Layout: [`api`] holds the service state and the `Ops` dispatch, with one module per call
//! area (`api/history.rs`, `api/builds.rs`, `api/rebuild.rs`, `api/replay.rs`,
//! `api/parked.rs`) over the cores of the same name ([`history`], [`rebuild`], [`replay_range`] pure; [`parked`]
//! reads and writes, its rule in [`parked_record`]); [`event_log`] reads stream ranges back;
//! [`builds_projection`] and [`history_index`] are the pure folds, [`projection`] the two
//! together, [`projection_runner`] rebuilds and follows it; [`history_page`] cuts a history
//! into pages (pure).
//!
//! ```no_run
//! # async fn local(rt: prx_ci_shared::Runtime, config: prx_ci_ops::OpsConfig, shutdown: prx_ci_shared::CancellationToken) -> anyhow::Result<()> {
//! use prx_ci_ops::OpsService;
//! // `prx-ci up`: `config.token` set (generated at start and printed, or `PRX_CI_OPS__TOKEN`);
//! // the KV bucket `prx_ci_ops_retries` comes with `Runtime::provision`.
//! let mut registry = prometheus_client::registry::Registry::default();
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! OpsService::new(rt, config, &mut registry)?.run(listener, shutdown).await
//! # }
//! ```
//!
//! Every service supports replays: the shared consumer loop runs the replays meant for its
//! durable with the same handler.

pub mod ancestry;
pub mod api;
pub mod auth;
pub mod builds_projection;
pub mod client;
pub mod config;
pub mod dashboard_projection;
pub mod error;
pub mod event_log;
pub mod history;
pub mod history_index;
pub mod history_page;
pub mod metrics;
pub mod parked;
pub mod parked_record;
pub mod projection;
pub mod projection_runner;
pub mod rebuild;
pub mod replay_range;
pub mod service;
pub mod shadow_report;
pub mod web;

pub use config::OpsConfig;
pub use prx_ci_shared::bus::replay;
pub use service::OpsService;
