//! The AWS CodeBuild build backend: `StartBuild` with the fields of reference §2.1 (plus an
//! idempotency token, and `reportBuildStatusOverride` when configured), `StopBuild` for
//! superseded builds, and `ListBuildsForProject` + `BatchGetBuilds` to find the build a request
//! started (matched by its `PRX_CI_REQUEST_ID` variable).

use aws_sdk_codebuild::Client;
use aws_sdk_codebuild::config::http::HttpResponse;
use aws_sdk_codebuild::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_codebuild::types::{
    Build, EnvironmentVariable, EnvironmentVariableType, SortOrderType, SourceType, StatusType,
};
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::codebuild::build::{CODEBUILD_BACKEND, build_id_of, console_log_url};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::Architecture;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Longest idempotency token sent as is; longer request ids are hashed (CodeBuild limits the
/// token's length, and a UUID-based request id is 36 characters anyway).
pub const MAX_IDEMPOTENCY_TOKEN_LEN: usize = 64;

/// Most pages of a project's builds (100 ids each, newest first) [`CodeBuildBackend::find`]
/// reads; it normally stops earlier, at the first page started entirely before `since`. When
/// the cap is reached first, "not found" cannot be claimed (the build may be older still), so
/// `find` fails closed with a permanent error instead of letting the caller start a second
/// build: an operator decides (a parked delivery can be retried or dropped).
pub const FIND_MAX_PAGES: usize = 50;

/// The CodeBuild projects builds run in (section `[dispatcher.codebuild]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodeBuildConfig {
    /// Project of x86_64 builds. Default `infrastructure-ci-Runner2`.
    pub x86_64_project: String,
    /// Project of aarch64 builds. Default `infrastructure-ci-ArmRunner`.
    pub aarch64_project: String,
    /// Project of untrusted x86_64 builds (fork pull requests under
    /// `fork_pull_requests = "build"`): its service role can read no parameter and write no
    /// image, object or state machine (`deploy/aws/ci.yml`). Default
    /// `infrastructure-ci-UntrustedRunner2`.
    pub untrusted_x86_64_project: String,
    /// Project of untrusted aarch64 builds. Default `infrastructure-ci-UntrustedArmRunner`.
    pub untrusted_aarch64_project: String,
    /// Whether CodeBuild posts its own commit status (context `AWS CodeBuild <region>
    /// (<project>)`): `project` (default) leaves it to the project's `ReportBuildStatus`; `off`
    /// sends `reportBuildStatusOverride = false`, so only the notifier's status is posted
    /// (docs/commit-statuses.md).
    pub report_build_status: ReportBuildStatus,
}

/// `[dispatcher.codebuild] report_build_status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportBuildStatus {
    /// No override: the project's `ReportBuildStatus` setting applies.
    #[default]
    Project,
    /// `reportBuildStatusOverride = false` on every StartBuild.
    Off,
}

impl ReportBuildStatus {
    /// The `reportBuildStatusOverride` StartBuild sends (`None`: the field is left out).
    pub fn start_build_override(self) -> Option<bool> {
        match self {
            Self::Project => None,
            Self::Off => Some(false),
        }
    }
}

impl Default for CodeBuildConfig {
    fn default() -> Self {
        Self {
            x86_64_project: "infrastructure-ci-Runner2".to_owned(),
            aarch64_project: "infrastructure-ci-ArmRunner".to_owned(),
            untrusted_x86_64_project: "infrastructure-ci-UntrustedRunner2".to_owned(),
            untrusted_aarch64_project: "infrastructure-ci-UntrustedArmRunner".to_owned(),
            report_build_status: ReportBuildStatus::Project,
        }
    }
}

