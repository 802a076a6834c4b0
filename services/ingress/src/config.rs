//! The `[ingress]` configuration section.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use prx_ci_shared::config::{self, ConfigError, Validate};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

/// Environment variable with the webhook secret(s), comma-separated for rotation. Read by the
/// binaries (`prx-ci up`, `prx-ci-ingress`) at start-up and added to `[ingress] secrets`.
pub const WEBHOOK_SECRET_ENV: &str = "PRX_CI_WEBHOOK_SECRET";

/// GitHub's maximum webhook payload (25 MB) rounded up to 25 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// How long a delivery may take to be stored before the answer is 503.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// GitHub gives up on a delivery after 10 s; the store deadline must leave room for the
/// request to arrive and the answer to travel back.
pub const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(9);

/// GitHub gives up on a delivery after 10 s, so a body still arriving after that is useless.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// GitHub sends its headers at once; this mostly closes idle keep-alive connections and
/// connections that trickle headers (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook requests handled at once; more get 503 at once instead of queueing.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;

/// Bytes of request bodies in flight: two 25 MiB deliveries plus the small-body reserve.
pub const DEFAULT_BODY_BUDGET_BYTES: usize =
    2 * DEFAULT_MAX_BODY_BYTES + DEFAULT_SMALL_BODY_RESERVE_BYTES;

/// The part of the body budget only small bodies may use (legitimate pushes and pull
/// requests are mostly under 100 KB), so large bodies cannot starve them.
pub const DEFAULT_SMALL_BODY_RESERVE_BYTES: usize = 8 * 1024 * 1024;

/// A body of at most this size may use the small-body reserve.
pub const DEFAULT_SMALL_BODY_BYTES: usize = 256 * 1024;

/// The configuration section.
pub const SECTION: &str = "ingress";

/// The ingress (section `[ingress]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Address the webhook endpoint (and `/healthz`, `/readyz`, `/metrics`) listens on.
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Webhook secrets. A delivery signed with any of them is accepted (rotation: add the new
    /// secret, change it on GitHub, remove the old one). Default: none, which is a
    /// configuration error: there is no unauthenticated mode. `PRX_CI_WEBHOOK_SECRET`
    /// (comma-separated) adds to this list.
    pub secrets: Vec<SecretString>,
    /// Also accept the legacy `X-Hub-Signature` (HMAC-SHA1) when `X-Hub-Signature-256` is
    /// absent. Default `false`.
    pub legacy_sha1: bool,
    /// Largest accepted request body; larger ones get 413. Default 26214400 (25 MiB, GitHub's
    /// maximum payload).
    pub max_body_bytes: usize,
    /// `X-GitHub-Event` values that are stored. Others are answered 202 "ignored", counted, and
    /// not stored (`ping` is always answered 200). Default `["push", "pull_request",
    /// "check_run", "check_suite"]` (the last two carry "Re-run" clicks, docs/reruns.md).
    pub allowed_events: Vec<String>,
    /// How long storing a delivery may take before the answer is 503 (GitHub then marks it
    /// failed and it can be redelivered). At most 9s (GitHub waits 10s). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Address of a second listener serving `/metrics`, `/healthz` and `/readyz`; when set,
    /// `/metrics` is no longer served on `listen` (health checks still are). Default: none,
    /// everything on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Webhook requests handled at once; one more is answered 503 (`Retry-After`) at once
    /// rather than queued. Default 1024.
    pub max_concurrent_requests: usize,
    /// How long a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); then the connection is closed. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, counted from the end of its
    /// headers; then the answer is 408 and the connection is closed. Default `10s` (GitHub
    /// gives up after 10 s).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Bytes of request bodies held in memory at once, over all requests. A request is
    /// admitted only if its `Content-Length` fits in what is left (a chunked body: each
    /// chunk as it arrives); otherwise it is answered 503 (`Retry-After`) before (or
    /// without) reading the rest of its body. Released when the request ends, whatever the
    /// outcome. Default 60817408 (58 MiB: two 25 MiB deliveries plus the reserve).
    pub body_budget_bytes: usize,
    /// The part of `body_budget_bytes` only bodies of at most `small_body_bytes` may use,
    /// so large (or hostile) bodies cannot starve ordinary deliveries. Default 8388608
    /// (8 MiB).
    pub small_body_reserve_bytes: usize,
    /// Largest body that may use the reserve. Default 262144 (256 KiB; most pushes and
    /// pull requests are under 100 KB).
    pub small_body_bytes: usize,
    /// The reconciler that recovers deliveries GitHub could not make (`[ingress.self_healing]`,
    /// see `docs/self-healing-intake.md`). Default: disabled.
    pub self_healing: SelfHealingConfig,
}

