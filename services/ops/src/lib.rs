//! The ops service: the operators' gRPC API over the event streams (`proto/prx/ci/v1/ops.proto`)
//! and the `prx-ci history | builds | rebuild | replay | parked` commands built on it.
//!
//! - `History`: a repository's events (optionally one branch, PR or commit) read back from
//!   `PRX_WEBHOOKS` and `PRX_EVENTS` with subject filters, in order.
//! - `Builds`: a projection of the build events, kept current by a live read and rebuildable
//!   from scratch with the same result ([`projector::rebuild`]).
//! - `Rebuild`: an operator's push, stored as a `WebhookReceived` with origin OPERATOR.
//! - `Replay`: a temporary replay consumer that the target service runs with its own handler
//!   (every consumer loop runs `prx_ci_shared::bus::replay::ReplayRunner`; see docs/operations.md).
//! - `Parked` / `RetryParked`: dead-lettered messages and putting one back once.
//! - `ParameterOwners` / `TransferParameter`: who may publish which parameter name, and the
//!   audited move of a claimed name to another repository (`docs/operations.md`).
//!
//! Every call needs the configured bearer token.
//!
//! Wiring (`prx-ci up`, local mode): `OpsService::new(rt, config, &mut registry)` with an
//! `OpsConfig` whose `token` is set (e.g. generated at start and printed, or from
//! `PRX_CI_OPS__TOKEN`), then `run(TcpListener::bind(config.listen), shutdown)`. The KV bucket
//! `prx_ci_ops_retries` comes with `Runtime::provision`. Every service supports replays: the
//! shared consumer loop runs the replays meant for its durable with the same handler.

pub mod ancestry;
pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod history;
pub mod parked;
pub mod projection;
pub mod projector;
pub mod rebuild;
pub use prx_ci_shared::bus::replay;
pub mod service;
pub mod store;

pub use config::OpsConfig;
pub use service::OpsService;
