//! The commits of a push, from GitHub's compare API (`before...after`), behind a port so tests
//! and local mode can do without GitHub.

use async_trait::async_trait;
use prx_ci_shared::github::{GitHubClient, GitHubError};
use prx_ci_shared::notice::render::{CommitSummary, CommitsCache};
use serde::Deserialize;

/// Why commits could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot compare {range} in {repository}: {source}")]
pub struct CommitSourceError {
    pub repository: String,
    pub range: String,
    #[source]
    pub source: anyhow::Error,
}

/// Lists the commits between two SHAs.
#[async_trait]
pub trait CommitSource: Send + Sync + std::fmt::Debug {
    /// At most `per_page` commits of `before...after` in `repository` (`owner/repo`).
    async fn compare(
        &self,
        repository: &str,
        before: &str,
        after: &str,
        per_page: u32,
    ) -> Result<CommitsCache, CommitSourceError>;
}

/// GitHub's compare API through the shared client (retries 5xx and rate limits).
#[derive(Debug, Clone)]
pub struct GitHubCommitSource {
    client: GitHubClient,
}

impl GitHubCommitSource {
    pub fn new(client: GitHubClient) -> Self {
        Self { client }
    }
}

#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    total_commits: u64,
    #[serde(default)]
    commits: Vec<CompareCommit>,
}

#[derive(Deserialize)]
struct CompareCommit {
    sha: String,
    commit: GitCommit,
    /// Null when the git author is not a GitHub user (the original crashed on that).
    author: Option<GitHubUser>,
}

#[derive(Deserialize)]
struct GitCommit {
    #[serde(default)]
    message: String,
    author: Option<GitAuthor>,
}

#[derive(Deserialize)]
struct GitAuthor {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct GitHubUser {
    login: String,
}

#[async_trait]
impl CommitSource for GitHubCommitSource {
    async fn compare(
        &self,
        repository: &str,
        before: &str,
        after: &str,
        per_page: u32,
    ) -> Result<CommitsCache, CommitSourceError> {
        let path = format!("/repos/{repository}/compare/{before}...{after}?per_page={per_page}");
        let comparison: Comparison =
            self.client
                .get_json(&path)
                .await
                .map_err(|err: GitHubError| CommitSourceError {
                    repository: repository.to_owned(),
                    range: format!("{before}...{after}"),
                    source: err.into(),
                })?;
        let commits: Vec<CommitSummary> = comparison
            .commits
            .into_iter()
            .take(per_page as usize)
            .map(|c| CommitSummary {
                author: c
                    .author
                    .map(|a| a.login)
                    .or_else(|| c.commit.author.map(|a| a.name))
                    .unwrap_or_default(),
                sha: c.sha,
                message: c.commit.message,
            })
            .collect();
        let total = comparison.total_commits.max(commits.len() as u64);
        Ok(CommitsCache::Loaded { commits, total })
    }
}
