//! The EventBridge events CodeBuild sends for build state and phase changes, as documented by
//! AWS ("Build notifications input format reference"). The local runner writes this exact
//! shape and the build-watcher reads it, so both sources go through one parser.
//!
//! Every field is optional on input: AWS adds fields over time and some events omit some.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::env;

/// `detail-type` of a build state change.
pub const STATE_CHANGE: &str = "CodeBuild Build State Change";
/// `detail-type` of a build phase change.
pub const PHASE_CHANGE: &str = "CodeBuild Build Phase Change";
/// `source` of CodeBuild events.
pub const SOURCE: &str = "aws.codebuild";

/// The phase CodeBuild reports last; it never fails and is not a "failed phase".
pub const COMPLETED_PHASE: &str = "COMPLETED";

/// CodeBuild's phases in the order a build goes through them (a phase never moves back).
pub const PHASE_ORDER: [&str; 11] = [
    "SUBMITTED",
    "QUEUED",
    "PROVISIONING",
    "DOWNLOAD_SOURCE",
    "INSTALL",
    "PRE_BUILD",
    "BUILD",
    "POST_BUILD",
    "UPLOAD_ARTIFACTS",
    "FINALIZING",
    COMPLETED_PHASE,
];

/// Position of a phase in [`PHASE_ORDER`]; `None` for names CodeBuild does not document.
pub fn phase_rank(name: &str) -> Option<usize> {
    PHASE_ORDER.iter().position(|p| *p == name)
}

/// The EventBridge envelope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CodeBuildEvent {
    #[serde(default)]
    pub version: String,
    /// EventBridge event id (unique per event; a redelivery repeats it).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub detail_type: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub account: String,
    /// RFC 3339.
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub resources: Vec<String>,
    pub detail: Detail,
}

/// The `detail` of both event types (state-change fields and phase-change fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Detail {
    /// State change: `IN_PROGRESS`, `SUCCEEDED`, `FAILED`, `FAULT`, `STOPPED`, `TIMED_OUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_status: Option<String>,
    #[serde(default)]
    pub project_name: String,
    /// The build ARN (`arn:aws:codebuild:<region>:<account>:build/<project>:<uuid>`), or
    /// `local:<uuid>` for the local runner.
    #[serde(default)]
    pub build_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_phase_context: Option<String>,
    /// Phase change: the phase that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_phase_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_phase_context: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_u64"
    )]
    pub completed_phase_duration_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_phase_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_phase_end: Option<String>,
    #[serde(default)]
    pub additional_information: AdditionalInformation,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AdditionalInformation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_complete: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// CodeBuild's format: `Sep 1, 2017 4:12:29 PM` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_u64"
    )]
    pub timeout_in_minutes: Option<u64>,
    #[serde(default)]
    pub environment: Environment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Logs>,
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// The buildspec's `env.exported-variables`, as captured at the end of the build.
    #[serde(default)]
    pub exported_environment_variables: Vec<NameValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Source {
    #[serde(default)]
    pub location: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Environment {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty", rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compute_type: String,
    /// Project variables and StartBuild overrides.
    #[serde(default)]
    pub environment_variables: Vec<EnvironmentVariable>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentVariable {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// `PLAINTEXT`, `PARAMETER_STORE`, `SECRETS_MANAGER`.
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Logs {
    #[serde(default)]
    pub group_name: String,
    #[serde(default)]
    pub stream_name: String,
    /// Link a person opens.
    #[serde(default)]
    pub deep_link: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Phase {
    #[serde(default)]
    pub phase_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_u64"
    )]
    pub duration_in_seconds: Option<u64>,
    /// Messages of a failed phase (`["COMMAND_EXECUTION_ERROR: Error while executing ..."]`);
    /// AWS sends a list of strings.
    #[serde(default)]
    pub phase_context: Vec<String>,
}

/// Reads a count that AWS sometimes writes as a float (`60.0` in older samples of the event):
/// a whole number in either form, or nothing (`null`, or a value that is not a count).
fn lenient_u64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| {
        v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        })
    }))
}

impl CodeBuildEvent {
    /// The variables the original updater sees: build environment first, then exported
    /// variables winning on name clashes (reference §4 step 2).
    pub fn merged_variables(&self) -> BTreeMap<String, String> {
        let info = &self.detail.additional_information;
        let mut merged: BTreeMap<String, String> = info
            .environment
            .environment_variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        for v in &info.exported_environment_variables {
            merged.insert(v.name.clone(), v.value.clone());
        }
        merged
    }
}

