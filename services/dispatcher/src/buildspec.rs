//! The buildspec lookup port: `buildspec.yml` at a commit, from GitHub's contents API
//! (production) or from a local git repository named by a `file://` clone URL (`prx-ci up`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prx_ci_shared::domain::{CommitSha, RepoName};
use prx_ci_shared::github::{GitHubClient, GitHubError};
use serde::Deserialize;

/// The file looked up: only this name, at the repository root (as the original).
pub const BUILDSPEC_FILE: &str = "buildspec.yml";

/// What to look up.
#[derive(Debug, Clone, Copy)]
pub struct BuildspecRequest<'a> {
    pub repository: &'a RepoName,
    pub commit: &'a CommitSha,
    pub clone_url: &'a str,
}

/// What the lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buildspec {
    /// The file's text.
    Found(String),
    /// No such file at the commit: the repository is not enrolled (a skip, not an error).
    NotFound { detail: String },
    /// The file exists but cannot be used as text (not UTF-8, too large for the API).
    Unreadable { detail: String },
}

/// Why a lookup failed (the webhook is retried, then parked with this error).
#[derive(Debug, thiserror::Error)]
pub enum BuildspecError {
    /// May work later (GitHub outage after the client's own retries, rate limit, git busy).
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Will not work for this event (a clone URL this source cannot read).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// Looks up `buildspec.yml` at a commit.
#[async_trait::async_trait]
pub trait BuildspecSource: Send + Sync + std::fmt::Debug + 'static {
    async fn fetch(&self, request: BuildspecRequest<'_>) -> Result<Buildspec, BuildspecError>;
}

/// Path segment encoding for owner and repository names.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// `GET /repos/{owner}/{repo}/contents/buildspec.yml?ref={sha}` through the shared client,
/// which retries 5xx and rate limits (honouring `Retry-After` / `X-RateLimit-Reset`).
#[derive(Debug, Clone)]
pub struct GitHubBuildspecSource {
    client: GitHubClient,
}

#[derive(Deserialize)]
struct ContentsResponse {
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
}

impl GitHubBuildspecSource {
    pub fn new(client: GitHubClient) -> Self {
        Self { client }
    }

    /// The API path of the buildspec of `repository` at `commit`.
    pub fn path(repository: &RepoName, commit: &CommitSha) -> String {
        format!(
            "/repos/{}/{}/contents/{BUILDSPEC_FILE}?ref={}",
            utf8_percent_encode(repository.owner(), SEGMENT),
            utf8_percent_encode(repository.name(), SEGMENT),
            commit
        )
    }
}

#[async_trait::async_trait]
impl BuildspecSource for GitHubBuildspecSource {
    async fn fetch(&self, request: BuildspecRequest<'_>) -> Result<Buildspec, BuildspecError> {
        let path = Self::path(request.repository, request.commit);
        let response: ContentsResponse = match self.client.get_json(&path).await {
            Ok(response) => response,
            Err(GitHubError::Status { status: 404, .. }) => {
                return Ok(Buildspec::NotFound {
                    detail: format!(
                        "GitHub has no {BUILDSPEC_FILE} in {} at {} (404)",
                        request.repository, request.commit
                    ),
                });
            }
            Err(err) => {
                return Err(BuildspecError::Transient(
                    anyhow::Error::new(err).context("cannot fetch buildspec.yml from GitHub"),
                ));
            }
        };
        if response.kind != "file" && !response.kind.is_empty() {
            return Ok(Buildspec::Unreadable {
                detail: format!("{BUILDSPEC_FILE} is a {}, not a file", response.kind),
            });
        }
        if response.encoding != "base64" {
            return Ok(Buildspec::Unreadable {
                detail: format!(
                    "GitHub returned {BUILDSPEC_FILE} ({} bytes) with encoding {:?}, not base64 \
                     (files over 1 MB are not inlined)",
                    response.size, response.encoding
                ),
            });
        }
        // GitHub wraps the base64 text in lines.
        let compact: String = response
            .content
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let bytes = match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => bytes,
            Err(err) => {
                return Err(BuildspecError::Transient(anyhow::anyhow!(
                    "GitHub returned undecodable base64 for {BUILDSPEC_FILE}: {err}"
                )));
            }
        };
        text(bytes)
    }
}

