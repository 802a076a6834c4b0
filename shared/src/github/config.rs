//! The `[github]` section: where GitHub is and how to authenticate (a token, or a GitHub App).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::app::AppKey;
use crate::config::Validate;

/// Access to GitHub (section `[github]`). Two ways to authenticate, exclusive: a `token`
/// (token mode), or a GitHub App (`app_id` and one of `private_key` / `private_key_file`).
/// Neither: anonymous (local mode). See docs/github-app.md.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitHubConfig {
    /// REST API base URL. Default `https://api.github.com` (GitHub Enterprise:
    /// `https://<host>/api/v3`).
    pub api_url: String,
    /// Token mode: a token with read access to the organisation's repositories (and
    /// `repo:status` for commit statuses). Default: none.
    pub token: Option<SecretString>,
    /// App mode: the GitHub App's id.
    pub app_id: Option<u64>,
    /// App mode: the App's private key, PEM text (`-----BEGIN RSA PRIVATE KEY-----` or
    /// `-----BEGIN PRIVATE KEY-----`); literal `\n` sequences are read as newlines, for
    /// environment variables that cannot hold line breaks. Exclusive with `private_key_file`.
    pub private_key: Option<SecretString>,
    /// App mode: a file holding the App's private key (PEM). Exclusive with `private_key`.
    pub private_key_file: Option<PathBuf>,
    /// App mode: one installation for every call. Default: none, the installation of each
    /// repository is looked up (`GET /repos/{owner}/{repo}/installation`) and cached.
    pub installation_id: Option<u64>,
    /// `User-Agent` sent with every request. Default `PRX/prx-ci`.
    pub user_agent: String,
    /// Timeout of one request. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".to_owned(),
            token: None,
            app_id: None,
            private_key: None,
            private_key_file: None,
            installation_id: None,
            user_agent: "PRX/prx-ci".to_owned(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("app_id", &self.app_id)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "[redacted]"),
            )
            .field("private_key_file", &self.private_key_file)
            .field("installation_id", &self.installation_id)
            .field("user_agent", &self.user_agent)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl GitHubConfig {
    /// True when calls authenticate (token or App mode); false in local mode.
    pub fn has_credentials(&self) -> bool {
        self.token.is_some() || self.app_id.is_some()
    }

    /// True in GitHub App mode.
    pub fn is_app(&self) -> bool {
        self.app_id.is_some()
    }

    /// The App's signing key (App mode), read from `private_key` or `private_key_file`.
    /// The error names the field and never contains the key.
    pub(crate) fn app_key(&self) -> Result<Option<AppKey>, String> {
        let Some(app_id) = self.app_id else {
            return Ok(None);
        };
        let (field, pem) = match (&self.private_key, &self.private_key_file) {
            (None, None) => {
                return Err(
                    "app_id needs the App's private key: set private_key (the PEM \
                            text) or private_key_file"
                        .to_owned(),
                );
            }
            (Some(_), Some(_)) => {
                return Err("set one of private_key and private_key_file, not both".to_owned());
            }
            (Some(pem), None) => (
                "private_key".to_owned(),
                SecretString::from(pem.expose_secret().to_owned()),
            ),
            (None, Some(path)) => {
                let field = format!("private_key_file {}", path.display());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{field}: cannot read: {e}"))?;
                (field, SecretString::from(text))
            }
        };
        AppKey::from_pem(app_id, &pem)
            .map(Some)
            .map_err(|reason| format!("{field}: {reason}"))
    }
}

impl Validate for GitHubConfig {
    fn validate(&self) -> Result<(), String> {
        url::Url::parse(&self.api_url).map_err(|e| format!("api_url: {e}"))?;
        if self.token.is_some() && self.app_id.is_some() {
            return Err(
                "token and app_id are mutually exclusive: set token (token mode) or \
                        app_id with the App's private key (GitHub App mode), not both"
                    .to_owned(),
            );
        }
        if self.app_id.is_none() {
            for (field, set) in [
                ("private_key", self.private_key.is_some()),
                ("private_key_file", self.private_key_file.is_some()),
                ("installation_id", self.installation_id.is_some()),
            ] {
                if set {
                    return Err(format!("{field} is GitHub App mode: it needs app_id"));
                }
            }
        }
        self.app_key().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_appears_in_debug() {
        let config = GitHubConfig {
            token: Some(SecretString::from("ghp_supersecret")),
            private_key: Some(SecretString::from("-----BEGIN PRIVATE KEY-----keysecret")),
            ..GitHubConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(!debug.contains("keysecret"), "{debug}");
    }

    #[test]
    fn token_and_app_are_exclusive_and_app_fields_need_app_id() {
        let both = GitHubConfig {
            token: Some(SecretString::from("t")),
            app_id: Some(1),
            private_key: Some(SecretString::from("x")),
            ..GitHubConfig::default()
        };
        assert!(both.validate().unwrap_err().contains("mutually exclusive"));

        let orphan = GitHubConfig {
            installation_id: Some(7),
            ..GitHubConfig::default()
        };
        assert_eq!(
            orphan.validate().unwrap_err(),
            "installation_id is GitHub App mode: it needs app_id"
        );

        let keyless = GitHubConfig {
            app_id: Some(1),
            ..GitHubConfig::default()
        };
        assert!(keyless.validate().unwrap_err().contains("private_key_file"));

        let two_keys = GitHubConfig {
            app_id: Some(1),
            private_key: Some(SecretString::from("x")),
            private_key_file: Some("/nonexistent".into()),
            ..GitHubConfig::default()
        };
        assert!(two_keys.validate().unwrap_err().contains("not both"));
        assert!(GitHubConfig::default().validate().is_ok());
    }

    #[test]
    fn a_bad_key_is_named_by_field_and_never_printed() {
        let config = GitHubConfig {
            app_id: Some(1),
            private_key: Some(SecretString::from(
                "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5IHNlY3JldHNlY3JldA==\n-----END RSA PRIVATE KEY-----\n",
            )),
            ..GitHubConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.starts_with("private_key: "), "{err}");
        assert!(!err.contains("bm90IGEga2V5"), "{err}");

        let missing = GitHubConfig {
            app_id: Some(1),
            private_key_file: Some("/nonexistent/app.pem".into()),
            ..GitHubConfig::default()
        };
        let err = missing.validate().unwrap_err();
        assert!(
            err.starts_with("private_key_file /nonexistent/app.pem: cannot read"),
            "{err}"
        );
    }
}
