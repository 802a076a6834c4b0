//! The `[ops]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use prx_ci_shared::config::Validate;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

/// Settings of the ops service (section `[ops]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the gRPC ops API. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz`, `/metrics`. Default `127.0.0.1:9106`.
    pub ops_listen: SocketAddr,
    /// Bearer token every gRPC call must carry (`authorization: Bearer <token>`). Required; at
    /// least 16 characters. Never logged.
    pub token: Option<SecretString>,
    /// Finished builds `Builds` returns when the caller does not say. Default 20.
    pub recent_builds: usize,
    /// Finished builds the projection keeps in memory (older ones are forgotten; in-flight
    /// builds are always kept). Default 1000.
    pub keep_finished_builds: usize,
    /// Most events one `History` or replay listing returns (the newest are kept). Default 10000.
    pub max_listed_events: usize,
    /// How often a replay runner looks for new replay consumers. Default 2s.
    #[serde(with = "humantime_serde")]
    pub replay_poll_interval: Duration,
}

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9106)),
            token: None,
            recent_builds: 20,
            keep_finished_builds: 1000,
            max_listed_events: 10_000,
            replay_poll_interval: Duration::from_secs(2),
        }
    }
}

impl Validate for OpsConfig {
    fn validate(&self) -> Result<(), String> {
        match &self.token {
            None => return Err("token is required (PRX_CI_OPS__TOKEN)".into()),
            Some(t) if t.expose_secret().trim().len() < MIN_TOKEN_LEN => {
                return Err(format!(
                    "token must have at least {MIN_TOKEN_LEN} characters"
                ));
            }
            Some(_) => {}
        }
        if self.recent_builds == 0 || self.keep_finished_builds < self.recent_builds {
            return Err("recent_builds must be > 0 and <= keep_finished_builds".into());
        }
        if self.max_listed_events == 0 {
            return Err("max_listed_events must be > 0".into());
        }
        if self.replay_poll_interval.is_zero() {
            return Err("replay_poll_interval must be > 0".into());
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
    fn token_is_required_and_never_printed() {
        let err = load_from::<OpsConfig>(&Figment::new(), "ops").unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let short = Figment::from(Toml::string("[ops]\ntoken = \"short\"\n"));
        assert!(load_from::<OpsConfig>(&short, "ops").is_err());

        let figment = Figment::from(Toml::string(
            "[ops]\ntoken = \"0123456789abcdef-secret\"\nlisten = \"127.0.0.1:6000\"\n",
        ));
        let config: OpsConfig = load_from(&figment, "ops").unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.recent_builds, 20);
        assert!(!format!("{config:?}").contains("0123456789abcdef-secret"));
    }
}
