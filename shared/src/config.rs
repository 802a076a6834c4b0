//! Typed configuration, parsed once at start-up and validated before anything runs.
//!
//! One TOML file (see `prx-ci.example.toml`) holds a section per service plus the common
//! sections (`[nats]`, `[telemetry]`, `[aws]`). Each service owns the struct of its section and
//! loads it with [`load`]; environment variables override the file as
//! `PRX_CI_<SECTION>__<FIELD>` (e.g. `PRX_CI_NATS__URL`). Handlers receive values, never read
//! the environment themselves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "PRX_CI_";
/// The environment variable naming the configuration file (every binary's `--config`).
pub const CONFIG_FILE_ENV: &str = "PRX_CI_CONFIG";
/// The environment variable of the NATS URL (`[nats] url`), which the CLI's commands also take.
pub const NATS_URL_ENV: &str = "PRX_CI_NATS__URL";

/// A configuration that is wrong, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration section [{section}]: {source}")]
    Parse {
        section: String,
        #[source]
        source: Box<figment::Error>,
    },
    #[error("invalid configuration [{section}]: {reason}")]
    Invalid { section: String, reason: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Whether a service acts or only records what it would have done (`mode` in the dispatcher's,
/// publisher's, notifier's and build-watcher's sections; docs/migrating.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Starts builds, writes parameters, posts messages. The default.
    #[default]
    Live,
    /// Beside the original system: every decision is recorded as events, but no build is
    /// started, no parameter written and nothing posted. The build-watcher observes the
    /// original's builds instead of this system's.
    Shadow,
}

impl Mode {
    /// True in shadow mode.
    pub fn is_shadow(self) -> bool {
        self == Mode::Shadow
    }
}

/// A section that can check itself after parsing.
pub trait Validate {
    /// Returns the first problem found, phrased for an operator.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Loads `[section]` from `file` (optional) with `PRX_CI_<SECTION>__*` overrides, and
/// validates it. Missing fields take the struct's serde defaults.
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    section: &str,
) -> Result<T, ConfigError> {
    let value: T = load_unvalidated(file, section)?;
    value.validate().map_err(|reason| ConfigError::Invalid {
        section: section.to_owned(),
        reason,
    })?;
    Ok(value)
}

/// Like [`load`] without validating, for callers that fill in missing values (e.g. a generated
/// local-mode token) and then call [`Validate::validate`] themselves.
pub fn load_unvalidated<T: DeserializeOwned>(
    file: Option<&Path>,
    section: &str,
) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::MissingFile(file.to_owned()));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    figment
        .focus(section)
        .extract()
        .map_err(|source| ConfigError::Parse {
            section: section.to_owned(),
            source: Box::new(source),
        })
}

/// Like [`load`], from an already assembled figment (tests use `Figment::from(Toml::string(..))`).
pub fn load_from<T: DeserializeOwned + Validate>(
    figment: &Figment,
    section: &str,
) -> Result<T, ConfigError> {
    let value: T = figment
        .focus(section)
        .extract()
        .map_err(|source| ConfigError::Parse {
            section: section.to_owned(),
            source: Box::new(source),
        })?;
    value.validate().map_err(|reason| ConfigError::Invalid {
        section: section.to_owned(),
        reason,
    })?;
    Ok(value)
}

/// Loads a binary's sections from one file and records which it read, so `--check-config` can
/// report exactly the sections the normal start loads (environment variables of a section
/// nobody reads are silently ignored, so that list is what a deployment is checked against).
#[derive(Debug)]
pub struct Sections<'a> {
    file: Option<&'a Path>,
    read: Vec<&'static str>,
    variables: Vec<&'static str>,
}

impl<'a> Sections<'a> {
    /// Sections of `file` (none: defaults and environment variables only).
    pub fn new(file: Option<&'a Path>) -> Self {
        Self {
            file,
            read: Vec::new(),
            variables: Vec::new(),
        }
    }

    /// The configuration file.
    pub fn file(&self) -> Option<&'a Path> {
        self.file
    }

    /// [`load`] of `section`, recorded.
    pub fn load<T: DeserializeOwned + Validate>(
        &mut self,
        section: &'static str,
    ) -> Result<T, ConfigError> {
        self.note(section);
        load(self.file, section)
    }

    /// [`load_unvalidated`] of `section`, recorded.
    pub fn load_unvalidated<T: DeserializeOwned>(
        &mut self,
        section: &'static str,
    ) -> Result<T, ConfigError> {
        self.note(section);
        load_unvalidated(self.file, section)
    }

    /// Records `section` as read by a loader of its own (e.g. `IngressConfig::load`).
    pub fn note(&mut self, section: &'static str) {
        if !self.read.contains(&section) {
            self.read.push(section);
        }
    }

    /// Records an environment variable read outside the `PRX_CI_<SECTION>__<FIELD>` scheme
    /// (e.g. `PRX_CI_WEBHOOK_SECRET`).
    pub fn note_variable(&mut self, name: &'static str) {
        if !self.variables.contains(&name) {
            self.variables.push(name);
        }
    }

    /// The sections read so far, in order.
    pub fn read(&self) -> &[&'static str] {
        &self.read
    }

    /// The report of `--check-config`: `Ok` with the sections read (one line `sections: [a]
    /// [b]`, then `variables: ...` if any), or the configuration error.
    pub fn check_report<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<String> {
        result.context("configuration is invalid")?;
        let mut report = String::from("sections:");
        for section in &self.read {
            report.push_str(&format!(" [{section}]"));
        }
        report.push('\n');
        if !self.variables.is_empty() {
            report.push_str(&format!("variables: {}\n", self.variables.join(" ")));
        }
        Ok(report)
    }
}

