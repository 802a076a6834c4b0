//! The local build runner: the embedded [`BuildBackend`](prx_ci_shared::codebuild::backend::BuildBackend)
//! of `prx-ci up`. It clones the repository (a `file://` URL works), checks out the requested
//! commit, runs the buildspec's `install`, `pre_build`, `build` and `post_build` phases in one
//! bash process like CodeBuild 0.2, and reports every transition as a `BuildReportReceived`
//! event carrying a CodeBuild-shaped EventBridge event (`prx.runner.report.<owner>.<repo>`), so
//! the build-watcher cannot tell it from CodeBuild. See `docs/local-runner.md`.
//!
//! Wiring (`prx-ci up`, local mode):
//!
//! ```text
//! let runner = LocalRunner::new(rt.clone(), config.runner)?; // section [runner]
//! let backend: Arc<dyn BuildBackend> = runner.clone();         // hand to the dispatcher
//! // ... on Ctrl-C, after the dispatcher stopped:
//! runner.shutdown().await; // running and queued builds end as STOPPED
//! ```

mod buildspec;
mod config;
mod driver;
mod environment;
mod isolation;
mod report;
mod runner;

pub use buildspec::{Buildspec, BuildspecError, PhaseName, parse_buildspec};
pub use config::{DEFAULT_INHERIT_ENV, DEFAULT_TIMEOUT, Isolation, LocalRunnerConfig};
pub use runner::LocalRunner;