/// Whose webhook's deliveries the reconciler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// The GitHub App's webhook (`/app/hook/deliveries`, the App's JWT).
    App,
    /// An organisation webhook (`/orgs/{org}/hooks/{hook_id}/deliveries`; a token, or App
    /// mode with `installation_id`, allowed to read the organisation's hooks).
    Org,
}

/// What the reconciler does with a delivery GitHub could not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Fetch the payload through the API and store it as `WebhookReceived`, origin
    /// `ORIGIN_RECOVERED`.
    Store,
    /// Ask GitHub to redeliver it (`POST .../deliveries/{id}/attempts`); the redelivery
    /// arrives signed at the webhook endpoint like any other.
    Redeliver,
}

/// GitHub keeps webhook deliveries for 3 days; PRX_WEBHOOKS deduplicates by delivery id for
/// as long (`duplicate_window`). A delivery older than this could be stored twice.
pub const MAX_RECOVERY_AGE: Duration = Duration::from_secs(72 * 3600);

/// `[ingress.self_healing]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfHealingConfig {
    /// Run the reconciler (at start-up, then every `interval`). Needs `[github]` credentials:
    /// App mode for `hook = "app"`. Default `false`.
    pub enabled: bool,
    /// `app` (default) or `org`.
    pub hook: HookKind,
    /// `hook = "org"`: the organisation's login.
    pub org: Option<String>,
    /// `hook = "org"`: the webhook's id.
    pub hook_id: Option<u64>,
    /// Time between rounds. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `store` (default) or `redeliver`.
    pub mode: RecoveryMode,
    /// Failed deliveries older than this are reported (warning, `too_old` counter), not
    /// recovered: beyond PRX_WEBHOOKS' duplicate window a recovery could build a push twice.
    /// At most (and default) `72h`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Deliveries per page asked of GitHub (1..=100). Default 100.
    pub per_page: u32,
    /// Pages read per round at most; a round that stops there keeps its cursor and says so.
    /// Default 100.
    pub max_pages: u32,
}

impl Default for SelfHealingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            hook: HookKind::App,
            org: None,
            hook_id: None,
            interval: Duration::from_secs(300),
            mode: RecoveryMode::Store,
            max_age: MAX_RECOVERY_AGE,
            per_page: 100,
            max_pages: 100,
        }
    }
}

impl SelfHealingConfig {
    /// The API path of the hook's deliveries (`/app/hook/deliveries` or
    /// `/orgs/{org}/hooks/{id}/deliveries`). Valid only for a validated configuration.
    pub fn deliveries_path(&self) -> String {
        match (self.hook, &self.org, self.hook_id) {
            (HookKind::Org, Some(org), Some(id)) => format!("/orgs/{org}/hooks/{id}/deliveries"),
            _ => "/app/hook/deliveries".to_owned(),
        }
    }

    /// The key of the hook's cursor in the reconciler's KV bucket.
    pub fn cursor_key(&self) -> String {
        match (self.hook, &self.org, self.hook_id) {
            (HookKind::Org, Some(org), Some(id)) => {
                format!(
                    "org.{}.{id}",
                    prx_ci_shared::kv::key_token(&org.to_lowercase())
                )
            }
            _ => "app".to_owned(),
        }
    }

