//! The one GitHub REST client every service uses (contents, compare, statuses): token auth,
//! configurable base URL (GitHub Enterprise, test servers), and retries that honour GitHub's
//! `Retry-After` and `X-RateLimit-Reset` headers.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::config::Validate;
use crate::retry::{self, Backoff, Retry};

/// Access to GitHub (section `[github]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitHubConfig {
    /// REST API base URL. Default `https://api.github.com` (GitHub Enterprise:
    /// `https://<host>/api/v3`).
    pub api_url: String,
    /// Token with read access to the organisation's repositories (and `repo:status` for commit
    /// statuses). Default: none (local mode).
    pub token: Option<SecretString>,
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
            .field("user_agent", &self.user_agent)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Validate for GitHubConfig {
    fn validate(&self) -> Result<(), String> {
        url::Url::parse(&self.api_url).map_err(|e| format!("api_url: {e}"))?;
        Ok(())
    }
}

/// How a GitHub call failed.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// GitHub answered with a status the caller may act on (404 = not there).
    #[error("GitHub answered {status} for {path}")]
    Status {
        status: u16,
        path: String,
        /// Server-requested wait (Retry-After / rate-limit reset), if any.
        retry_after: Option<Duration>,
    },
    #[error("cannot reach GitHub for {path}")]
    Transport {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot decode GitHub's answer for {path}")]
    Decode {
        path: String,
        #[source]
        source: reqwest::Error,
    },
}

impl GitHubError {
    /// The HTTP status, if GitHub answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The wait GitHub asked for (`Retry-After`, or until `X-RateLimit-Reset`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth retrying: network errors, 5xx, 429 and rate-limit 403s.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status {
                status,
                retry_after,
                ..
            } => *status >= 500 || *status == 429 || (*status == 403 && retry_after.is_some()),
            Self::Transport { .. } => true,
            Self::Decode { .. } => false,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            Self::Status {
                retry_after: Some(after),
                ..
            } if self.is_transient() => Retry::After(*after),
            _ if self.is_transient() => Retry::Backoff,
            _ => Retry::Never,
        }
    }
}

/// A GitHub REST client.
#[derive(Debug, Clone)]
pub struct GitHubClient {
    http: reqwest::Client,
    config: GitHubConfig,
    backoff: Backoff,
}

impl GitHubClient {
    pub fn new(config: GitHubConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .build()?;
        Ok(Self {
            http,
            config,
            backoff: Backoff::default(),
        })
    }

    /// Overrides the retry policy (tests use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.config.api_url.trim_end_matches('/'), path);
        let mut request = self
            .http
            .request(method, url)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token.expose_secret());
        }
        request
    }

    /// GET `path` (e.g. `/repos/o/r/contents/buildspec.yml?ref=sha`) and decode JSON, retrying
    /// transient failures.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, GitHubError> {
        self.send_json(reqwest::Method::GET, path, None).await
    }

    /// POST `body` to `path` and decode the JSON answer, retrying transient failures.
    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, GitHubError> {
        self.send_json(reqwest::Method::POST, path, Some(body))
            .await
    }

    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, GitHubError> {
        retry::retry(
            &self.backoff,
            |_| {
                let mut request = self.request(method.clone(), path);
                if let Some(body) = body {
                    request = request.json(body);
                }
                async move {
                    let response =
                        request
                            .send()
                            .await
                            .map_err(|source| GitHubError::Transport {
                                path: path.to_owned(),
                                source,
                            })?;
                    let status = response.status();
                    if !status.is_success() {
                        return Err(GitHubError::Status {
                            status: status.as_u16(),
                            path: path.to_owned(),
                            retry_after: retry_after(response.headers()),
                        });
                    }
                    response
                        .json::<T>()
                        .await
                        .map_err(|source| GitHubError::Decode {
                            path: path.to_owned(),
                            source,
                        })
                }
            },
            GitHubError::retry,
        )
        .await
    }
}

/// The wait GitHub asks for: `Retry-After` seconds, or (rate limit exhausted) until
/// `X-RateLimit-Reset`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(after) = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(retry::parse_retry_after)
    {
        return Some(after);
    }
    let remaining = headers.get("x-ratelimit-remaining")?.to_str().ok()?;
    if remaining.trim() != "0" {
        return None;
    }
    let reset: i64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some(Duration::from_secs(
        u64::try_from(reset - now).unwrap_or(0).max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_appears_in_debug() {
        let config = GitHubConfig {
            token: Some(SecretString::from("ghp_supersecret")),
            ..GitHubConfig::default()
        };
        assert!(!format!("{config:?}").contains("supersecret"));
    }

    #[test]
    fn rate_limit_headers_give_the_wait() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));

        let mut headers = reqwest::header::HeaderMap::new();
        let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 30;
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28));

        headers.insert("x-ratelimit-remaining", "12".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn transient_classification() {
        let status = |status, retry_after| GitHubError::Status {
            status,
            path: "/x".into(),
            retry_after,
        };
        assert!(status(502, None).is_transient());
        assert!(status(429, None).is_transient());
        assert!(status(403, Some(Duration::from_secs(1))).is_transient());
        assert!(!status(403, None).is_transient());
        assert!(!status(404, None).is_transient());
    }
}
