//! The build decision, with no I/O: what a webhook builds, with which variables, announced how.
//!
//! A webhook becomes a [`Skip`] or a [`BuildPlan`] ([`trigger`]); a plan plus the buildspec
//! text becomes one [`PlannedBuild`] per architecture with the exact `PRX_*` environment of the
//! original build handler (reference §1.2, §2.2; [`plan`]); [`events`] assembles the envelopes
//! a decision announces.
//!
//! The rules, in the order they are checked:
//! 1. only `push` and `pull_request` events build (`EVENT_TYPE_NOT_BUILT`); `check_run` and
//!    `check_suite` with action `rerequested` (a person clicked "Re-run" on GitHub) rebuild
//!    what the dispatcher recorded for that commit, see [`rerequest`] (`RERUN_NOT_DISPATCHED`
//!    when it recorded nothing);
//! 2. the payload names its repository (`MALFORMED_PAYLOAD`), whose owner is allowed
//!    (`OWNER_NOT_ALLOWED`, only when an allow-list is configured);
//! 3. pushes: tags (`TAG_PUSH`), branch deletions (`BRANCH_DELETED`) and branches other than
//!    `repository.default_branch` (`NON_DEFAULT_BRANCH`) do not build;
//!    pull requests: only the actions of [`PULL_REQUEST_ACTIONS_BUILT`] build
//!    (`PULL_REQUEST_ACTION_NOT_BUILT`); drafts build like any other pull request;
//! 4. the fields a build needs are present (`MALFORMED_PAYLOAD`, the detail names the field);
//! 5. (after the lookup) `buildspec.yml` exists at the commit (`NO_BUILDSPEC`) and contains the
//!    marker (`NO_MARKER`); the architecture markers select the builds and the primary markers
//!    the primary architecture, all by presence.

#![expect(
    clippy::result_large_err,
    reason = "a skip carries the event's details; one decision per webhook, nothing to gain by boxing"
)]

pub mod events;
pub mod plan;
pub mod rerequest;
pub mod rerun;
pub mod skip;
pub mod trigger;

use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::Architecture;
use serde::Deserialize;

pub use events::{build_request_id, dispatch_id};
pub use plan::{BuildPlan, Builds, PlannedBuild, Trigger};
pub use skip::{Skip, SkipReason};
pub use trigger::{PULL_REQUEST_ACTIONS_BUILT, decide};

/// The decision rules' strings (section `[dispatcher.rules]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Repository owners (organisations or users) whose webhooks may build, compared
    /// case-insensitively. Default: empty = every owner (the original relies on the webhook
    /// being installed on one organisation only).
    pub allowed_owners: Vec<String>,
    /// Substring a buildspec must contain to be built. Default `PRX_`.
    pub marker: String,
    /// Substring whose presence requests an x86_64 build. Default `PRX_BUILD_X86_64`.
    pub x86_64_marker: String,
    /// Substring whose presence requests an aarch64 build. Default `PRX_BUILD_AARCH64`.
    pub aarch64_marker: String,
    /// Substring whose presence makes x86_64 the primary architecture of the push's builds
    /// (`BuildRequested.primary_architecture`). Default `PRX_PRIMARY_X86_64`.
    pub primary_x86_64_marker: String,
    /// Substring whose presence makes aarch64 the primary architecture. Default
    /// `PRX_PRIMARY_AARCH64`. With both primary markers, neither counts (a warning).
    pub primary_aarch64_marker: String,
    /// Literal substrings with which a pull request's buildspec opts in to publishing
    /// (`PRX_CI_PUBLISH=true`). Default: `PRX_CI_PUBLISH: true`, `PRX_CI_PUBLISH: "true"`,
    /// `PRX_CI_PUBLISH: 'true'`.
    pub publish_opt_in: Vec<String>,
    /// What to do with pull requests from forks (head repository other than the base, or
    /// deleted): `skip` (default, skip reason `FORK`) or `build` (never publishing, in the
    /// untrusted project, with none of the local runner's configured environment).
    pub fork_pull_requests: ForkPolicy,
}

/// `[dispatcher.rules] fork_pull_requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkPolicy {
    #[default]
    Skip,
    Build,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            allowed_owners: Vec::new(),
            marker: "PRX_".to_owned(),
            x86_64_marker: "PRX_BUILD_X86_64".to_owned(),
            aarch64_marker: "PRX_BUILD_AARCH64".to_owned(),
            primary_x86_64_marker: "PRX_PRIMARY_X86_64".to_owned(),
            primary_aarch64_marker: "PRX_PRIMARY_AARCH64".to_owned(),
            publish_opt_in: vec![
                format!("{}: true", env::CI_PUBLISH),
                format!("{}: \"true\"", env::CI_PUBLISH),
                format!("{}: 'true'", env::CI_PUBLISH),
            ],
            fork_pull_requests: ForkPolicy::Skip,
        }
    }
}