/// Connection to NATS (section `[nats]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// A `.creds` file for authenticated clusters. Default: none.
    pub credentials_file: Option<PathBuf>,
    /// User name for a server that requires user/password authentication (`prx-ci up`'s local
    /// server does). Default: none.
    pub user: Option<String>,
    /// Password of `user` (`PRX_CI_NATS__PASSWORD`). Never logged. Default: none.
    pub password: Option<SecretString>,
    /// Stream replicas when provisioning (1 on a single server, 3 in a cluster). Default 1.
    pub replicas: usize,
    /// How long to wait for the first connection. Default 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Client name prefix shown in the server's monitoring. Default `prx-ci`.
    pub client_name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            user: None,
            password: None,
            replicas: 1,
            connect_timeout: Duration::from_secs(10),
            client_name: "prx-ci".to_owned(),
        }
    }
}

impl Validate for NatsConfig {
    fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("url is empty".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("user and password go together: set both or neither".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!("replicas must be 1 to 5, not {}", self.replicas));
        }
        Ok(())
    }
}

/// AWS access shared by the services that call AWS (section `[aws]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Region. Default: the SDK's chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint override for every AWS service (an emulator). Default: none (real AWS).
    pub endpoint_url: Option<String>,
}

impl Validate for AwsConfig {}

impl AwsConfig {
    /// The SDK configuration (credentials from the SDK's default chain).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        loader.load().await
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Toml;

    use super::*;

    #[test]
    fn sections_take_defaults_and_file_values() {
        let figment = Figment::from(Toml::string(
            "[nats]\nurl = \"nats://n1:4222\"\nreplicas = 3\nconnect_timeout = \"2s\"\n",
        ));
        let nats: NatsConfig = load_from(&figment, "nats").unwrap();
        assert_eq!(nats.url, "nats://n1:4222");
        assert_eq!(nats.replicas, 3);
        assert_eq!(nats.connect_timeout, Duration::from_secs(2));
        assert_eq!(nats.client_name, "prx-ci");

        let figment = Figment::from(Toml::string(
            "[nats]\nuser = \"ci\"\npassword = \"hunter2-secret\"\n",
        ));
        let nats: NatsConfig = load_from(&figment, "nats").unwrap();
        assert_eq!(nats.user.as_deref(), Some("ci"));
        assert!(
            !format!("{nats:?}").contains("hunter2-secret"),
            "Debug never shows the password"
        );

        let empty: NatsConfig = load_from(&Figment::new(), "nats").unwrap();
        assert_eq!(empty.url, "nats://127.0.0.1:4222");
    }

    #[test]
    fn sections_record_what_was_read_for_the_check_report() {
        let mut sections = Sections::new(None);
        let nats: NatsConfig = sections.load("nats").unwrap();
        assert_eq!(nats.replicas, 1);
        let _: AwsConfig = sections.load_unvalidated("aws").unwrap();
        sections.note("nats");
        sections.note_variable("PRX_CI_WEBHOOK_SECRET");
        assert_eq!(sections.read(), ["nats", "aws"]);
        let report = sections.check_report(Ok(())).unwrap();
        assert_eq!(
            report,
            "sections: [nats] [aws]\nvariables: PRX_CI_WEBHOOK_SECRET\n"
        );
        let err = sections
            .check_report::<()>(Err(anyhow::anyhow!("replicas must be 1 to 5")))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("replicas must be 1 to 5"),
            "{err:#}"
        );
    }

    #[test]
    fn invalid_values_are_rejected_with_the_section_named() {
        let figment = Figment::from(Toml::string("[nats]\nreplicas = 9\n"));
        let err = load_from::<NatsConfig>(&figment, "nats").unwrap_err();
        assert!(err.to_string().contains("[nats]"), "{err}");
        assert!(err.to_string().contains("replicas"), "{err}");

        let figment = Figment::from(Toml::string("[nats]\nuser = \"ci\"\n"));
        let err = load_from::<NatsConfig>(&figment, "nats").unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");

        let figment = Figment::from(Toml::string("[nats]\nurll = \"x\"\n"));
        let err = load_from::<NatsConfig>(&figment, "nats").unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }
}
