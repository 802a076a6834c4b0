//! The publisher's configuration (section `[publisher]`, see `config.example.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prx_ci_shared::config::Validate;
use prx_ci_shared::domain::Architecture;
use serde::Deserialize;

use prx_ci_shared::ownership::{
    ConfigOwners, DEFAULT_PARAMETER_PREFIX, OwnershipConfig, check_parameter_prefix,
};

use crate::fence_store::FenceSettings;

/// Section `[publisher]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` (binary only). Default `127.0.0.1:9104`.
    pub ops_listen: SocketAddr,
    /// Only parameter names starting with this are written. Default `/prx/stag/Spire/`.
    pub parameter_prefix: String,
    /// The architecture whose value a push publishes when it built several. Default `x86_64`.
    pub primary_architecture: Architecture,
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
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9104)),
            parameter_prefix: DEFAULT_PARAMETER_PREFIX.to_owned(),
            primary_architecture: Architecture::X86_64,
            application_code_bucket: String::new(),
            s3_force_path_style: false,
            concurrency: 8,
            claim_lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            fence_poll_interval: Duration::from_millis(20),
            retry_backoff: Vec::new(),
            owners: BTreeMap::new(),
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
}