impl DecisionConfig {
    /// The first problem with the strings, phrased for an operator.
    pub fn validate(&self) -> Result<(), String> {
        let architecture_markers = [
            ("x86_64_marker", &self.x86_64_marker),
            ("aarch64_marker", &self.aarch64_marker),
            ("primary_x86_64_marker", &self.primary_x86_64_marker),
            ("primary_aarch64_marker", &self.primary_aarch64_marker),
        ];
        for (name, value) in [("marker", &self.marker)]
            .iter()
            .chain(&architecture_markers)
        {
            if value.is_empty() {
                return Err(format!("rules.{name} is empty"));
            }
        }
        // Markers are substrings: one inside another would be read for it (a buildspec's
        // primary marker would also request a build, or the other way round).
        for (name, value) in &architecture_markers {
            if let Some((other, text)) = architecture_markers
                .iter()
                .find(|(other, text)| other != name && text.contains(value.as_str()))
            {
                return Err(format!(
                    "rules.{name} {value:?} is part of rules.{other} {text:?}: a buildspec \
                     containing {text:?} would also count as {value:?}"
                ));
            }
        }
        if self.publish_opt_in.iter().any(String::is_empty) {
            return Err("rules.publish_opt_in has an empty entry".into());
        }
        if self.allowed_owners.iter().any(|o| o.trim().is_empty()) {
            return Err("rules.allowed_owners has an empty entry".into());
        }
        Ok(())
    }

    /// The marker that requests a build of `architecture`.
    pub fn build_marker(&self, architecture: Architecture) -> &str {
        match architecture {
            Architecture::X86_64 => &self.x86_64_marker,
            Architecture::Aarch64 => &self.aarch64_marker,
        }
    }

    fn owner_allowed(&self, owner: &str) -> bool {
        self.allowed_owners.is_empty()
            || self
                .allowed_owners
                .iter()
                .any(|allowed| allowed.trim().eq_ignore_ascii_case(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::DecisionConfig;

    #[test]
    fn markers_that_contain_one_another_are_refused() {
        assert_eq!(DecisionConfig::default().validate(), Ok(()));
        let config = DecisionConfig {
            x86_64_marker: "X86_64".into(),
            ..DecisionConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            "rules.x86_64_marker \"X86_64\" is part of rules.primary_x86_64_marker \
             \"PRX_PRIMARY_X86_64\": a buildspec containing \"PRX_PRIMARY_X86_64\" would also \
             count as \"X86_64\""
        );
        let config = DecisionConfig {
            primary_aarch64_marker: String::new(),
            ..DecisionConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err(),
            "rules.primary_aarch64_marker is empty"
        );
    }
}

/// Webhook payloads the decision tests share.
#[cfg(test)]
mod fixtures {
    use prx_ci_shared::domain::CommitSha;
    use serde_json::Value;

    use super::{BuildPlan, Skip, SkipReason};

    pub const SHA_A: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    pub const SHA_B: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    pub fn push(git_ref: &str, after: &str) -> Vec<u8> {
        serde_json::json!({
            "ref": git_ref,
            "before": SHA_B,
            "after": after,
            "deleted": after == CommitSha::ZERO,
            "repository": {
                "full_name": "PRX/app",
                "default_branch": "main",
                "clone_url": "https://github.com/PRX/app.git",
            },
        })
        .to_string()
        .into_bytes()
    }

    pub fn pull_request(action: &str) -> Vec<u8> {
        pull_request_from(action, serde_json::json!({"full_name": "PRX/app"}))
    }

    /// A pull request whose head lives in `head_repo` (`null` for a deleted fork).
    pub fn pull_request_from(action: &str, head_repo: Value) -> Vec<u8> {
        serde_json::json!({
            "action": action,
            "number": 7,
            "before": SHA_B,
            "after": SHA_A,
            "pull_request": {
                "number": 7,
                "title": "Add a thing",
                "draft": false,
                "updated_at": "2026-11-26T07:41:02Z",
                "head": {"sha": SHA_A, "ref": "feat/x", "repo": head_repo},
                "base": {"ref": "main"},
                "user": {"login": "octo"},
            },
            "repository": {
                "full_name": "PRX/app",
                "default_branch": "main",
                "clone_url": "https://github.com/PRX/app.git",
            },
        })
        .to_string()
        .into_bytes()
    }

    pub fn reason(result: Result<BuildPlan, Skip>) -> SkipReason {
        result.expect_err("expected a skip").reason
    }
}
