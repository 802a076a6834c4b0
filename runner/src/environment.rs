//! A build's environment variables, with CodeBuild's precedence. Pure: no I/O.
//!
//! Lowest to highest: variables inherited from the runner (`inherit_env`), the buildspec's
//! `env.variables`, the region built-ins, project variables (`PRX_AWS_ACCOUNT_ID`,
//! `PRX_APPLICATION_CODE_BUCKET`, `PRX_CI_LOCAL`, `[runner.environment]`), the dispatcher's
//! variables (StartBuild overrides), and the `CODEBUILD_*` built-ins. Only project and
//! dispatcher variables are *reported* in the events, as CodeBuild does: buildspec variables
//! reach the rest of the system only when exported.
//!
//! An untrusted build (a fork's pull request, `StartBuild::untrusted`) gets none of
//! `[runner.environment]` (where operators put AWS settings that let the post-build helper
//! publish) and inherits only the default `inherit_env` variables: code nobody trusted wrote
//! must not see the runner's credentials. The runner is no sandbox beyond that (see
//! docs/local-runner.md).

use std::collections::BTreeMap;

use prx_ci_shared::codebuild::env;

use crate::config::{DEFAULT_INHERIT_ENV, LocalRunnerConfig};

/// The `CODEBUILD_*` values of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltIns {
    pub build_id: String,
    pub src_dir: String,
    pub source_version: String,
    pub resolved_source_version: String,
    pub source_repo_url: String,
    /// Milliseconds since the epoch.
    pub start_time_ms: i128,
}

/// Project variables and the dispatcher's variables (what the events report); an untrusted
/// build gets none of `[runner.environment]`.
pub fn reported_variables(
    config: &LocalRunnerConfig,
    handler: &BTreeMap<String, String>,
    untrusted: bool,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert(
        env::AWS_ACCOUNT_ID.to_owned(),
        config.aws_account_id.clone(),
    );
    vars.insert(
        env::APPLICATION_CODE_BUCKET.to_owned(),
        config.application_code_bucket.clone(),
    );
    vars.insert(env::CI_LOCAL.to_owned(), "true".to_owned());
    if !untrusted {
        vars.extend(config.environment.clone());
    }
    vars.extend(handler.clone());
    vars
}

/// The variables a build inherits from the runner: for an untrusted build only those of
/// [`DEFAULT_INHERIT_ENV`] (an operator's additions to `inherit_env`, such as `AWS_PROFILE`,
/// are withheld).
pub fn inherited_variables(
    inherited: &BTreeMap<String, String>,
    untrusted: bool,
) -> BTreeMap<String, String> {
    inherited
        .iter()
        .filter(|(name, _)| !untrusted || DEFAULT_INHERIT_ENV.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The full process environment of the build shell.
pub fn process_environment(
    config: &LocalRunnerConfig,
    inherited: &BTreeMap<String, String>,
    buildspec: &BTreeMap<String, String>,
    reported: &BTreeMap<String, String>,
    builtins: &BuiltIns,
) -> BTreeMap<String, String> {
    let mut env = inherited.clone();
    env.extend(buildspec.clone());
    env.insert("AWS_DEFAULT_REGION".to_owned(), config.region.clone());
    env.insert("AWS_REGION".to_owned(), config.region.clone());
    env.extend(reported.clone());
    for (name, value) in [
        ("CODEBUILD_CI", "true".to_owned()),
        ("CODEBUILD_BUILD_ID", builtins.build_id.clone()),
        ("CODEBUILD_BUILD_ARN", builtins.build_id.clone()),
        ("CODEBUILD_BUILD_IMAGE", "local".to_owned()),
        ("CODEBUILD_BUILD_SUCCEEDING", "1".to_owned()),
        ("CODEBUILD_INITIATOR", crate::reporter::INITIATOR.to_owned()),
        ("CODEBUILD_SRC_DIR", builtins.src_dir.clone()),
        ("CODEBUILD_SOURCE_VERSION", builtins.source_version.clone()),
        (
            "CODEBUILD_RESOLVED_SOURCE_VERSION",
            builtins.resolved_source_version.clone(),
        ),
        (
            "CODEBUILD_SOURCE_REPO_URL",
            builtins.source_repo_url.clone(),
        ),
        ("CODEBUILD_START_TIME", builtins.start_time_ms.to_string()),
    ] {
        env.insert(name.to_owned(), value);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn precedence_is_codebuilds() {
        let config = LocalRunnerConfig {
            environment: map(&[("EXTRA", "project"), ("PRX_CI_PUBLISH", "project")]),
            ..LocalRunnerConfig::default()
        };
        let handler = map(&[("PRX_CI_PUBLISH", "false"), ("PRX_REPO", "PRX/app")]);
        let reported = reported_variables(&config, &handler, false);
        assert_eq!(
            reported,
            map(&[
                ("EXTRA", "project"),
                ("PRX_APPLICATION_CODE_BUCKET", "local-application-code"),
                ("PRX_AWS_ACCOUNT_ID", "000000000000"),
                ("PRX_CI_LOCAL", "true"),
                ("PRX_CI_PUBLISH", "false"),
                ("PRX_REPO", "PRX/app"),
            ])
        );

        let builtins = BuiltIns {
            build_id: "local:1".into(),
            src_dir: "/w/1".into(),
            source_version: "abc".into(),
            resolved_source_version: "abcdef".into(),
            source_repo_url: "file:///r".into(),
            start_time_ms: 5,
        };
        let env = process_environment(
            &config,
            &map(&[("PATH", "/bin"), ("PRX_REPO", "inherited")]),
            &map(&[
                ("PRX_CI_PUBLISH", "true"),
                ("ONLY_BUILDSPEC", "b"),
                ("CODEBUILD_SRC_DIR", "nope"),
            ]),
            &reported,
            &builtins,
        );
        assert_eq!(env["PATH"], "/bin");
        assert_eq!(env["PRX_CI_PUBLISH"], "false", "the dispatcher wins");
        assert_eq!(env["PRX_REPO"], "PRX/app");
        assert_eq!(env["ONLY_BUILDSPEC"], "b");
        assert_eq!(env["CODEBUILD_SRC_DIR"], "/w/1");
        assert_eq!(env["CODEBUILD_BUILD_SUCCEEDING"], "1");
        assert_eq!(env["AWS_DEFAULT_REGION"], "us-east-1");
    }

    #[test]
    fn untrusted_builds_get_no_configured_environment() {
        let config = LocalRunnerConfig {
            environment: map(&[("AWS_PROFILE", "publisher"), ("EXTRA", "project")]),
            ..LocalRunnerConfig::default()
        };
        let handler = map(&[("PRX_CI_PUBLISH", "false")]);
        let reported = reported_variables(&config, &handler, true);
        assert_eq!(
            reported,
            map(&[
                ("PRX_APPLICATION_CODE_BUCKET", "local-application-code"),
                ("PRX_AWS_ACCOUNT_ID", "000000000000"),
                ("PRX_CI_LOCAL", "true"),
                ("PRX_CI_PUBLISH", "false"),
            ])
        );
        let inherited = map(&[("PATH", "/bin"), ("AWS_SECRET_ACCESS_KEY", "s")]);
        assert_eq!(
            inherited_variables(&inherited, true),
            map(&[("PATH", "/bin")])
        );
        assert_eq!(inherited_variables(&inherited, false), inherited);
    }
}