impl CodeBuildConfig {
    /// The project a build runs in: an untrusted build never runs in a trusted project (the
    /// configuration refuses untrusted names equal to trusted ones, see [`Self::validate`]).
    pub fn project(&self, architecture: Architecture, untrusted: bool) -> &str {
        match (architecture, untrusted) {
            (Architecture::X86_64, false) => &self.x86_64_project,
            (Architecture::Aarch64, false) => &self.aarch64_project,
            (Architecture::X86_64, true) => &self.untrusted_x86_64_project,
            (Architecture::Aarch64, true) => &self.untrusted_aarch64_project,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let trusted = [&self.x86_64_project, &self.aarch64_project];
        let untrusted = [
            &self.untrusted_x86_64_project,
            &self.untrusted_aarch64_project,
        ];
        if trusted
            .iter()
            .chain(&untrusted)
            .any(|name| name.trim().is_empty())
        {
            return Err("codebuild project names must not be empty".into());
        }
        // An untrusted build in a trusted project would run with the role that publishes.
        if let Some(name) = untrusted.iter().find(|name| trusted.contains(name)) {
            return Err(format!(
                "codebuild untrusted project {name:?} is also a trusted project; fork builds \
                 must run in a project whose role can publish nothing"
            ));
        }
        Ok(())
    }
}

/// Starts and stops CodeBuild builds.
#[derive(Debug, Clone)]
pub struct CodeBuildBackend {
    client: Client,
    config: CodeBuildConfig,
    region: String,
}

impl CodeBuildBackend {
    /// A backend using the SDK configuration's region and credentials.
    pub fn new(sdk: &aws_config::SdkConfig, config: CodeBuildConfig) -> Self {
        Self::from_client(Client::new(sdk), config)
    }

    /// A backend over an existing client (tests add interceptors to it).
    pub fn from_client(client: Client, config: CodeBuildConfig) -> Self {
        let region = client
            .config()
            .region()
            .map(ToString::to_string)
            .unwrap_or_default();
        Self {
            client,
            config,
            region,
        }
    }
}

impl CodeBuildBackend {
    fn started(&self, build_id: String, project: String) -> StartedBuild {
        StartedBuild {
            log_url: console_log_url(&self.region, &build_id),
            build_id,
            backend: CODEBUILD_BACKEND.to_owned(),
            project,
            region: self.region.clone(),
        }
    }
}

/// The idempotency token of a request: the request id itself when short enough, else the
/// hex SHA-256 of it (64 characters).
pub fn idempotency_token(request_id: &str) -> String {
    if !request_id.is_empty()
        && request_id.len() <= MAX_IDEMPOTENCY_TOKEN_LEN
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        request_id.to_owned()
    } else {
        hex::encode(Sha256::digest(request_id.as_bytes()))
    }
}

/// Whether `build` was started by the request `request_id`: its `PRX_CI_REQUEST_ID` variable
/// (set by the dispatcher on every build) is exactly that id.
pub fn started_by(build: &Build, request_id: &str) -> bool {
    !request_id.is_empty()
        && build
            .environment()
            .map(|e| e.environment_variables())
            .unwrap_or_default()
            .iter()
            .any(|v| v.name() == env::CI_REQUEST_ID && v.value() == request_id)
}

/// Whether every build of a page started before `since` (so older pages need not be read).
fn all_before(builds: &[Build], since: time::OffsetDateTime) -> bool {
    let since = since.unix_timestamp();
    builds
        .iter()
        .all(|b| b.start_time().is_some_and(|t| t.secs() < since))
}

fn classify<E>(what: &str, err: &SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = anyhow::anyhow!("cannot {what}: {}", DisplayErrorContext(err));
    let SdkError::ServiceError(_) = err else {
        // Timeouts, dispatch and response errors: the service may be fine a moment later.
        return BackendError::Transient(detail);
    };
    let code = err.code().unwrap_or_default();
    let status = err.raw_response().map(|r| r.status().as_u16());
    let transient = status.is_some_and(|s| s >= 500 || s == 429)
        || code.contains("Throttl")
        || code == "AccountLimitExceededException"
        || code == "RequestLimitExceeded"
        || code == "ServiceUnavailable";
    if transient {
        BackendError::Transient(detail)
    } else {
        BackendError::Permanent(detail)
    }
}

