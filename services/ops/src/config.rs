//! The `[ops]` configuration section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Bearer token every gRPC call must carry (`authorization: Bearer <token>`). Required
    /// unless `tokens` names some; at least 16 characters. Never logged.
    pub token: Option<SecretString>,
    /// The operator identity of `token`, recorded in audit events (a rebuild's
    /// `requested_by`). Default `ops-token`.
    pub token_name: String,
    /// Further tokens, one per operator or automation: `name = "token"` (`[ops.tokens]`). A
    /// call authenticates as the name of the token it presents. Default: none.
    pub tokens: BTreeMap<String, SecretString>,
    /// Finished builds `Builds` returns when the caller does not say. Default 20.
    pub recent_builds: usize,
    /// Finished builds the projection keeps in memory (older ones are forgotten; in-flight
    /// builds are always kept). Default 1000.
    pub keep_finished_builds: usize,
    /// Most events one `History` page or replay listing returns (the newest are kept): a
    /// `History` call's `limit` is capped at it. Default 10000.
    pub max_listed_events: usize,
    /// Events of a `History` page when the call does not say (`limit` 0; `prx-ci history`
    /// without `--limit` or `--all`): the newest of the selection. A page's cost grows with its
    /// events (one read each), so the default stays well inside the 20 ms a query may take.
    /// Default 200; capped at `max_listed_events`.
    pub history_page: usize,
    /// How often a replay runner looks for new replay consumers. Default 2s.
    #[serde(with = "humantime_serde")]
    pub replay_poll_interval: Duration,
    /// Address of the web dashboard (`prx-ci up` serves it on `127.0.0.1:8081`). Default: off.
    pub dashboard_listen: Option<SocketAddr>,
    /// Mark the dashboard's session cookie `Secure` (set it when the dashboard is served
    /// behind TLS). Default false.
    pub dashboard_secure_cookie: bool,
    /// How long a dashboard sign-in lasts. Default 12h.
    #[serde(with = "humantime_serde")]
    pub dashboard_session_ttl: Duration,
    /// The only directory whose files the dashboard streams as local builds' logs (a build's
    /// `file://` log URL must lead inside it; `prx-ci up` sets the local runner's data dir).
    /// Default: none, no local log is read.
    pub local_build_logs: Option<PathBuf>,
}

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9106)),
            token: None,
            token_name: crate::auth::DEFAULT_TOKEN_NAME.to_owned(),
            tokens: BTreeMap::new(),
            recent_builds: 20,
            keep_finished_builds: 1000,
            max_listed_events: 10_000,
            history_page: 200,
            replay_poll_interval: Duration::from_secs(2),
            dashboard_listen: None,
            dashboard_secure_cookie: false,
            dashboard_session_ttl: Duration::from_secs(12 * 3600),
            local_build_logs: None,
        }
    }
}

