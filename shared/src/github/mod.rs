//! The one GitHub REST client every service uses (contents, compare, statuses): token or
//! GitHub App authentication ([`app`]), configurable base URL (GitHub Enterprise, test
//! servers), and retries that honour GitHub's `Retry-After` and `X-RateLimit-Reset` headers.
//!
//! In App mode the credential follows the request path: `/repos/{owner}/{repo}/...` uses that
//! repository's installation token, `/app/...` the App's JWT, anything else the configured
//! installation (`installation_id`) or the one named with [`GitHubClient::for_installation`].

pub mod app;
mod config;
mod error;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

use self::app::{
    AppKey, InstallationIndex, InstallationToken, Route, TOKEN_REFRESH_MARGIN, TokenCache,
};
pub use self::config::GitHubConfig;
pub use self::error::GitHubError;
use crate::retry::{self, Backoff};

/// A GitHub REST client. Clones share the App's token cache.
#[derive(Clone)]
pub struct GitHubClient {
    http: reqwest::Client,
    api_url: String,
    auth: Auth,
    /// The installation named by [`GitHubClient::for_installation`] (App mode).
    installation: Option<u64>,
    backoff: Backoff,
}

#[derive(Clone)]
enum Auth {
    /// Local mode: no `Authorization` header.
    Anonymous,
    Token(SecretString),
    App(Arc<App>),
}

/// App mode's key and caches.
#[derive(Debug)]
struct App {
    key: AppKey,
    /// `[github] installation_id`.
    installation_id: Option<u64>,
    tokens: TokenCache,
    repositories: InstallationIndex,
}

/// What one request is sent with.
enum Credential {
    None,
    Bearer(SecretString),
    /// An installation token, which a 401 invalidates.
    Installation {
        id: u64,
        token: SecretString,
    },
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Anonymous => "anonymous".to_owned(),
            Auth::Token(_) => "token [redacted]".to_owned(),
            Auth::App(app) => format!("app {}", app.key.app_id()),
        };
        f.debug_struct("GitHubClient")
            .field("api_url", &self.api_url)
            .field("auth", &auth)
            .field("installation", &self.installation)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// `POST /app/installations/{id}/access_tokens`'s answer.
#[derive(Deserialize)]
struct AccessToken {
    token: SecretString,
    expires_at: String,
}

/// `GET /repos/{owner}/{repo}/installation`'s answer.
#[derive(Deserialize)]
struct Installation {
    id: u64,
}

impl GitHubClient {
    /// A client of `config` (validated: in App mode the key is read and checked here).
    pub fn new(config: GitHubConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .build()?;
        let auth = match (config.app_key().map_err(anyhow::Error::msg)?, config.token) {
            (Some(key), None) => Auth::App(Arc::new(App {
                key,
                installation_id: config.installation_id,
                tokens: TokenCache::new(TOKEN_REFRESH_MARGIN),
                repositories: InstallationIndex::default(),
            })),
            (None, Some(token)) => Auth::Token(token),
            (None, None) => Auth::Anonymous,
            (Some(_), Some(_)) => {
                anyhow::bail!("[github] token and app_id are mutually exclusive")
            }
        };
        Ok(Self {
            http,
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            auth,
            installation: None,
            backoff: Backoff::default(),
        })
    }

    /// Overrides the retry policy (tests use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// This client acting for App installation `installation` (e.g. a webhook's
    /// `installation.id`): every call but `/app/...` uses that installation's token, without
    /// looking the installation up. Shares the token cache. In token and local mode calls are
    /// unchanged.
    pub fn for_installation(&self, installation: u64) -> Self {
        Self {
            installation: Some(installation),
            ..self.clone()
        }
    }

