//! How a GitHub call failed. No variant carries a token, a JWT or a key.

use std::time::Duration;

use crate::retry::Retry;

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
    /// GitHub's answer decoded but does not make sense (e.g. a token's `expires_at` that is not
    /// a time).
    #[error("GitHub's answer for {path} is invalid: {reason}")]
    InvalidAnswer { path: String, reason: String },
    /// App mode: the App's JWT could not be signed.
    #[error("cannot sign the GitHub App's JWT for {path}: {reason}")]
    Jwt { path: String, reason: String },
    /// App mode: the installation of the repository of `path` is unknown (the App is not
    /// installed there, or GitHub refused the App's JWT).
    #[error("cannot find the GitHub App's installation for {repository} (for {path})")]
    Installation {
        repository: String,
        path: String,
        #[source]
        source: Box<GitHubError>,
    },
    /// App mode: no installation token for `installation` (GitHub refused the App's JWT with
    /// 401: wrong app_id or private key; 404: no such installation).
    #[error("cannot get a token of GitHub App installation {installation} (for {path})")]
    InstallationToken {
        installation: u64,
        path: String,
        #[source]
        source: Box<GitHubError>,
    },
    /// App mode: `path` is neither a repository's nor the App's, and no installation was
    /// configured (`installation_id`) or given ([`super::GitHubClient::for_installation`]).
    #[error("no GitHub App installation for {path}: set installation_id or name one")]
    NoInstallation { path: String },
}

impl GitHubError {
    /// The HTTP status, if GitHub answered the call itself (not an App-authentication step).
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
            Self::Installation { source, .. } | Self::InstallationToken { source, .. } => {
                source.retry_after()
            }
            _ => None,
        }
    }

    /// Worth retrying: network errors, 5xx, 429 and rate-limit 403s (also of the
    /// App-authentication steps).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status {
                status,
                retry_after,
                ..
            } => *status >= 500 || *status == 429 || (*status == 403 && retry_after.is_some()),
            Self::Transport { .. } => true,
            Self::Installation { source, .. } | Self::InstallationToken { source, .. } => {
                source.is_transient()
            }
            Self::Decode { .. }
            | Self::InvalidAnswer { .. }
            | Self::Jwt { .. }
            | Self::NoInstallation { .. } => false,
        }
    }

    pub(crate) fn retry(&self) -> Retry {
        match self.retry_after() {
            Some(after) if self.is_transient() => Retry::After(after),
            _ if self.is_transient() => Retry::Backoff,
            _ => Retry::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let minting = |source| GitHubError::InstallationToken {
            installation: 1,
            path: "/repos/o/r".into(),
            source: Box::new(source),
        };
        assert!(minting(status(503, None)).is_transient());
        assert!(!minting(status(401, None)).is_transient());
        assert_eq!(minting(status(404, None)).status(), None);
        assert_eq!(
            minting(status(429, Some(Duration::from_secs(3)))).retry(),
            Retry::After(Duration::from_secs(3))
        );
    }
}
