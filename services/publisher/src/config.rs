//! The publisher's configuration (section `[publisher]`, see `config.example.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prx_ci_shared::config::{Mode, Validate};
use prx_ci_shared::domain::Architecture;
use serde::Deserialize;

use prx_ci_shared::ownership::{
    ConfigOwners, DEFAULT_PARAMETER_PREFIX, OwnershipConfig, check_parameter_prefix,
};

use crate::apps::{AppConfig, AppRules, ValueChecks};
use crate::fence_store::FenceSettings;

/// Section `[publisher]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` (binary only). Default `127.0.0.1:9104`.
    pub ops_listen: SocketAddr,
    /// Only parameter names starting with this are written. Default `/prx/stag/Spire/`.
    pub parameter_prefix: String,
    /// The architecture whose value a push publishes when it built several, unless the
    /// buildspec's marker or the repository's `[publisher.apps]` entry says otherwise. Default
    /// `x86_64`.
    pub primary_architecture: Architecture,
    /// How values are checked where no `[publisher.apps]` entry says otherwise: `strict` (the
    /// helper's value shapes, the artifact exists) or `trusted` (any value SSM accepts).
    /// Default `strict`.
    pub value_checks: ValueChecks,
    /// The application-code bucket S3 values are checked in (`PRX_APPLICATION_CODE_BUCKET`).
    /// Default "" (required by the binary, which checks artifacts).
    pub application_code_bucket: String,
    /// Path-style S3 addressing for the artifact check (emulators). Default false.
    pub s3_force_path_style: bool,
    /// Build completions handled at once per replica. Default 8.
    pub concurrency: usize,
    /// How long a fence claim protects one write; must exceed twice `write_timeout`.
    /// Default 60s (the consumer's ack wait).
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    /// Upper bound of one parameter write, throttling retries included. Default 10s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How often a replica waiting on another's claim re-reads the fence. Default 20ms.
    #[serde(with = "humantime_serde")]
    pub fence_poll_interval: Duration,
    /// Redelivery delays after a failed attempt (the last repeats). Default empty: the
    /// consumer definition's backoff (`deploy/nats/consumers/publisher.json`).
    #[serde(deserialize_with = "durations")]
    pub retry_backoff: Vec<Duration>,
    /// Table `[publisher.owners]`: parameter name, or prefix ending in `/`, -> the `owner/repo`
    /// that alone may publish it (the longest matching entry wins; config beats a claim).
    /// Names no entry covers belong to the first repository that publishes them. Default
    /// empty.
    pub owners: BTreeMap<String, String>,
    /// Table `[publisher.apps."<key>"]`, key a parameter name or prefix (starting with `/`) or
    /// a repository (`owner/repo`): `value_checks` and, for repositories,
    /// `primary_architecture` (precedence in [`crate::apps`]). Default empty.
    pub apps: BTreeMap<String, AppConfig>,
    /// `live` (default) or `shadow`: every check and the fence as live, the values written to
    /// the KV bucket `prx_ci_shadow_parameters` instead of the parameter store,
    /// `PublishApplied.shadow` set (docs/migrating.md).
    pub mode: Mode,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9104)),
            parameter_prefix: DEFAULT_PARAMETER_PREFIX.to_owned(),
            primary_architecture: Architecture::X86_64,
            value_checks: ValueChecks::Strict,
            application_code_bucket: String::new(),
            s3_force_path_style: false,
            concurrency: 8,
            claim_lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            fence_poll_interval: Duration::from_millis(20),
            retry_backoff: Vec::new(),
            owners: BTreeMap::new(),
            apps: BTreeMap::new(),
            mode: Mode::Live,
        }
    }
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

impl PublisherConfig {
    pub fn fence_settings(&self) -> FenceSettings {
        FenceSettings {
            lease: self.claim_lease,
            write_timeout: self.write_timeout,
            poll_interval: self.fence_poll_interval,
        }
    }