    /// GET `path` (e.g. `/repos/o/r/contents/buildspec.yml?ref=sha`) and decode JSON, retrying
    /// transient failures.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, GitHubError> {
        self.send_json(reqwest::Method::GET, path, None).await
    }

    /// GET one page of a paged list (e.g. `/app/hook/deliveries?per_page=100`) and decode it,
    /// retrying transient failures. Also returns the path of the next page, from the `Link`
    /// header's `rel="next"` (GitHub's cursor paging), when there is one on this API host.
    pub async fn get_json_page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Option<String>), GitHubError> {
        retry::retry(
            &self.backoff,
            |_| async {
                let response = self.respond(reqwest::Method::GET, path, None).await?;
                let next = response
                    .headers()
                    .get(reqwest::header::LINK)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|link| next_page(link, &self.api_url));
                Ok((decode(response, path).await?, next))
            },
            GitHubError::retry,
        )
        .await
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

    /// POST `body` to `path` once and decode the JSON answer: for a creation, where sending
    /// again after an answer was lost (a timeout, a 502 from a proxy) could create a second
    /// one. The caller looks for what it may have created before it tries again.
    pub async fn create_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, GitHubError> {
        self.attempt(reqwest::Method::POST, path, Some(body)).await
    }

    /// PATCH `body` to `path` and decode the JSON answer, retrying transient failures.
    pub async fn patch_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, GitHubError> {
        self.send_json(reqwest::Method::PATCH, path, Some(body))
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
            |_| self.attempt(method.clone(), path, body),
            GitHubError::retry,
        )
        .await
    }

    /// One call; in App mode a 401 on an installation token replaces the token once.
    async fn attempt<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, GitHubError> {
        let response = self.respond(method, path, body).await?;
        decode(response, path).await
    }

    /// One call's response, not yet decoded (see [`Self::attempt`]).
    async fn respond(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, GitHubError> {
        let credential = self.credential(path).await?;
        let mut response = self.send(method.clone(), path, body, &credential).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && let (Auth::App(app), Credential::Installation { id, token }) =
                (&self.auth, &credential)
        {
            tracing::info!(
                installation = id,
                path,
                "GitHub refused the installation token, minting a new one"
            );
            app.tokens.invalidate(*id, token).await;
            let credential = self.credential(path).await?;
            response = self.send(method, path, body, &credential).await?;
        }
        Ok(response)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        credential: &Credential,
    ) -> Result<reqwest::Response, GitHubError> {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.api_url, path))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        match credential {
            Credential::None => {}
            Credential::Bearer(token) | Credential::Installation { token, .. } => {
                request = request.bearer_auth(token.expose_secret());
            }
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .map_err(|source| GitHubError::Transport {
                path: path.to_owned(),
                source,
            })
    }

    /// The credential `path` needs.
    async fn credential(&self, path: &str) -> Result<Credential, GitHubError> {
        let app = match &self.auth {
            Auth::Anonymous => return Ok(Credential::None),
            Auth::Token(token) => return Ok(Credential::Bearer(token.clone())),
            Auth::App(app) => app,
        };
        let given = self.installation.or(app.installation_id);
        let (installation, looked_up) = match (Route::of(path), given) {
            (Route::App, _) => return Ok(Credential::Bearer(self.jwt(app, path)?)),
            (_, Some(id)) => (id, None),
            (Route::Repository(repository), None) => {
                let id = app
                    .repositories
                    .get_or_lookup(&repository, || {
                        self.lookup_installation(app, &repository, path)
                    })
                    .await?;
                (id, Some(repository))
            }
            (Route::Other, None) => {
                return Err(GitHubError::NoInstallation {
                    path: path.to_owned(),
                });
            }
        };
        let token = app
            .tokens
            .get_or_mint(installation, || self.mint(app, installation, path))
            .await
            .inspect_err(|err| {
                // The installation is gone (the App was reinstalled): the next call looks the
                // repository's installation up again.
                if let (GitHubError::InstallationToken { source, .. }, Some(repository)) =
                    (err, &looked_up)
                    && source.status() == Some(404)
                {
                    app.repositories.forget(repository);
                }
            })?;
        Ok(Credential::Installation {
            id: installation,
            token,
        })
    }

    fn jwt(&self, app: &App, path: &str) -> Result<SecretString, GitHubError> {
        app.key
            .jwt(OffsetDateTime::now_utc())
            .map_err(|e| GitHubError::Jwt {
                path: path.to_owned(),
                reason: e.to_string(),
            })
    }

    /// `GET /repos/{owner}/{repo}/installation` with the JWT.
    async fn lookup_installation(
        &self,
        app: &App,
        repository: &str,
        path: &str,
    ) -> Result<u64, GitHubError> {
        let lookup = format!("/repos/{repository}/installation");
        let answer = async {
            let jwt = Credential::Bearer(self.jwt(app, &lookup)?);
            let response = self.send(reqwest::Method::GET, &lookup, None, &jwt).await?;
            decode::<Installation>(response, &lookup).await
        };
        answer
            .await
            .map(|installation| installation.id)
            .map_err(|source| GitHubError::Installation {
                repository: repository.to_owned(),
                path: path.to_owned(),
                source: Box::new(source),
            })
    }

    /// `POST /app/installations/{id}/access_tokens` with the JWT.
    async fn mint(
        &self,
        app: &App,
        installation: u64,
        path: &str,
    ) -> Result<InstallationToken, GitHubError> {
        let mint = format!("/app/installations/{installation}/access_tokens");
        let answer = async {
            let jwt = Credential::Bearer(self.jwt(app, &mint)?);
            let response = self.send(reqwest::Method::POST, &mint, None, &jwt).await?;
            let token = decode::<AccessToken>(response, &mint).await?;
            let expires_at = OffsetDateTime::parse(
                &token.expires_at,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| GitHubError::InvalidAnswer {
                path: mint.clone(),
                reason: format!("the token's expires_at is not an RFC 3339 time: {e}"),
            })?;
            tracing::debug!(installation, %expires_at, "minted a GitHub App installation token");
            Ok(InstallationToken {
                token: token.token,
                expires_at,
            })
        };
        answer
            .await
            .map_err(|source| GitHubError::InstallationToken {
                installation,
                path: path.to_owned(),
                source: Box::new(source),
            })
    }
}

