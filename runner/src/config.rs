//! The `[runner]` configuration section.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prx_ci_shared::config::Validate;
use serde::Deserialize;

/// The original's CodeBuild project timeout (16 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(16 * 60);

/// The variables inherited from the runner's environment by default: the only ones an
/// untrusted build (a fork's pull request) inherits, whatever `inherit_env` adds.
pub const DEFAULT_INHERIT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "DOCKER_HOST",
];

/// How builds are kept away from the host's secrets (`[runner] isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Linux user, mount and PID namespaces (util-linux `unshare` and `setpriv`): the data dir,
    /// the work dirs of other builds and `hidden_paths` are hidden, the host's processes are
    /// invisible, and the build has no capabilities. The runner refuses to start when the host
    /// cannot provide them.
    #[default]
    Namespaces,
    /// None: builds run as the runner's user, directly on the host, and can read everything it
    /// can (the ops token, the webhook secret, the NATS credentials). Only for trusted builds.
    None,
}

/// Settings of the local build runner (section `[runner]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalRunnerConfig {
    /// Where builds keep their logs (`builds/<id>.log`), records and work dirs (`work/<id>`).
    /// Default `./.prx-ci/runner`.
    pub data_dir: PathBuf,
    /// Where builds run: `<work_dir>/<uuid>/src` is the checkout and working directory. Must be
    /// outside `data_dir`. Default `./.prx-ci-work`.
    pub work_dir: PathBuf,
    /// How builds are isolated from the host: `namespaces` or `none`. Default `namespaces`.
    pub isolation: Isolation,
    /// Further files and directories builds must not read (hidden by the isolation; `prx-ci up`
    /// adds its data dir, which holds its secrets and the NATS store). Default: none.
    pub hidden_paths: Vec<PathBuf>,
    /// How many builds run at once; later builds wait in `QUEUED`. Default 2.
    pub max_concurrent_builds: usize,
    /// Build timeout from the end of `QUEUED` (source download and phases); the build is killed
    /// and reported `TIMED_OUT`. Default 16m, like the original CodeBuild projects.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The shell that runs the buildspec commands (must be bash-compatible). Default `bash`.
    pub shell: String,
    /// Keep `work/<id>` after the build (for debugging). Default false.
    pub keep_workdirs: bool,
    /// `PRX_AWS_ACCOUNT_ID`, a project variable of the original. Default `000000000000`.
    pub aws_account_id: String,
    /// `PRX_APPLICATION_CODE_BUCKET`, a project variable of the original. Default
    /// `local-application-code`.
    pub application_code_bucket: String,
    /// `AWS_DEFAULT_REGION` inside builds. Default `us-east-1`.
    pub region: String,
    /// Further project variables (reported like CodeBuild project variables; the dispatcher's
    /// variables win over them). Set AWS settings (`AWS_ENDPOINT_URL`, `AWS_PROFILE`, ...) here
    /// to let the post-build helper really publish. Untrusted builds (fork pull requests) get
    /// none of them. Default: none.
    pub environment: BTreeMap<String, String>,
    /// Variables passed through from the runner's own environment when set (builds otherwise
    /// start from an empty environment, so the runner's credentials do not leak into builds).
    /// Default `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR`, `DOCKER_HOST`
    /// ([`DEFAULT_INHERIT_ENV`]); untrusted builds inherit only those of the default list.
    pub inherit_env: Vec<String>,
    /// This runner's name among runners sharing `data_dir` (several dispatcher replicas on one
    /// machine): each build is claimed by one runner, and after a restart a runner recovers
    /// only its own builds. Default empty (the only runner).
    pub instance: String,
}

impl Default for LocalRunnerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.prx-ci/runner"),
            work_dir: PathBuf::from("./.prx-ci-work"),
            isolation: Isolation::Namespaces,
            hidden_paths: Vec::new(),
            max_concurrent_builds: 2,
            timeout: DEFAULT_TIMEOUT,
            shell: "bash".to_owned(),
            keep_workdirs: false,
            aws_account_id: "000000000000".to_owned(),
            application_code_bucket: "local-application-code".to_owned(),
            region: "us-east-1".to_owned(),
            environment: BTreeMap::new(),
            inherit_env: DEFAULT_INHERIT_ENV
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            instance: String::new(),
        }
    }
}

impl Validate for LocalRunnerConfig {
    fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir is empty".into());
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err("work_dir is empty".into());
        }
        if self.max_concurrent_builds == 0 {
            return Err("max_concurrent_builds must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout must be longer than 0s".into());
        }
        if self.shell.trim().is_empty() {
            return Err("shell is empty".into());
        }
        if !self
            .instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "instance `{}` may only hold letters, digits, `-` and `_`",
                self.instance
            ));
        }
        for name in self.environment.keys().chain(&self.inherit_env) {
            if !crate::buildspec::is_variable_name(name) {
                return Err(format!("`{name}` is not a valid environment variable name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};
    use prx_ci_shared::config::load_from;

    use super::*;

    #[test]
    fn defaults_match_the_original_project() {
        let config: LocalRunnerConfig =
            load_from(&Figment::from(Toml::string("[runner]\n")), "runner").unwrap();
        assert_eq!(config, LocalRunnerConfig::default());
        assert_eq!(config.timeout, Duration::from_secs(960));
        assert_eq!(config.max_concurrent_builds, 2);
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let config: LocalRunnerConfig = load_from(
            &Figment::from(Toml::string(include_str!("../config.example.toml"))),
            "runner",
        )
        .unwrap();
        assert_eq!(config, LocalRunnerConfig::default());
    }

    #[test]
    fn parses_and_rejects() {
        let config: LocalRunnerConfig = load_from(
            &Figment::from(Toml::string(
                "[runner]\ntimeout = \"90s\"\nmax_concurrent_builds = 1\n[runner.environment]\nAWS_PROFILE = \"dev\"\n",
            )),
            "runner",
        )
        .unwrap();
        assert_eq!(config.timeout, Duration::from_secs(90));
        assert_eq!(config.environment["AWS_PROFILE"], "dev");
        assert_eq!(config.isolation, Isolation::Namespaces);

        let config: LocalRunnerConfig = load_from(
            &Figment::from(Toml::string("[runner]\nisolation = \"none\"\n")),
            "runner",
        )
        .unwrap();
        assert_eq!(config.isolation, Isolation::None);

        for bad in [
            "[runner]\nmax_concurrent_builds = 0\n",
            "[runner]\ntimeout = \"0s\"\n",
            "[runner]\n[runner.environment]\n\"A-B\" = \"x\"\n",
            "[runner]\nunknown = 1\n",
            "[runner]\nisolation = \"chroot\"\n",
            "[runner]\ninstance = \"a b\"\n",
        ] {
            assert!(
                load_from::<LocalRunnerConfig>(&Figment::from(Toml::string(bad)), "runner")
                    .is_err(),
                "{bad}"
            );
        }
    }
}