    /// The ownership part of the section, as other services read it.
    pub fn ownership(&self) -> OwnershipConfig {
        OwnershipConfig {
            parameter_prefix: self.parameter_prefix.clone(),
            owners: self.owners.clone(),
        }
    }

    /// The validated `[publisher.owners]` table.
    pub fn config_owners(&self) -> Result<ConfigOwners, String> {
        ConfigOwners::parse(&self.owners, &self.parameter_prefix)
    }

    /// The validated `[publisher.apps]` table with the section's defaults.
    pub fn app_rules(&self) -> Result<AppRules, String> {
        AppRules::parse(
            &self.apps,
            &self.parameter_prefix,
            self.value_checks,
            self.primary_architecture,
        )
    }
}

impl Validate for PublisherConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.concurrency) {
            return Err(format!(
                "concurrency must be 1 to 256, not {}",
                self.concurrency
            ));
        }
        check_parameter_prefix(&self.parameter_prefix)?;
        if self.write_timeout.is_zero() || self.claim_lease <= self.write_timeout * 2 {
            return Err(format!(
                "claim_lease ({:?}) must be more than twice write_timeout ({:?})",
                self.claim_lease, self.write_timeout
            ));
        }
        if self.fence_poll_interval.is_zero() || self.fence_poll_interval > self.claim_lease {
            return Err("fence_poll_interval must be positive and below claim_lease".into());
        }
        self.config_owners()?;
        self.app_rules()?;
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
    fn the_ops_api_reads_the_same_ownership_the_publisher_enforces() {
        assert_eq!(
            PublisherConfig::default().ownership(),
            OwnershipConfig::default()
        );
        let config = PublisherConfig {
            parameter_prefix: "/team/".into(),
            owners: BTreeMap::from([("/team/App/".to_owned(), "PRX/app".to_owned())]),
            ..PublisherConfig::default()
        };
        let ownership = config.ownership();
        assert_eq!(ownership.parameter_prefix, "/team/");
        assert_eq!(ownership.config_owners(), config.config_owners());
        assert_eq!(
            ownership
                .config_owners()
                .unwrap()
                .owner_of("/team/App/pkg/x")
                .map(|o| o.repository.as_str()),
            Some("PRX/app")
        );
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let text = include_str!("../config.example.toml");
        let config: PublisherConfig =
            load_from(&Figment::from(Toml::string(text)), "publisher").unwrap();
        assert_eq!(
            config,
            PublisherConfig {
                application_code_bucket: "prx-application-code".into(),
                ..PublisherConfig::default()
            }
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("[publisher]\nconcurrency = 0\n", "concurrency"),
            (
                "[publisher]\nparameter_prefix = \"prx/\"\n",
                "parameter_prefix",
            ),
            ("[publisher]\nparameter_prefix = \"/a b/\"\n", "space"),
            ("[publisher]\nclaim_lease = \"15s\"\n", "twice"),
            (
                "[publisher]\nprimary_architecture = \"arm\"\n",
                "primary_architecture",
            ),
            (
                "[publisher.owners]\n\"/prx/stag/Spire/App/\" = \"app\"\n",
                "owner/repo",
            ),
            (
                "[publisher.owners]\n\"/prx/prod/App/\" = \"PRX/app\"\n",
                "outside the allowed prefix",
            ),
            ("[publisher]\nvalue_checks = \"loose\"\n", "value_checks"),
            (
                "[publisher.apps.\"PRX/app\"]\nvalue_checks = \"none\"\n",
                "found `none`, expected ``strict` or `trusted`` for key \"default.apps.PRX/app.value_checks\"",
            ),
            (
                "[publisher.apps.\"PRX/app\"]\nprimary_architecture = \"arm64\"\n",
                "primary_architecture",
            ),
            (
                "[publisher.apps.\"PRX/app\"]\nvalue_check = \"trusted\"\n",
                "unknown field: found `value_check`, expected ``value_checks` or `primary_architecture``",
            ),
            (
                "[publisher.apps.\"PRX/app\"]\n",
                "apps: \"PRX/app\" sets nothing",
            ),
            (
                "[publisher.apps.\"prx-app\"]\nvalue_checks = \"trusted\"\n",
                "apps: \"prx-app\" is neither a parameter name or prefix",
            ),
            (
                "[publisher.apps.\"/prx/prod/App/\"]\nvalue_checks = \"trusted\"\n",
                "outside the allowed prefix",
            ),
            (
                "[publisher.apps.\"/prx/stag/Spire/App/\"]\nprimary_architecture = \"aarch64\"\n",
                "per repository",
            ),
        ] {
            let err = load_from::<PublisherConfig>(&Figment::from(Toml::string(text)), "publisher")
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let ok: PublisherConfig = load_from(
            &Figment::from(Toml::string(
                "[publisher]\nprimary_architecture = \"aarch64\"\nretry_backoff = [\"50ms\", \"1s\"]\n",
            )),
            "publisher",
        )
        .unwrap();
        assert_eq!(ok.primary_architecture, Architecture::Aarch64);
        assert_eq!(ok.retry_backoff.len(), 2);
        let owned: PublisherConfig = load_from(
            &Figment::from(Toml::string(
                "[publisher.owners]\n\"/prx/stag/Spire/App/\" = \"PRX/app\"\n",
            )),
            "publisher",
        )
        .unwrap();
        let owners = owned.config_owners().unwrap();
        assert_eq!(
            owners
                .owner_of("/prx/stag/Spire/App/pkg/docker-image-tag")
                .map(|o| o.repository.as_str()),
            Some("PRX/app")
        );
    }

    #[test]
    fn apps_resolve_value_checks_and_the_primary_architecture() {
        let text = r#"
[publisher]
value_checks = "strict"
primary_architecture = "x86_64"

[publisher.apps."PRX/legacy-app"]
value_checks = "trusted"
primary_architecture = "aarch64"

[publisher.apps."/prx/stag/Spire/Legacy/"]
value_checks = "trusted"

[publisher.apps."/prx/stag/Spire/Legacy/pkg/docker-image-tag"]
value_checks = "strict"
"#;
        let config: PublisherConfig =
            load_from(&Figment::from(Toml::string(text)), "publisher").unwrap();
        let rules = config.app_rules().unwrap();
        let checks = |parameter: &str, repository: &str| rules.value_checks(parameter, repository);
        assert_eq!(
            checks("/prx/stag/Spire/Legacy/pkg/s3-object-key", "PRX/other"),
            ValueChecks::Trusted
        );
        assert_eq!(
            checks(
                "/prx/stag/Spire/Legacy/pkg/docker-image-tag",
                "PRX/legacy-app"
            ),
            ValueChecks::Strict
        );
        assert_eq!(
            checks("/prx/stag/Spire/App/pkg/docker-image-tag", "prx/Legacy-App"),
            ValueChecks::Trusted
        );
        assert_eq!(
            checks("/prx/stag/Spire/App/pkg/docker-image-tag", "PRX/other"),
            ValueChecks::Strict
        );
        assert_eq!(
            rules.primary_architecture(None, "PRX/legacy-app"),
            Architecture::Aarch64
        );
        assert_eq!(
            rules.primary_architecture(Some(Architecture::X86_64), "PRX/legacy-app"),
            Architecture::X86_64
        );
        assert_eq!(
            rules.primary_architecture(None, "PRX/other"),
            Architecture::X86_64
        );
        // The global default can be trusted too.
        let trusted: PublisherConfig = load_from(
            &Figment::from(Toml::string("[publisher]\nvalue_checks = \"trusted\"\n")),
            "publisher",
        )
        .unwrap();
        assert_eq!(
            trusted
                .app_rules()
                .unwrap()
                .value_checks("/prx/stag/Spire/A/x", "PRX/a"),
            ValueChecks::Trusted
        );
    }
}
