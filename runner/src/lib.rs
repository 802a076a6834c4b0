//! The local build runner: the embedded [`BuildBackend`](prx_ci_shared::codebuild::backend::BuildBackend)
//! of `prx-ci up`. It clones the repository (a `file://` URL works), checks out the requested
//! commit, runs the buildspec's `install`, `pre_build`, `build` and `post_build` phases in one
//! bash process like CodeBuild 0.2, and reports every transition as a `BuildReportReceived`
//! event carrying a CodeBuild-shaped EventBridge event (`prx.runner.report.<owner>.<repo>`), so
//! the build-watcher cannot tell it from CodeBuild. See `README.md` and `docs/local-runner.md`.
//!
//! Wiring (`prx-ci up`, local mode; the real one is `cli/src/system.rs`):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use prx_ci_local_runner::{LocalRunner, LocalRunnerConfig};
//! use prx_ci_shared::Runtime;
//! use prx_ci_shared::codebuild::backend::BuildBackend;
//!
//! async fn wire(rt: Runtime, config: LocalRunnerConfig) -> anyhow::Result<()> {
//!     let runner = LocalRunner::new(rt, config)?; // section [runner]
//!     let backend: Arc<dyn BuildBackend> = runner.clone(); // hand to the dispatcher
//!     // ... on Ctrl-C, after the dispatcher stopped:
//!     drop(backend);
//!     runner.shutdown().await; // running and queued builds end as STOPPED
//!     Ok(())
//! }
//! ```

pub mod backend;
pub mod build;
pub mod build_log;
pub mod buildspec;
pub mod checkout;
pub mod config;
pub mod driver;
pub mod environment;
pub mod isolation;
pub mod outcome;
pub mod process;
pub mod record;
pub mod registry;
pub mod reporter;

pub use backend::LocalRunner;
pub use buildspec::{Buildspec, BuildspecError, PhaseName, parse_buildspec};
pub use config::{DEFAULT_INHERIT_ENV, DEFAULT_TIMEOUT, Isolation, LocalRunnerConfig};