    /// Whether the `[github]` credentials can read this hook's deliveries.
    pub fn check_credentials(
        &self,
        github: &prx_ci_shared::github::GitHubConfig,
    ) -> Result<(), String> {
        match self.hook {
            HookKind::App if !github.is_app() => Err(
                "self_healing with hook = \"app\" needs GitHub App mode ([github] app_id and \
                 private_key): the App's deliveries are read with its JWT"
                    .into(),
            ),
            HookKind::Org if !github.has_credentials() => Err(
                "self_healing with hook = \"org\" needs [github] credentials (a token, or \
                 App mode with installation_id) allowed to read the organisation's hooks"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.hook == HookKind::Org {
            let org_ok = self.org.as_deref().is_some_and(|org| {
                !org.is_empty()
                    && org.len() <= 39
                    && org.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !org_ok || self.hook_id.is_none() {
                return Err("self_healing: hook = \"org\" needs `org` (an organisation login) and `hook_id`".into());
            }
        }
        if self.interval < Duration::from_secs(1) {
            return Err("self_healing: interval must be at least 1s".into());
        }
        if self.max_age.is_zero() || self.max_age > MAX_RECOVERY_AGE {
            return Err(format!(
                "self_healing: max_age must be between 1s and {MAX_RECOVERY_AGE:?} (PRX_WEBHOOKS' \
                 duplicate window), not {:?}",
                self.max_age
            ));
        }
        if !(1..=100).contains(&self.per_page) {
            return Err("self_healing: per_page must be between 1 and 100".into());
        }
        if self.max_pages == 0 {
            return Err("self_healing: max_pages must be greater than 0".into());
        }
        Ok(())
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            secrets: Vec::new(),
            legacy_sha1: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allowed_events: ["push", "pull_request", "check_run", "check_suite"]
                .map(str::to_owned)
                .to_vec(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            metrics_listen: None,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            body_budget_bytes: DEFAULT_BODY_BUDGET_BYTES,
            small_body_reserve_bytes: DEFAULT_SMALL_BODY_RESERVE_BYTES,
            small_body_bytes: DEFAULT_SMALL_BODY_BYTES,
            self_healing: SelfHealingConfig::default(),
        }
    }
}

impl std::fmt::Debug for IngressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressConfig")
            .field("listen", &self.listen)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("legacy_sha1", &self.legacy_sha1)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("allowed_events", &self.allowed_events)
            .field("store_timeout", &self.store_timeout)
            .field("metrics_listen", &self.metrics_listen)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("body_budget_bytes", &self.body_budget_bytes)
            .field("small_body_reserve_bytes", &self.small_body_reserve_bytes)
            .field("small_body_bytes", &self.small_body_bytes)
            .field("self_healing", &self.self_healing)
            .finish()
    }
}

impl IngressConfig {
    /// Adds the secrets of a `PRX_CI_WEBHOOK_SECRET` value: comma-separated, surrounding
    /// whitespace trimmed, empty items and secrets already configured skipped. (A secret that
    /// contains a comma must therefore come from the config file.)
    #[must_use]
    pub fn with_secrets_from_env_value(mut self, value: &str) -> Self {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let known = self.secrets.iter().any(|s| s.expose_secret() == item);
            if !known {
                self.secrets.push(SecretString::from(item.to_owned()));
            }
        }
        self
    }

    /// Loads `[ingress]` from `file` (optional) with `PRX_CI_INGRESS__*` overrides, adds the
    /// secrets of `PRX_CI_WEBHOOK_SECRET`, and validates. What the binaries use.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Self::load_unvalidated(file)?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            section: SECTION.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Like [`IngressConfig::load`] without validating, for callers that fill in a missing
    /// secret themselves (`prx-ci up` in local mode generates one). [`crate::Ingress::new`]
    /// validates in any case.
    pub fn load_unvalidated(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Self = config::load_unvalidated(file, SECTION)?;
        Ok(config.with_secrets_from_env())
    }

    /// Adds the secrets of `PRX_CI_WEBHOOK_SECRET` if it is set.
    #[must_use]
    pub fn with_secrets_from_env(self) -> Self {
        match std::env::var(WEBHOOK_SECRET_ENV) {
            Ok(value) => self.with_secrets_from_env_value(&value),
            Err(_) => self,
        }
    }
}

impl Validate for IngressConfig {
    fn validate(&self) -> Result<(), String> {
        if self.secrets.is_empty() {
            return Err(format!(
                "no webhook secret: set `secrets` or {WEBHOOK_SECRET_ENV} (unsigned webhooks are never accepted)"
            ));
        }
        if let Some(i) = self
            .secrets
            .iter()
            .position(|s| s.expose_secret().trim().is_empty())
        {
            return Err(format!("secret #{} is empty", i + 1));
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be greater than 0".into());
        }
        if self.store_timeout.is_zero() || self.store_timeout > MAX_STORE_TIMEOUT {
            return Err(format!(
                "store_timeout must be between 1ms and {MAX_STORE_TIMEOUT:?} (GitHub gives up after 10s), not {:?}",
                self.store_timeout
            ));
        }
        self.validate_limits()?;
        if self.allowed_events.is_empty() {
            return Err("allowed_events is empty: nothing would ever be stored".into());
        }
        if let Some(bad) = self
            .allowed_events
            .iter()
            .find(|e| e.is_empty() || !e.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!("allowed_events: {bad:?} is not an event name"));
        }
        self.self_healing.validate()?;
        Ok(())
    }
}

