//! The PRX CI dispatcher: consumes every stored webhook (`PRX_WEBHOOKS`, durable `dispatcher`)
//! and ends each in exactly one decision: `BuildRequested` (one per architecture, after the
//! build was started through a [`BuildBackend`](prx_ci_shared::codebuild::backend::BuildBackend)) or one
//! `BuildSkipped` with its reason. It applies the original build handler's rules exactly
//! ([`decision`]), looks `buildspec.yml` up at the event's commit ([`buildspec`]), starts each
//! build at most once per webhook and architecture ([`store`]), stamps every event with the
//! ordering key and push sequence, and stops superseded builds ([`lane`]).
//!
//! # Wiring (`prx-ci up`)
//! ```text
//! let dispatcher = Dispatcher::new(
//!     rt.clone(),
//!     config,                                        // [dispatcher] section
//!     Arc::new(LocalGitBuildspecSource::new()),      // local mode: `git` on file:// clone URLs
//!     Arc::new(local_runner),                        // prx-ci-local-runner's BuildBackend
//!     &mut registry,
//! )?;
//! tokio::spawn(dispatcher.run(shutdown.clone()));
//! ```
//! Production (the `prx-ci-dispatcher` binary) passes
//! `GitHubBuildspecSource::new(GitHubClient::new(github_config)?)` and
//! `CodeBuildBackend::new(&aws.sdk_config().await, config.codebuild.clone())`.

pub mod buildspec;
pub mod codebuild;
pub mod config;
pub mod decision;
pub mod handler;
pub mod lane;
pub mod push_order;
pub mod service;
pub mod store;

pub use buildspec::{BuildspecSource, GitHubBuildspecSource, LocalGitBuildspecSource};
pub use codebuild::{CodeBuildBackend, CodeBuildConfig};
pub use config::DispatcherConfig;
pub use service::Dispatcher;
