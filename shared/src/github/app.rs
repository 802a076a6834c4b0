//! GitHub App authentication, the parts without I/O: the App's JWT, which credential a request
//! path needs, and the per-installation token cache (one refresh at a time per installation,
//! refreshed [`TOKEN_REFRESH_MARGIN`] before expiry).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use time::OffsetDateTime;

/// The JWT's `iat` is this far in the past (clock drift between us and GitHub).
pub const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// The JWT's `exp` is this far in the future (GitHub accepts at most 10 minutes).
pub const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// An installation token is replaced this long before its `expires_at`.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The App's id and signing key.
pub(crate) struct AppKey {
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey")
            .field("app_id", &self.app_id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The claims GitHub reads from an App JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Claims {
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

impl Claims {
    /// The claims of a JWT made at `now`.
    pub fn at(app_id: u64, now: OffsetDateTime) -> Self {
        let now = now.unix_timestamp();
        Self {
            iat: now - JWT_BACKDATE.as_secs() as i64,
            exp: now + JWT_LIFETIME.as_secs() as i64,
            iss: app_id.to_string(),
        }
    }
}

impl AppKey {
    /// Parses `pem` (PKCS#1 or PKCS#8) and proves it signs. The error never contains the key.
    pub fn from_pem(app_id: u64, pem: &SecretString) -> Result<Self, String> {
        let text = pem.expose_secret();
        // Environment variables often carry the PEM with `\n` escapes instead of line breaks.
        let text = if text.contains('\n') {
            SecretString::from(text.to_owned())
        } else {
            SecretString::from(text.replace("\\n", "\n"))
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(text.expose_secret().as_bytes())
            .map_err(|e| format!("not an RSA private key in PEM form ({e})"))?;
        let key = Self { app_id, key };
        key.jwt(OffsetDateTime::now_utc())
            .map_err(|e| format!("not a usable RSA private key ({e})"))?;
        Ok(key)
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A JWT made at `now` (RS256).
    pub fn jwt(&self, now: OffsetDateTime) -> Result<SecretString, jsonwebtoken::errors::Error> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &Claims::at(self.app_id, now), &self.key)
            .map(SecretString::from)
    }
}

/// Which credential a request path needs in App mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/repos/{owner}/{repo}/...`: that repository's installation token. The key is
    /// `owner/repo` in lower case (GitHub's names are case-insensitive).
    Repository(String),
    /// `/app` and `/app/...`: the App's JWT.
    App,
    /// Anything else: the configured (or given) installation's token.
    Other,
}

impl Route {
    pub fn of(path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let mut segments = path.trim_start_matches('/').split('/');
        match segments.next() {
            Some("app") => Self::App,
            Some("repos") => match (segments.next(), segments.next()) {
                (Some(owner), Some(repo)) if !owner.is_empty() && !repo.is_empty() => {
                    Self::Repository(format!("{owner}/{repo}").to_lowercase())
                }
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

/// An installation token and when GitHub says it expires.
#[derive(Clone)]
pub(crate) struct InstallationToken {
    pub token: SecretString,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl InstallationToken {
    /// Still good for use at `now`: more than `margin` before it expires.
    pub fn is_fresh(&self, now: OffsetDateTime, margin: Duration) -> bool {
        now + margin < self.expires_at
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<InstallationToken>>>;

/// Installation tokens by installation. A refresh holds the installation's slot, so callers
/// that need the token meanwhile wait for it instead of minting their own.
#[derive(Debug)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<u64, Slot>>,
    margin: Duration,
}

impl TokenCache {
    pub fn new(margin: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            margin,
        }
    }

    fn slot(&self, installation: u64) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(installation)
            .or_default()
            .clone()
    }

    /// The cached token of `installation` if fresh, else one from `mint` (cached).
    pub async fn get_or_mint<E, F, Fut>(
        &self,
        installation: u64,
        mint: F,
    ) -> Result<SecretString, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<InstallationToken, E>>,
    {
        let slot = self.slot(installation);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref()
            && token.is_fresh(OffsetDateTime::now_utc(), self.margin)
        {
            return Ok(token.token.clone());
        }
        let token = mint().await?;
        let secret = token.token.clone();
        *cached = Some(token);
        Ok(secret)
    }

    /// Forgets `installation`'s token if it still is `used` (GitHub refused it); a token
    /// another caller minted since stays.
    pub async fn invalidate(&self, installation: u64, used: &SecretString) {
        let slot = self.slot(installation);
        let mut cached = slot.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.token.expose_secret() == used.expose_secret())
        {
            *cached = None;
        }
    }
}

/// The installation of each repository, looked up once (concurrent first callers share one
/// lookup; a failed lookup is tried again by the next caller).
#[derive(Debug, Default)]
pub(crate) struct InstallationIndex {
    repositories: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<u64>>>>,
}

impl InstallationIndex {
    pub async fn get_or_lookup<E, F, Fut>(&self, repository: &str, lookup: F) -> Result<u64, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
    {
        let cell = self
            .repositories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(repository.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(lookup).await.copied()
    }

    /// Forgets `repository`'s installation (the App was reinstalled there: look it up again).
    pub fn forget(&self, repository: &str) {
        self.repositories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(repository);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn routes_by_path() {
        assert_eq!(
            Route::of("/repos/Octo/Hello/contents/buildspec.yml?ref=abc"),
            Route::Repository("octo/hello".into())
        );
        assert_eq!(Route::of("/repos/o/r"), Route::Repository("o/r".into()));
        assert_eq!(Route::of("/app/installations/3/access_tokens"), Route::App);
        assert_eq!(Route::of("/app"), Route::App);
        assert_eq!(Route::of("/app?x=1"), Route::App);
        assert_eq!(Route::of("/applications/x"), Route::Other);
        assert_eq!(Route::of("/installation/repositories"), Route::Other);
        assert_eq!(Route::of("/repos/o"), Route::Other);
    }

    #[test]
    fn jwt_claims_are_backdated_and_short_lived() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(
            Claims::at(42, now),
            Claims {
                iat: 1_000_000 - 60,
                exp: 1_000_000 + 540,
                iss: "42".into()
            }
        );
    }

    #[test]
    fn freshness_keeps_the_margin() {
        let now = OffsetDateTime::now_utc();
        let token = |left: i64| InstallationToken {
            token: SecretString::from("t"),
            expires_at: now + time::Duration::seconds(left),
        };
        assert!(token(3600).is_fresh(now, TOKEN_REFRESH_MARGIN));
        assert!(!token(299).is_fresh(now, TOKEN_REFRESH_MARGIN));
        assert!(!token(-1).is_fresh(now, Duration::ZERO));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_mint_and_invalidation_is_of_the_used_token() {
        let cache = Arc::new(TokenCache::new(TOKEN_REFRESH_MARGIN));
        let mints = Arc::new(AtomicU32::new(0));
        let mint = |mints: Arc<AtomicU32>| async move {
            let n = mints.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, String>(InstallationToken {
                token: SecretString::from(format!("token-{n}")),
                expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
            })
        };
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, mints) = (cache.clone(), mints.clone());
                tokio::spawn(async move { cache.get_or_mint(7, || mint(mints)).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().expose_secret(), "token-0");
        }
        assert_eq!(mints.load(Ordering::SeqCst), 1);

        // A stale refusal does not drop a newer token.
        cache.invalidate(7, &SecretString::from("other")).await;
        let again = cache.get_or_mint(7, || mint(mints.clone())).await.unwrap();
        assert_eq!(again.expose_secret(), "token-0");
        cache.invalidate(7, &again).await;
        let new = cache.get_or_mint(7, || mint(mints.clone())).await.unwrap();
        assert_eq!(new.expose_secret(), "token-1");
    }
}
