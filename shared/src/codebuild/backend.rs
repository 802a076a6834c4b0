//! The build-runner port: what the dispatcher asks a backend (AWS CodeBuild, or the local
//! runner) to do. Backends report state changes separately, as
//! [`crate::codebuild::event::CodeBuildEvent`]s.

use std::collections::BTreeMap;

use crate::domain::{Architecture, CommitSha, RepoName};

/// A build to start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartBuild {
    /// Stable id of this request (derived from the webhook event id and the architecture):
    /// the idempotency token, so a retried start never starts a second build.
    pub request_id: String,
    pub repository: RepoName,
    pub commit: CommitSha,
    pub architecture: Architecture,
    /// Where to clone from (`https://github.com/...` or, locally, `file://...`).
    pub clone_url: String,
    /// What to check out: a [`crate::codebuild::build::SourceVersion`] as text (the dispatcher
    /// sends `<ref>^{<sha>}`, the exact commit and the ref it is on).
    pub source_version: String,
    /// The buildspec text, passed inline.
    pub buildspec: String,
    /// The dispatcher's variables; they win over the buildspec's `env.variables`.
    pub environment: BTreeMap<String, String>,
    /// Code nobody trusted wrote it (a fork's pull request): the backend runs it where it can
    /// publish nothing (CodeBuild: the untrusted project; locally: none of the configured
    /// environment).
    pub untrusted: bool,
}

/// A build the backend accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedBuild {
    /// CodeBuild build ARN, or `local:<uuid>`.
    pub build_id: String,
    /// `codebuild` or `local`.
    pub backend: String,
    pub project: String,
    pub region: String,
    pub log_url: String,
}

/// How a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying (throttling, outage).
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Will not succeed (bad request, unknown project).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// What stopping a build did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The build was running and is now stopping.
    Stopped,
    /// The build had already finished; nothing changed.
    AlreadyFinished,
}

/// Starts and stops builds.
#[async_trait::async_trait]
pub trait BuildBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a build; calling it again with the same `request_id` must not start another.
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError>;

    /// The build an earlier [`Self::start`] of `request` started, if any (matched by its
    /// `request_id`: CodeBuild through the [`crate::codebuild::env::CI_REQUEST_ID`] variable of
    /// the project's builds started since `since`, the local runner through its records). A
    /// dispatcher that crashed after starting a build and before recording it adopts the build
    /// instead of starting a second one once the idempotency token has expired.
    async fn find(
        &self,
        request: &StartBuild,
        since: time::OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError>;

    /// Stops a running build (superseded). Stopping a finished build is not an error.
    async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError>;
}