/// A success's JSON body, or the status as an error.
async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    path: &str,
) -> Result<T, GitHubError> {
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

/// The path (with query) of a `Link` header's `rel="next"` page, when it is on `api_url`
/// (another host's URL is not followed: the client's credentials are for `api_url` only).
fn next_page(link: &str, api_url: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        let path = url.strip_prefix(api_url)?;
        (is_next && path.starts_with('/')).then(|| path.to_owned())
    })
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
    fn the_next_page_comes_from_the_link_header() {
        let api = "https://api.github.com";
        let link = "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_13>; rel=\"next\", <https://api.github.com/app/hook/deliveries?per_page=2>; rel=\"first\"";
        assert_eq!(
            next_page(link, api).as_deref(),
            Some("/app/hook/deliveries?per_page=2&cursor=v1_13")
        );
        let first_only = "<https://api.github.com/app/hook/deliveries?per_page=2>; rel=\"first\"";
        assert_eq!(next_page(first_only, api), None);
        // Another host is not followed.
        let elsewhere = "<https://evil.example/app/hook/deliveries?cursor=x>; rel=\"next\"";
        assert_eq!(next_page(elsewhere, api), None);
        assert_eq!(next_page("garbage", api), None);
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
    fn the_client_debug_hides_the_token() {
        let client = GitHubClient::new(GitHubConfig {
            token: Some(SecretString::from("ghp_supersecret")),
            ..GitHubConfig::default()
        })
        .unwrap();
        let debug = format!("{client:?}");
        assert!(debug.contains("token [redacted]"), "{debug}");
        assert!(!debug.contains("supersecret"), "{debug}");
    }
}