impl IngressConfig {
    /// The load limits: all non-zero, and a body of `max_body_bytes` must fit in the part of
    /// the budget outside the reserve (else the largest deliveries could never be accepted).
    fn validate_limits(&self) -> Result<(), String> {
        if self.max_concurrent_requests == 0 {
            return Err("max_concurrent_requests must be greater than 0".into());
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        // Budget permits are counted in a u32 (tokio's semaphore takes u32 amounts).
        if self.body_budget_bytes > u32::MAX as usize {
            return Err(format!(
                "body_budget_bytes must be at most {} (4 GiB)",
                u32::MAX
            ));
        }
        if self.small_body_reserve_bytes >= self.body_budget_bytes {
            return Err(format!(
                "small_body_reserve_bytes ({}) must be below body_budget_bytes ({})",
                self.small_body_reserve_bytes, self.body_budget_bytes
            ));
        }
        let shared = self.body_budget_bytes - self.small_body_reserve_bytes;
        if shared < self.max_body_bytes {
            return Err(format!(
                "body_budget_bytes minus small_body_reserve_bytes ({shared}) must be at least \
                 max_body_bytes ({}), or the largest deliveries are never accepted",
                self.max_body_bytes
            ));
        }
        if self.small_body_bytes > self.small_body_reserve_bytes {
            return Err(format!(
                "small_body_bytes ({}) must be at most small_body_reserve_bytes ({})",
                self.small_body_bytes, self.small_body_reserve_bytes
            ));
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

    fn load(toml: &str) -> Result<IngressConfig, String> {
        load_from::<IngressConfig>(&Figment::from(Toml::string(toml)), "ingress")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_and_a_secret_is_required() {
        let err = load("").unwrap_err();
        assert!(err.contains("no webhook secret"), "{err}");

        let config = load("[ingress]\nsecrets = [\"s3cret\"]\n").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.max_body_bytes, 25 * 1024 * 1024);
        assert_eq!(
            config.allowed_events,
            ["push", "pull_request", "check_run", "check_suite"]
        );
        assert_eq!(config.store_timeout, Duration::from_secs(5));
        assert!(!config.legacy_sha1);
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.max_concurrent_requests, 1024);
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.body_read_timeout, Duration::from_secs(10));
        assert_eq!(config.body_budget_bytes, 58 * 1024 * 1024);
        assert_eq!(config.small_body_reserve_bytes, 8 * 1024 * 1024);
        assert_eq!(config.small_body_bytes, 256 * 1024);
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let example = load(include_str!("../config.example.toml")).unwrap();
        let defaults = IngressConfig::default();
        assert_eq!(example.listen, defaults.listen);
        assert_eq!(example.legacy_sha1, defaults.legacy_sha1);
        assert_eq!(example.max_body_bytes, defaults.max_body_bytes);
        assert_eq!(example.allowed_events, defaults.allowed_events);
        assert_eq!(example.store_timeout, defaults.store_timeout);
        assert_eq!(example.metrics_listen, defaults.metrics_listen);
        assert_eq!(
            example.max_concurrent_requests,
            defaults.max_concurrent_requests
        );
        assert_eq!(example.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(example.body_read_timeout, defaults.body_read_timeout);
        assert_eq!(example.body_budget_bytes, defaults.body_budget_bytes);
        assert_eq!(
            example.small_body_reserve_bytes,
            defaults.small_body_reserve_bytes
        );
        assert_eq!(example.small_body_bytes, defaults.small_body_bytes);
        assert_eq!(example.self_healing, defaults.self_healing);
    }

    #[test]
    fn file_values_are_read() {
        let config = load(
            "[ingress]\nlisten = \"0.0.0.0:9000\"\nsecrets = [\"a\", \"b\"]\nlegacy_sha1 = true\n\
             max_body_bytes = 1024\nallowed_events = [\"push\"]\nstore_timeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.secrets.len(), 2);
        assert!(config.legacy_sha1);
        assert_eq!(config.max_body_bytes, 1024);
        assert_eq!(config.allowed_events, ["push"]);
        assert_eq!(config.store_timeout, Duration::from_secs(2));
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (toml, expected) in [
            ("secrets = [\"\"]", "secret #1 is empty"),
            (
                "secrets = [\"a\"]\nstore_timeout = \"10s\"",
                "store_timeout",
            ),
            ("secrets = [\"a\"]\nstore_timeout = \"0s\"", "store_timeout"),
            ("secrets = [\"a\"]\nmax_body_bytes = 0", "max_body_bytes"),
            ("secrets = [\"a\"]\nallowed_events = []", "allowed_events"),
            (
                "secrets = [\"a\"]\nallowed_events = [\"a b\"]",
                "allowed_events",
            ),
            ("secrets = [\"a\"]\nsecret = \"typo\"", "secret"),
            (
                "secrets = [\"a\"]\nmax_concurrent_requests = 0",
                "max_concurrent_requests",
            ),
            (
                "secrets = [\"a\"]\nbody_read_timeout = \"0s\"",
                "body_read_timeout",
            ),
            (
                "secrets = [\"a\"]\nheader_read_timeout = \"0s\"",
                "header_read_timeout",
            ),
            (
                "secrets = [\"a\"]\nbody_budget_bytes = 30000000",
                "must be at least max_body_bytes",
            ),
            (
                "secrets = [\"a\"]\nbody_budget_bytes = 8388608",
                "must be below body_budget_bytes",
            ),
            (
                "secrets = [\"a\"]\nsmall_body_bytes = 9000000",
                "small_body_bytes",
            ),
            (
                "secrets = [\"a\"]\nbody_budget_bytes = 5000000000",
                "at most",
            ),
        ] {
            let err = load(&format!("[ingress]\n{toml}\n")).unwrap_err();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn self_healing_is_off_by_default_and_validated() {
        let config = load("[ingress]\nsecrets = [\"a\"]\n").unwrap();
        assert_eq!(config.self_healing, SelfHealingConfig::default());
        assert!(!config.self_healing.enabled);
        assert_eq!(config.self_healing.interval, Duration::from_secs(300));
        assert_eq!(config.self_healing.max_age, MAX_RECOVERY_AGE);
        assert_eq!(
            config.self_healing.deliveries_path(),
            "/app/hook/deliveries"
        );
        assert_eq!(config.self_healing.cursor_key(), "app");

        let org = load(
            "[ingress]\nsecrets = [\"a\"]\n[ingress.self_healing]\nenabled = true\nhook = \"org\"\n\
             org = \"PRX\"\nhook_id = 42\nmode = \"redeliver\"\ninterval = \"1m\"\nmax_age = \"24h\"\n",
        )
        .unwrap()
        .self_healing;
        assert_eq!(org.mode, RecoveryMode::Redeliver);
        assert_eq!(org.deliveries_path(), "/orgs/PRX/hooks/42/deliveries");
        assert_eq!(org.cursor_key(), "org.prx.42");
        assert_eq!(org.max_age, Duration::from_secs(24 * 3600));

        for (toml, expected) in [
            ("hook = \"org\"", "needs `org`"),
            ("hook = \"org\"\norg = \"a/b\"\nhook_id = 1", "needs `org`"),
            ("max_age = \"73h\"", "max_age"),
            ("interval = \"0s\"", "interval"),
            ("per_page = 101", "per_page"),
            ("max_pages = 0", "max_pages"),
            ("mode = \"fetch\"", "mode"),
            ("enable = true", "enable"),
        ] {
            let err = load(&format!(
                "[ingress]\nsecrets = [\"a\"]\n[ingress.self_healing]\nenabled = true\n{toml}\n"
            ))
            .unwrap_err();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn self_healing_needs_matching_github_credentials() {
        use prx_ci_shared::github::GitHubConfig;
        let app = SelfHealingConfig {
            enabled: true,
            ..SelfHealingConfig::default()
        };
        let token = GitHubConfig {
            token: Some(SecretString::from("t".to_owned())),
            ..GitHubConfig::default()
        };
        let err = app.check_credentials(&token).unwrap_err();
        assert!(err.contains("GitHub App mode"), "{err}");
        assert!(app.check_credentials(&GitHubConfig::default()).is_err());
        let org = SelfHealingConfig {
            hook: HookKind::Org,
            org: Some("PRX".into()),
            hook_id: Some(1),
            ..app
        };
        assert!(org.check_credentials(&token).is_ok());
        assert!(org.check_credentials(&GitHubConfig::default()).is_err());
    }

    #[test]
    fn env_value_adds_comma_separated_secrets_once() {
        let config = IngressConfig {
            secrets: vec![SecretString::from("old".to_owned())],
            ..IngressConfig::default()
        }
        .with_secrets_from_env_value(" new , old,, other ");
        let secrets: Vec<_> = config.secrets.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(secrets, ["old", "new", "other"]);
        assert!(config.validate().is_ok());

        let empty = IngressConfig::default().with_secrets_from_env_value(" , ");
        assert!(empty.validate().is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let config = IngressConfig::default().with_secrets_from_env_value("hunter2,topsecret");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("topsecret"),
            "{debug}"
        );
        assert!(debug.contains("2 redacted"), "{debug}");
    }
}