#[async_trait::async_trait]
impl BuildBackend for CodeBuildBackend {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        let project = self
            .config
            .project(request.architecture, request.untrusted)
            .to_owned();
        let environment = request
            .environment
            .iter()
            .map(|(name, value)| {
                EnvironmentVariable::builder()
                    .name(name)
                    .value(value)
                    .r#type(EnvironmentVariableType::Plaintext)
                    .build()
                    .map_err(|e| BackendError::Permanent(anyhow::anyhow!("variable {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .start_build()
            .project_name(&project)
            .source_type_override(SourceType::Github)
            .source_location_override(&request.clone_url)
            // `<ref>^{<sha>}`: the exact commit through a shallow fetch of its ref (see
            // `BuildPlan::source_version`).
            .source_version(&request.source_version)
            .set_report_build_status_override(self.config.report_build_status.start_build_override())
            .buildspec_override(&request.buildspec)
            .set_environment_variables_override(Some(environment))
            .idempotency_token(idempotency_token(&request.request_id))
            .send()
            .await
            .map_err(|err| classify(&format!("start a build in {project}"), &err))?;
        let build = output.build_value().ok_or_else(|| {
            BackendError::Transient(anyhow::anyhow!("StartBuild answered without a build"))
        })?;
        let build_id = build
            .arn()
            .or(build.id())
            .ok_or_else(|| {
                BackendError::Transient(anyhow::anyhow!("StartBuild answered without a build id"))
            })?
            .to_owned();
        tracing::info!(%build_id, %project, commit = %request.commit, architecture = %request.architecture, untrusted = request.untrusted, "CodeBuild build started");
        Ok(self.started(build_id, project))
    }

    async fn find(
        &self,
        request: &StartBuild,
        since: time::OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError> {
        let project = self
            .config
            .project(request.architecture, request.untrusted)
            .to_owned();
        let mut next_token = None;
        for _ in 0..FIND_MAX_PAGES {
            let page = self
                .client
                .list_builds_for_project()
                .project_name(&project)
                .sort_order(SortOrderType::Descending)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|err| classify(&format!("list the builds of {project}"), &err))?;
            let ids = page.ids().to_vec();
            if ids.is_empty() {
                return Ok(None);
            }
            let builds = self
                .client
                .batch_get_builds()
                .set_ids(Some(ids))
                .send()
                .await
                .map_err(|err| classify(&format!("read the builds of {project}"), &err))?;
            if let Some(build) = builds
                .builds()
                .iter()
                .find(|b| started_by(b, &request.request_id))
            {
                let build_id = build.arn().or(build.id()).ok_or_else(|| {
                    BackendError::Transient(anyhow::anyhow!(
                        "BatchGetBuilds answered a build without an id"
                    ))
                })?;
                tracing::info!(%build_id, %project, request_id = %request.request_id, "found the CodeBuild build of this request");
                return Ok(Some(self.started(build_id.to_owned(), project)));
            }
            match page.next_token() {
                Some(token) if !all_before(builds.builds(), since) => {
                    next_token = Some(token.to_owned());
                }
                _ => return Ok(None),
            }
        }
        Err(BackendError::Permanent(anyhow::anyhow!(
            "cannot tell whether request {} already started a build: {project} has more than \
             {} builds since {since}, and none of the newest carries the request's {}; not \
             starting another (retry or drop the parked delivery)",
            request.request_id,
            FIND_MAX_PAGES * 100,
            prx_ci_shared::codebuild::env::CI_REQUEST_ID
        )))
    }

    async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError> {
        let id = build_id_of(build_id);
        match self.client.stop_build().id(id).send().await {
            Ok(output) => {
                let status = output.build_value().and_then(|b| b.build_status());
                Ok(match status {
                    None | Some(StatusType::InProgress | StatusType::Stopped) => {
                        StopOutcome::Stopped
                    }
                    Some(_) => StopOutcome::AlreadyFinished,
                })
            }
            // CodeBuild refuses to stop a build that is no longer running.
            Err(err) if err.code() == Some("InvalidInputException") => {
                tracing::info!(build_id, error = %DisplayErrorContext(&err), "build not stoppable; treating it as finished");
                Ok(StopOutcome::AlreadyFinished)
            }
            Err(err) => Err(classify(&format!("stop build {id}"), &err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_and_stable() {
        let id = "5f1d5a6e-2c1b-4c9a-9b7e-7e0a11c10001";
        assert_eq!(idempotency_token(id), id);
        let long = "x".repeat(200);
        let token = idempotency_token(&long);
        assert_eq!(token.len(), 64);
        assert_eq!(token, idempotency_token(&long));
        assert_ne!(idempotency_token("a b"), "a b");
    }

    #[test]
    fn untrusted_builds_get_the_untrusted_projects() {
        let config = CodeBuildConfig::default();
        assert_eq!(
            config.project(Architecture::X86_64, false),
            "infrastructure-ci-Runner2"
        );
        assert_eq!(
            config.project(Architecture::X86_64, true),
            "infrastructure-ci-UntrustedRunner2"
        );
        assert_eq!(
            config.project(Architecture::Aarch64, true),
            "infrastructure-ci-UntrustedArmRunner"
        );
        assert_eq!(config.validate(), Ok(()));

        let same = CodeBuildConfig {
            untrusted_aarch64_project: "infrastructure-ci-Runner2".into(),
            ..CodeBuildConfig::default()
        };
        assert!(same.validate().unwrap_err().contains("trusted project"));
        let empty = CodeBuildConfig {
            untrusted_x86_64_project: " ".into(),
            ..CodeBuildConfig::default()
        };
        assert!(empty.validate().is_err());
    }

    fn build(variables: &[(&str, &str)], start: Option<i64>) -> Build {
        use aws_sdk_codebuild::types::{ComputeType, EnvironmentType, ProjectEnvironment};
        let mut environment = ProjectEnvironment::builder()
            .r#type(EnvironmentType::LinuxContainer)
            .image("img")
            .compute_type(ComputeType::BuildGeneral1Small);
        for (name, value) in variables {
            environment = environment.environment_variables(
                EnvironmentVariable::builder()
                    .name(*name)
                    .value(*value)
                    .build()
                    .unwrap(),
            );
        }
        Build::builder()
            .id("p:1")
            .environment(environment.build().unwrap())
            .set_start_time(start.map(aws_sdk_codebuild::primitives::DateTime::from_secs))
            .build()
    }

    #[test]
    fn a_build_is_found_by_its_request_id_variable_only() {
        let id = "5f1d5a6e-2c1b-4c9a-9b7e-7e0a11c10001";
        assert!(started_by(
            &build(&[("PRX_REPO", "PRX/app"), (env::CI_REQUEST_ID, id)], None),
            id
        ));
        // Another request's build, the id under another name, a prefix, no variables at all.
        assert!(!started_by(
            &build(&[(env::CI_REQUEST_ID, "5f1d5a6e-other")], None),
            id
        ));
        assert!(!started_by(&build(&[("PRX_COMMIT", id)], None), id));
        assert!(!started_by(
            &build(&[(env::CI_REQUEST_ID, &id[..8])], None),
            id
        ));
        assert!(!started_by(&build(&[], None), id));
        assert!(!started_by(&Build::builder().id("p:2").build(), id));
        // An empty request id matches nothing, not a build whose variable is empty.
        assert!(!started_by(&build(&[(env::CI_REQUEST_ID, "")], None), ""));
    }

    #[test]
    fn older_pages_are_read_until_a_page_is_all_before_since() {
        let since = time::OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        assert!(all_before(
            &[build(&[], Some(10)), build(&[], Some(999))],
            since
        ));
        assert!(!all_before(
            &[build(&[], Some(10)), build(&[], Some(1_000))],
            since
        ));
        // A build without a start time might be the one: keep reading.
        assert!(!all_before(&[build(&[], None)], since));
    }

    #[test]
    fn ids_and_log_urls() {
        let arn =
            "arn:aws:codebuild:us-east-1:123456789012:build/infrastructure-ci-Runner2:0b5e-11";
        assert_eq!(build_id_of(arn), "infrastructure-ci-Runner2:0b5e-11");
        assert_eq!(build_id_of("p:1"), "p:1");
        assert_eq!(
            console_log_url("us-east-1", arn),
            "https://us-east-1.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/infrastructure-ci-Runner2/build/infrastructure-ci-Runner2%3A0b5e-11/log?region=us-east-1"
        );
    }
}
