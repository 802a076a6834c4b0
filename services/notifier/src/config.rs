//! The `[notifier]` configuration section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prx_ci_shared::config::{Mode, Validate};
use prx_ci_shared::notice::console_links::LinkConfig;
use secrecy::SecretString;
use serde::Deserialize;

/// Settings of the notifier (section `[notifier]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`. Default `127.0.0.1:9105`.
    pub ops_listen: SocketAddr,
    /// Events handled at once. Events of one build are serialised through the KV bucket's
    /// compare-and-set, so any value keeps them in order. Default 16.
    pub concurrency: usize,
    /// KV bucket of the per-build projections. Default `prx_ci_notifications`.
    pub bucket: String,
    /// Slack channel (name or id) every build message goes to. Default `#ops-build` (the
    /// original posted to PRX's `#ops-build`, id `G5C36JDUY`).
    pub channel: String,
    /// Per-repository channel (`"owner/repo" = "#channel"`), matched case-insensitively.
    /// Default: none.
    pub channel_overrides: BTreeMap<String, String>,
    /// Name shown on messages (needs the `chat:write.customize` scope). Default `AWS CodeBuild`.
    pub username: Option<String>,
    /// Emoji shown as the icon (needs `chat:write.customize`). Default `:ops-codebuild:`.
    pub icon_emoji: Option<String>,
    /// Commits listed for a push (GitHub compare `per_page`). Default 16.
    pub max_commits: u32,
    /// Events older than this update the build's record but send nothing, so replaying old
    /// history (or a record expired from the bucket) never re-posts old builds. Default 72h.
    #[serde(with = "humantime_serde")]
    pub quiet_after: Duration,
    /// How long one replica may hold a build's delivery lease (its message's, or its check
    /// run's) before another may take over.
    /// Longer than the Slack client's worst-case retries (5 attempts, waits of at most 30s,
    /// 10s request timeout). Default 3m.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub slack: SlackConfig,
    pub links: LinkConfig,
    pub statuses: StatusConfig,
    pub checks: CheckRunConfig,
    /// `live` (default) or `shadow`: rendered and recorded as live, nothing sent to Slack or
    /// GitHub; `NotificationDelivered.shadow` set, `reference` empty (docs/migrating.md).
    pub mode: Mode,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9105)),
            concurrency: 16,
            bucket: "prx_ci_notifications".to_owned(),
            channel: "#ops-build".to_owned(),
            channel_overrides: BTreeMap::new(),
            username: Some("AWS CodeBuild".to_owned()),
            icon_emoji: Some(":ops-codebuild:".to_owned()),
            max_commits: 16,
            quiet_after: Duration::from_secs(72 * 3600),
            lease: Duration::from_secs(180),
            slack: SlackConfig::default(),
            links: LinkConfig::default(),
            statuses: StatusConfig::default(),
            checks: CheckRunConfig::default(),
            mode: Mode::Live,
        }
    }
}

impl NotifierConfig {
    /// The channel for `repository` (an override, else the default channel).
    pub fn channel_for(&self, repository: &str) -> &str {
        self.channel_overrides
            .iter()
            .find(|(repo, _)| repo.eq_ignore_ascii_case(repository))
            .map_or(self.channel.as_str(), |(_, channel)| channel.as_str())
    }
}

impl Validate for NotifierConfig {
    fn validate(&self) -> Result<(), String> {
        if self.channel.trim().is_empty() {
            return Err("channel is empty".into());
        }
        if let Some((repo, _)) = self
            .channel_overrides
            .iter()
            .find(|(_, c)| c.trim().is_empty())
        {
            return Err(format!("channel_overrides.{repo:?} is empty"));
        }
        if self.bucket.is_empty()
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "bucket {:?} is not a valid KV bucket name",
                self.bucket
            ));
        }
        if !(1..=100).contains(&self.max_commits) {
            return Err(format!(
                "max_commits must be 1 to 100, not {}",
                self.max_commits
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err("lease must be at least 1s".into());
        }
        url::Url::parse(&self.slack.api_url).map_err(|e| format!("slack.api_url: {e}"))?;
        if let Some(start) = &self.links.sso_start_url {
            url::Url::parse(start).map_err(|e| format!("links.sso_start_url: {e}"))?;
        }
        if self.statuses.per_minute == 0 || self.statuses.per_hour == 0 {
            return Err("statuses.per_minute and statuses.per_hour must be positive".into());
        }
        if self.statuses.context.trim().is_empty() {
            return Err("statuses.context is empty".into());
        }
        if self.checks.per_minute == 0 || self.checks.per_hour == 0 {
            return Err("checks.per_minute and checks.per_hour must be positive".into());
        }
        if self.checks.name.trim().is_empty() {
            return Err("checks.name is empty".into());
        }
        if let Some(dashboard) = &self.checks.dashboard_url {
            let url =
                url::Url::parse(dashboard).map_err(|e| format!("checks.dashboard_url: {e}"))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err("checks.dashboard_url must be an http(s) URL".into());
            }
        }
        Ok(())
    }
}

