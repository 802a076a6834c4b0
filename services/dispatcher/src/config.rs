//! The dispatcher's configuration (section `[dispatcher]`, see `config.example.toml`).

use std::net::SocketAddr;

use prx_ci_shared::config::{Mode, Validate};
use prx_ci_shared::domain::Lane;
use serde::Deserialize;

use crate::codebuild::CodeBuildConfig;
use crate::decision::DecisionConfig;

/// The most re-runs `[dispatcher] reruns` allows (a build that keeps faulting is the
/// operator's to look at, not a loop).
pub const MAX_RERUNS: u32 = 5;

/// Section `[dispatcher]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` (binary only). Default `127.0.0.1:9102`.
    pub ops_listen: SocketAddr,
    /// Webhooks handled at once. Default 4. Pushes of one ordering key handled at the same
    /// time still supersede correctly (the in-flight builds record is compare-and-set).
    pub concurrency: usize,
    /// Stop in-flight builds of a pull request when a newer push to it is dispatched.
    /// Default true.
    pub cancel_superseded_pull_requests: bool,
    /// Stop in-flight builds of the default branch when a newer push to it is dispatched.
    /// Default false (every default-branch commit builds to completion, as in the original).
    pub cancel_superseded_default_branch: bool,
    /// How many times a build lost to the system's own failure (`FAULT`: CodeBuild's
    /// infrastructure, the local runner's process dying) is re-run as the same push. A build
    /// that fails by its own fault is never re-run. 0 turns re-runs off. Default 1.
    pub reruns: u32,
    /// The decision rules' strings (`[dispatcher.rules]`).
    pub rules: DecisionConfig,
    /// Where builds run (binary only): `codebuild` or `local` (the local runner in this
    /// process, section `[runner]`). Default `codebuild`.
    pub backend: BackendKind,
    /// CodeBuild projects (`[dispatcher.codebuild]`; binary only).
    pub codebuild: CodeBuildConfig,
    /// `live` (default) or `shadow`: every decision recorded as live, `BuildRequested.shadow`
    /// set, no build started or stopped (docs/migrating.md).
    pub mode: Mode,
    /// In shadow mode, the repositories (`owner/repo`) cut over already: decided and built live
    /// (docs/migrating.md, "Cut over per repository"). Ignored in live mode. Default none.
    pub live_repositories: Vec<String>,
}

/// `[dispatcher] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Codebuild,
    Local,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            concurrency: 4,
            cancel_superseded_pull_requests: true,
            cancel_superseded_default_branch: false,
            reruns: 1,
            rules: DecisionConfig::default(),
            backend: BackendKind::Codebuild,
            codebuild: CodeBuildConfig::default(),
            mode: Mode::Live,
            live_repositories: Vec::new(),
        }
    }
}

impl DispatcherConfig {
    /// Whether a newer push on this lane stops the older push's builds.
    pub fn cancels_superseded(&self, lane: &Lane) -> bool {
        match lane {
            Lane::PullRequest(_) => self.cancel_superseded_pull_requests,
            Lane::Branch(_) => self.cancel_superseded_default_branch,
        }
    }
}

impl Validate for DispatcherConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.concurrency) {
            return Err(format!(
                "concurrency must be 1 to 256, not {}",
                self.concurrency
            ));
        }
        if self.reruns > MAX_RERUNS {
            return Err(format!(
                "reruns must be 0 to {MAX_RERUNS}, not {}",
                self.reruns
            ));
        }
        for repository in &self.live_repositories {
            if prx_ci_shared::domain::RepoName::parse(repository).is_err() {
                return Err(format!(
                    "live_repositories: {repository:?} is not an owner/repo name"
                ));
            }
        }
        self.rules.validate()?;
        self.codebuild.validate()
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};

    use super::*;

    #[test]
    fn example_config_parses_to_the_defaults() {
        let text = include_str!("../config.example.toml");
        let figment = Figment::from(Toml::string(text));
        let config: DispatcherConfig =
            prx_ci_shared::config::load_from(&figment, "dispatcher").unwrap();
        assert_eq!(config, DispatcherConfig::default());
    }

    #[test]
    fn bad_values_are_rejected() {
        let figment = Figment::from(Toml::string("[dispatcher]\nconcurrency = 0\n"));
        assert!(
            prx_ci_shared::config::load_from::<DispatcherConfig>(&figment, "dispatcher").is_err()
        );
        let figment = Figment::from(Toml::string("[dispatcher.rules]\nmarker = \"\"\n"));
        assert!(
            prx_ci_shared::config::load_from::<DispatcherConfig>(&figment, "dispatcher").is_err()
        );
        let figment = Figment::from(Toml::string(
            "[dispatcher.codebuild]\nuntrusted_x86_64_project = \"infrastructure-ci-Runner2\"\n",
        ));
        let err = prx_ci_shared::config::load_from::<DispatcherConfig>(&figment, "dispatcher")
            .unwrap_err();
        assert!(err.to_string().contains("untrusted"), "{err}");
        let figment = Figment::from(Toml::string("[dispatcher]\nreruns = 6\n"));
        let err = prx_ci_shared::config::load_from::<DispatcherConfig>(&figment, "dispatcher")
            .unwrap_err();
        assert!(err.to_string().contains("reruns must be 0 to 5"), "{err}");
        let figment = Figment::from(Toml::string("[dispatcher]\ncancel_superseded = true\n"));
        assert!(
            prx_ci_shared::config::load_from::<DispatcherConfig>(&figment, "dispatcher").is_err()
        );
    }
}
