//! The PRX CI dispatcher: consumes every stored webhook (`PRX_WEBHOOKS`, durable `dispatcher`)
//! and ends each in exactly one decision: `BuildRequested` (one per architecture, after the
//! build was started through a [`BuildBackend`](prx_ci_shared::codebuild::backend::BuildBackend)) or one
//! `BuildSkipped` with its reason. It applies the original build handler's rules exactly
//! ([`decision`]), looks `buildspec.yml` up at the event's commit ([`buildspec`]), starts each
//! build at most once per webhook and architecture ([`dispatch_store`]), stamps every event
//! with the ordering key and push sequence ([`push_order`]), stops superseded builds
//! ([`inflight`]), and re-runs builds lost to the system's own failure (`FAULT`) as the same
//! push, a bounded number of times ([`decision::rerun`], [`rerun_handler`]), and rebuilds a
//! commit when someone clicks "Re-run" on its GitHub check (`check_run` / `check_suite`
//! `rerequested`) as the request it recorded for it ([`decision::rerequest`], docs/reruns.md).
//!
//! Wiring: [`Dispatcher::new`] then [`Dispatcher::run`]; the `prx-ci-dispatcher` binary
//! (`src/main.rs`) passes [`GitHubBuildspecSource`] and [`CodeBuildBackend`], `prx-ci up`
//! (`cli/src/system.rs`) passes [`LocalGitBuildspecSource`] and the local runner.

pub mod buildspec;
pub mod codebuild;
pub mod config;
pub mod decision;
pub mod dispatch_store;
pub mod fault;
pub mod handler;
pub mod inflight;
pub mod metrics;
pub mod push_order;
pub mod rerun_handler;
pub mod service;
pub mod start;

pub use buildspec::{BuildspecSource, GitHubBuildspecSource, LocalGitBuildspecSource};
pub use codebuild::{CodeBuildBackend, CodeBuildConfig};
pub use config::DispatcherConfig;
pub use fault::FaultPoint;
pub use service::Dispatcher;