/// Longest token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// Whether `name` can name an operator: 1 to 64 of `[A-Za-z0-9._@-]` (it is written into
/// events and log lines as is).
fn is_token_name(name: &str) -> bool {
    (1..=MAX_TOKEN_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

impl OpsConfig {
    /// Every accepted token with its operator name: `token` as `token_name`, then `tokens`.
    pub fn identities(&self) -> Vec<(String, SecretString)> {
        self.token
            .iter()
            .map(|t| (self.token_name.clone(), t.clone()))
            .chain(self.tokens.iter().map(|(n, t)| (n.clone(), t.clone())))
            .collect()
    }
}

impl Validate for OpsConfig {
    fn validate(&self) -> Result<(), String> {
        if self.token.is_none() && self.tokens.is_empty() {
            return Err("token is required (PRX_CI_OPS__TOKEN), or named [ops.tokens]".into());
        }
        let identities = self.identities();
        for (i, (name, token)) in identities.iter().enumerate() {
            if !is_token_name(name) {
                return Err(format!(
                    "token name {name:?} must be 1 to {MAX_TOKEN_NAME_LEN} of A-Z a-z 0-9 . _ @ -"
                ));
            }
            if token.expose_secret().trim().len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token {name} must have at least {MIN_TOKEN_LEN} characters"
                ));
            }
            // Two operators with one token, or one name for two tokens, would blur who did what.
            for (other_name, other_token) in &identities[..i] {
                if other_name == name {
                    return Err(format!("token name {name} is used twice"));
                }
                if other_token.expose_secret() == token.expose_secret() {
                    return Err(format!("tokens {other_name} and {name} are the same"));
                }
            }
        }
        if self.recent_builds == 0 || self.keep_finished_builds < self.recent_builds {
            return Err("recent_builds must be > 0 and <= keep_finished_builds".into());
        }
        if self.max_listed_events == 0 {
            return Err("max_listed_events must be > 0".into());
        }
        // Above `max_listed_events` it is capped (`history_page::page_size`), not refused: a
        // configuration from before pages that lowered `max_listed_events` below the default
        // page still loads.
        if self.history_page == 0 {
            return Err("history_page must be > 0".into());
        }
        if self.dashboard_session_ttl.is_zero() {
            return Err("dashboard_session_ttl must be > 0".into());
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
        assert_eq!(config.identities()[0].0, "ops-token");
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let text = include_str!("../config.example.toml");
        let figment = Figment::from(Toml::string(text)).merge(Toml::string(
            "[ops]\ntoken = \"0123456789abcdef-example\"\n",
        ));
        let config: OpsConfig = load_from(&figment, "ops").unwrap();
        let defaults = OpsConfig::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.ops_listen, defaults.ops_listen);
        assert_eq!(config.dashboard_listen, None);
        assert!(!config.dashboard_secure_cookie);
        assert_eq!(config.local_build_logs, None);
        assert_eq!(config.recent_builds, defaults.recent_builds);
        assert_eq!(config.keep_finished_builds, defaults.keep_finished_builds);
        assert_eq!(config.max_listed_events, defaults.max_listed_events);
        assert_eq!(config.history_page, defaults.history_page);
        let on = Figment::from(Toml::string(
            "[ops]\ntoken = \"0123456789abcdef-example\"\ndashboard_listen = \"127.0.0.1:8081\"\n",
        ));
        let config: OpsConfig = load_from(&on, "ops").unwrap();
        assert_eq!(config.dashboard_listen.unwrap().port(), 8081);
    }

    #[test]
    fn the_default_history_page_is_positive_and_a_lower_listing_cap_still_loads() {
        let with = |extra: &str| {
            Figment::from(Toml::string(&format!(
                "[ops]\ntoken = \"0123456789abcdef-example\"\n{extra}"
            )))
        };
        let config: OpsConfig = load_from(&with(""), "ops").unwrap();
        assert_eq!(
            (config.history_page, config.max_listed_events),
            (200, 10_000)
        );
        let config: OpsConfig =
            load_from(&with("history_page = 50\nmax_listed_events = 50\n"), "ops").unwrap();
        assert_eq!(config.history_page, 50);
        // A configuration from before pages with a lower cap loads; its pages are capped.
        let config: OpsConfig = load_from(&with("max_listed_events = 100\n"), "ops").unwrap();
        assert_eq!(
            crate::history_page::page_size(0, config.history_page, config.max_listed_events),
            100
        );
        let err = load_from::<OpsConfig>(&with("history_page = 0\n"), "ops").unwrap_err();
        assert!(err.to_string().contains("history_page"), "{err}");
    }

    #[test]
    fn named_tokens_give_operator_identities() {
        let figment = Figment::from(Toml::string(
            "[ops]\ntoken = \"0123456789abcdef-ci\"\ntoken_name = \"ci-bot\"\n\
             [ops.tokens]\nalice = \"alice-0123456789abcdef\"\n",
        ));
        let config: OpsConfig = load_from(&figment, "ops").unwrap();
        let names: Vec<String> = config.identities().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ci-bot", "alice"]);
        assert!(!format!("{config:?}").contains("alice-0123456789abcdef"));
        // Named tokens alone are enough.
        let only_named = Figment::from(Toml::string(
            "[ops.tokens]\nalice = \"alice-0123456789abcdef\"\n",
        ));
        assert!(load_from::<OpsConfig>(&only_named, "ops").is_ok());

        for bad in [
            // The same token for two names.
            "[ops]\ntoken = \"same-0123456789abcdef\"\n[ops.tokens]\nbob = \"same-0123456789abcdef\"\n",
            // The same name twice.
            "[ops]\ntoken = \"one-0123456789abcdef\"\ntoken_name = \"bob\"\n[ops.tokens]\nbob = \"two-0123456789abcdef\"\n",
            // A name that would not read well in an event.
            "[ops.tokens]\n\"alice smith\" = \"alice-0123456789abcdef\"\n",
            "[ops.tokens]\nalice = \"short\"\n",
        ] {
            let figment = Figment::from(Toml::string(bad));
            assert!(load_from::<OpsConfig>(&figment, "ops").is_err(), "{bad}");
        }
    }
}