/// Whether `name` is the dispatcher's to set for a build it requested with `trusted` (the map
/// [`requested_variables`] returns).
pub fn is_dispatcher_variable(name: &str, trusted: &BTreeMap<String, String>) -> bool {
    env::DISPATCHER_VARIABLES.contains(&name) || trusted.contains_key(name)
}

/// The variables the dispatcher gave the build it requested: the request's environment, with
/// the request's own fields (repository, commit, branch, architecture, pull request) winning,
/// since those are what the dispatcher decided on. A dispatcher variable absent from the map
/// was not set (an exported value for it is a contradiction too).
pub fn requested_variables(request: &prx_ci_proto::v1::BuildRequested) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = request
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut set = |name: &str, value: &str| {
        if !value.is_empty() {
            vars.insert(name.to_owned(), value.to_owned());
        }
    };
    if let Some(build) = &request.build {
        set(env::REPO, &build.repository);
        set(env::COMMIT, &build.commit);
        if let Some(arch) = crate::domain::Architecture::from_proto(build.architecture) {
            set(env::TARGET_ARCHITECTURE, arch.as_str());
        }
    }
    set(env::BRANCH, &request.branch);
    if request.pull_request != 0 {
        set(env::GITHUB_PR, &request.pull_request.to_string());
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_written_as_floats_still_parse() {
        let event: CodeBuildEvent = serde_json::from_value(serde_json::json!({
            "detail-type": STATE_CHANGE,
            "detail": {
                "build-status": "SUCCEEDED",
                "completed-phase-duration-seconds": 3.0,
                "additional-information": {
                    "timeout-in-minutes": 60.0,
                    "phases": [{"phase-type": "BUILD", "duration-in-seconds": 36}]
                }
            }
        }))
        .unwrap();
        assert_eq!(event.detail.completed_phase_duration_seconds, Some(3));
        assert_eq!(
            event.detail.additional_information.timeout_in_minutes,
            Some(60)
        );
        assert_eq!(
            event.detail.additional_information.phases[0].duration_in_seconds,
            Some(36)
        );
    }

    #[test]
    fn exported_variables_win_over_environment() {
        let event: CodeBuildEvent = serde_json::from_value(serde_json::json!({
            "detail-type": STATE_CHANGE,
            "detail": {
                "build-status": "SUCCEEDED",
                "additional-information": {
                    "environment": {"environment-variables": [
                        {"name": "PRX_CI_PUBLISH", "value": "false", "type": "PLAINTEXT"},
                        {"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"}
                    ]},
                    "exported-environment-variables": [
                        {"name": "PRX_CI_PUBLISH", "value": "true"}
                    ]
                }
            }
        }))
        .unwrap();
        let merged = event.merged_variables();
        assert_eq!(merged["PRX_CI_PUBLISH"], "true");
        assert_eq!(merged["PRX_REPO"], "PRX/app");
    }

    #[test]
    fn requested_variables_take_the_request_fields_over_its_environment() {
        use prx_ci_proto::v1;
        let request = v1::BuildRequested {
            build: Some(v1::BuildRef {
                repository: "PRX/app".into(),
                commit: "c".repeat(40),
                architecture: v1::Architecture::Aarch64 as i32,
                ..Default::default()
            }),
            environment: [
                ("PRX_REPO".to_owned(), "PRX/stale".to_owned()),
                ("PRX_CI_PUBLISH".to_owned(), "false".to_owned()),
                ("PRX_AWS_ACCOUNT_ID".to_owned(), "1".to_owned()),
            ]
            .into_iter()
            .collect(),
            branch: "feature".into(),
            pull_request: 7,
            ..Default::default()
        };
        let vars = requested_variables(&request);
        assert_eq!(vars["PRX_REPO"], "PRX/app");
        assert_eq!(vars["PRX_COMMIT"], "c".repeat(40));
        assert_eq!(vars["PRX_TARGET_ARCHITECTURE"], "aarch64");
        assert_eq!(vars["PRX_BRANCH"], "feature");
        assert_eq!(vars["PRX_GITHUB_PR"], "7");
        assert_eq!(vars["PRX_CI_PUBLISH"], "false");
        assert!(is_dispatcher_variable("PRX_AWS_ACCOUNT_ID", &vars));
        assert!(is_dispatcher_variable("PRX_GITHUB_BEFORE", &vars));
        assert!(!is_dispatcher_variable("MY_APP", &vars));
        assert!(!vars.contains_key("PRX_GITHUB_BEFORE"));
    }
}