fn text(bytes: Vec<u8>) -> Result<Buildspec, BuildspecError> {
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Buildspec::Found(text),
        Err(_) => Buildspec::Unreadable {
            detail: format!("{BUILDSPEC_FILE} is not UTF-8 text"),
        },
    })
}

/// `git cat-file` in the repository a `file://` clone URL names (a bare repository or a working
/// tree): the embedded default of `prx-ci up`, where webhooks point at local repositories.
#[derive(Debug, Clone, Default)]
pub struct LocalGitBuildspecSource {
    git: Option<PathBuf>,
}

impl LocalGitBuildspecSource {
    /// Uses `git` from `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this `git` binary.
    pub fn with_git(git: PathBuf) -> Self {
        Self { git: Some(git) }
    }

    async fn git(
        &self,
        repo: &Path,
        args: &[&str],
    ) -> Result<std::process::Output, BuildspecError> {
        let program = self.git.as_deref().unwrap_or(Path::new("git"));
        tokio::process::Command::new(program)
            .arg("-C")
            .arg(repo)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|err| {
                BuildspecError::Transient(
                    anyhow::Error::new(err).context(format!("cannot run {}", program.display())),
                )
            })
    }
}

/// The local path of a `file://` URL.
pub fn local_path(clone_url: &str) -> Result<PathBuf, String> {
    let url = url::Url::parse(clone_url).map_err(|e| format!("clone URL {clone_url:?}: {e}"))?;
    if url.scheme() != "file" {
        return Err(format!(
            "clone URL {clone_url:?} is not a file:// URL (the local buildspec source reads \
             local repositories only)"
        ));
    }
    url.to_file_path()
        .map_err(|()| format!("clone URL {clone_url:?} has no local path"))
}

#[async_trait::async_trait]
impl BuildspecSource for LocalGitBuildspecSource {
    async fn fetch(&self, request: BuildspecRequest<'_>) -> Result<Buildspec, BuildspecError> {
        let repo = local_path(request.clone_url)
            .map_err(|e| BuildspecError::Permanent(anyhow::anyhow!(e)))?;
        if !repo.exists() {
            return Err(BuildspecError::Transient(anyhow::anyhow!(
                "local repository {} does not exist",
                repo.display()
            )));
        }
        let commit = format!("{}^{{commit}}", request.commit);
        let found = self
            .git(&repo, &["rev-parse", "--verify", "--quiet", &commit])
            .await?;
        if !found.status.success() {
            // The commit is not (yet) there: an error an operator can see, not a silent skip.
            return Err(BuildspecError::Transient(anyhow::anyhow!(
                "commit {} is not in {}",
                request.commit,
                repo.display()
            )));
        }
        let object = format!("{}:{BUILDSPEC_FILE}", request.commit);
        let exists = self.git(&repo, &["cat-file", "-e", &object]).await?;
        if !exists.status.success() {
            return Ok(Buildspec::NotFound {
                detail: format!(
                    "no {BUILDSPEC_FILE} in {} at {}",
                    repo.display(),
                    request.commit
                ),
            });
        }
        let blob = self.git(&repo, &["cat-file", "blob", &object]).await?;
        if !blob.status.success() {
            return Err(BuildspecError::Transient(anyhow::anyhow!(
                "git cat-file {object} failed in {}: {}",
                repo.display(),
                String::from_utf8_lossy(&blob.stderr).trim()
            )));
        }
        text(blob.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_path_encodes_segments() {
        let repo = RepoName::parse("PRX/my.app").unwrap();
        let sha = CommitSha::parse(&"a".repeat(40)).unwrap();
        assert_eq!(
            GitHubBuildspecSource::path(&repo, &sha),
            format!(
                "/repos/PRX/my.app/contents/buildspec.yml?ref={}",
                "a".repeat(40)
            )
        );
        let odd = RepoName::parse("o w/r?x").unwrap();
        assert!(GitHubBuildspecSource::path(&odd, &sha).starts_with("/repos/o%20w/r%3Fx/"));
    }

    #[test]
    fn only_file_urls_are_local() {
        assert_eq!(
            local_path("file:///tmp/repo.git").unwrap(),
            PathBuf::from("/tmp/repo.git")
        );
        assert!(local_path("https://github.com/PRX/app.git").is_err());
        assert!(local_path("not a url").is_err());
    }
}