/// Slack Web API access (section `[notifier.slack]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Web API base URL (a Slack-compatible relay or a test server can stand in). Default
    /// `https://slack.com/api`.
    pub api_url: String,
    /// Bot token (`xoxb-...`, scopes `chat:write`, optionally `chat:write.customize` and
    /// `channels:history`/`groups:history` for post recovery). Default: none, messages are
    /// logged instead (local mode).
    pub token: Option<SecretString>,
    /// Minimum time between two messages (posts or updates) to one channel; Slack allows
    /// about one per second. Default 1s.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Timeout of one request. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            api_url: "https://slack.com/api".to_owned(),
            token: None,
            min_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("min_interval", &self.min_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// GitHub commit statuses (section `[notifier.statuses]`). The token is `[github].token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// Write commit statuses at all. Default true.
    pub enabled: bool,
    /// Status context; `{arch}`, `{region}` and `{project}` are replaced. Default
    /// `prx-ci/{arch}` (CodeBuild's own was `AWS CodeBuild <region> (<project>)`).
    pub context: String,
    /// Status writes per minute per token (GitHub's content-creation limit is 80). Default 80.
    pub per_minute: u32,
    /// Status writes per hour per token (GitHub's limit is 500). Default 500.
    pub per_hour: u32,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            context: prx_ci_shared::notice::commit_status::DEFAULT_CONTEXT.to_owned(),
            per_minute: 80,
            per_hour: 500,
        }
    }
}

/// GitHub check runs (section `[notifier.checks]`), written in GitHub App mode only
/// (`[github] app_id`); in token mode the notifier writes commit statuses
/// (`[notifier.statuses]`) instead. docs/check-runs.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckRunConfig {
    /// Write check runs in App mode. `false`: the App writes commit statuses as in token mode.
    /// Default true.
    pub enabled: bool,
    /// Check run name; `{arch}`, `{region}` and `{project}` are replaced. Default
    /// `prx-ci/{arch}` (the same as the status context, so branch protection keeps its
    /// required check when a repository moves from token to App mode).
    pub name: String,
    /// Public base URL of the ops dashboard (`[ops] dashboard_listen` behind its proxy), e.g.
    /// `https://ci.example.org`: a check run's details link goes to the build's page there.
    /// Default: none, the CodeBuild console (or the log link) instead.
    pub dashboard_url: Option<String>,
    /// Check-run writes (creations and updates) per minute (GitHub's content-creation limit
    /// is 80). Default 80.
    pub per_minute: u32,
    /// Check-run writes per hour (GitHub's limit is 500). Default 500.
    pub per_hour: u32,
}

impl Default for CheckRunConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: prx_ci_shared::notice::commit_status::DEFAULT_CONTEXT.to_owned(),
            dashboard_url: None,
            per_minute: 80,
            per_hour: 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};
    use prx_ci_shared::config::load_from;

    use super::*;

    #[test]
    fn defaults_match_the_original() {
        let config: NotifierConfig = load_from(&Figment::new(), "notifier").unwrap();
        assert_eq!(config.username.as_deref(), Some("AWS CodeBuild"));
        assert_eq!(config.icon_emoji.as_deref(), Some(":ops-codebuild:"));
        assert_eq!(config.max_commits, 16);
        assert_eq!(config.slack.api_url, "https://slack.com/api");
        assert_eq!(config.links.sso_role_name, "AdministratorAccess");
        assert_eq!(config.statuses.context, "prx-ci/{arch}");
    }

    #[test]
    fn overrides_pick_the_channel_and_the_token_stays_secret() {
        let figment = Figment::from(Toml::string(
            r##"
            [notifier]
            channel = "#builds"
            [notifier.channel_overrides]
            "PRX/feeder" = "#feeder-ci"
            [notifier.slack]
            token = "xoxb-very-secret"
            min_interval = "500ms"
            "##,
        ));
        let config: NotifierConfig = load_from(&figment, "notifier").unwrap();
        assert_eq!(config.channel_for("PRX/feeder"), "#feeder-ci");
        assert_eq!(config.channel_for("prx/FEEDER"), "#feeder-ci");
        assert_eq!(config.channel_for("PRX/other"), "#builds");
        assert_eq!(config.slack.min_interval, Duration::from_millis(500));
        assert!(!format!("{config:?}").contains("very-secret"));
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let figment = Figment::from(Toml::string(include_str!("../config.example.toml")));
        let example: NotifierConfig = load_from(&figment, "notifier").unwrap();
        let defaults = NotifierConfig::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn bad_values_are_rejected() {
        for toml in [
            "[notifier]\nchannel = \"\"",
            "[notifier]\nmax_commits = 0",
            "[notifier]\nbucket = \"a.b\"",
            "[notifier.slack]\napi_url = \"not a url\"",
            "[notifier.statuses]\nper_minute = 0",
            "[notifier.checks]\nper_hour = 0",
            "[notifier.checks]\nname = \" \"",
            "[notifier.checks]\ndashboard_url = \"ftp://x\"",
            "[notifier.checks]\nunknown = 1",
            "[notifier]\nunknown = 1",
        ] {
            let figment = Figment::from(Toml::string(toml));
            assert!(
                load_from::<NotifierConfig>(&figment, "notifier").is_err(),
                "{toml}"
            );
        }
    }
}
