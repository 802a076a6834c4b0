//! Whether a commit is in a branch's history (reachable from the branch head): what a rebuild
//! of a commit given by hand must prove before it is stored as a push to that branch. GitHub's
//! compare API for GitHub repositories; `git merge-base --is-ancestor` for the `file://`
//! repositories of `prx-ci up`.

use std::path::PathBuf;
use std::process::Stdio;

use prx_ci_shared::domain::{CommitSha, RepoName};
use prx_ci_shared::github::{GitHubClient, GitHubError};
use serde::Deserialize;

/// How a commit relates to a branch head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// The commit is the head or one of its ancestors.
    Reachable,
    /// The commit exists but is not in the head's history (another branch, a fork, a commit a
    /// force-push removed).
    NotReachable,
    /// The repository does not know the commit.
    UnknownCommit,
}

/// Why reachability could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum AncestryError {
    /// Cannot be checked with what is configured (the message says why).
    #[error("{0}")]
    Unsupported(String),
    /// GitHub or git failed; maybe later.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// The commit-graph port.
#[async_trait::async_trait]
pub trait CommitGraph: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `commit` is reachable from `head` in `repository` (cloned from `clone_url`).
    async fn reachability(
        &self,
        repository: &RepoName,
        clone_url: &str,
        commit: &CommitSha,
        head: &CommitSha,
    ) -> Result<Reachability, AncestryError>;
}

/// GitHub's compare API for GitHub repositories, git for `file://` clone URLs.
#[derive(Debug, Clone, Default)]
pub struct Ancestry {
    github: Option<GitHubClient>,
}

impl Ancestry {
    /// Local repositories only (`file://`); GitHub repositories cannot be checked.
    pub fn local_only() -> Self {
        Self::default()
    }

    /// GitHub repositories through `github` (the project's one client), local ones with git.
    pub fn new(github: GitHubClient) -> Self {
        Self {
            github: Some(github),
        }
    }
}

/// The part of GitHub's compare answer read here.
#[derive(Debug, Deserialize)]
struct Comparison {
    /// `ahead`, `behind`, `identical` or `diverged`: where the compare's head stands
    /// relative to its base.
    status: String,
    #[serde(default)]
    behind_by: u64,
}

/// `compare/{commit}...{head}`: `ahead` (the head has commits the base lacks and lacks none of
/// the base's) or `identical` means the commit is an ancestor of the head.
fn reachability_of(comparison: &Comparison) -> Reachability {
    match comparison.status.as_str() {
        "ahead" | "identical" if comparison.behind_by == 0 => Reachability::Reachable,
        _ => Reachability::NotReachable,
    }
}

/// The local path of a `file://` URL.
fn local_path(clone_url: &str) -> Option<PathBuf> {
    let url = url::Url::parse(clone_url).ok()?;
    (url.scheme() == "file")
        .then(|| url.to_file_path().ok())
        .flatten()
}

async fn git_reachability(
    dir: PathBuf,
    commit: &CommitSha,
    head: &CommitSha,
) -> Result<Reachability, AncestryError> {
    let git = |args: Vec<String>| {
        let mut command = tokio::process::Command::new("git");
        command
            .arg("-C")
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    // Both are validated 40-hex SHAs, so neither can read as an option.
    let exists = git(vec![
        "cat-file".into(),
        "-e".into(),
        format!("{commit}^{{commit}}"),
    ])
    .status()
    .await
    .map_err(|e| AncestryError::Failed(anyhow::anyhow!("cannot run git: {e}")))?;
    if !exists.success() {
        return Ok(Reachability::UnknownCommit);
    }
    let output = git(vec![
        "merge-base".into(),
        "--is-ancestor".into(),
        commit.to_string(),
        head.to_string(),
    ])
    .output()
    .await
    .map_err(|e| AncestryError::Failed(anyhow::anyhow!("cannot run git: {e}")))?;
    match output.status.code() {
        Some(0) => Ok(Reachability::Reachable),
        Some(1) => Ok(Reachability::NotReachable),
        _ => Err(AncestryError::Failed(anyhow::anyhow!(
            "git merge-base --is-ancestor in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

#[async_trait::async_trait]
impl CommitGraph for Ancestry {
    async fn reachability(
        &self,
        repository: &RepoName,
        clone_url: &str,
        commit: &CommitSha,
        head: &CommitSha,
    ) -> Result<Reachability, AncestryError> {
        if commit == head {
            return Ok(Reachability::Reachable);
        }
        if clone_url.starts_with("file:") {
            let dir = local_path(clone_url).ok_or_else(|| {
                AncestryError::Unsupported(format!("clone URL {clone_url:?} has no local path"))
            })?;
            return git_reachability(dir, commit, head).await;
        }
        let github = self.github.as_ref().ok_or_else(|| {
            AncestryError::Unsupported(format!(
                "cannot check that the commit is in the branch's history: {repository} is not a \
                 local repository and no GitHub client is configured"
            ))
        })?;
        let path = format!("/repos/{repository}/compare/{commit}...{head}");
        match github.get_json::<Comparison>(&path).await {
            Ok(comparison) => Ok(reachability_of(&comparison)),
            // GitHub answers 404 for a commit it does not know (and 422 for some bad ranges).
            Err(GitHubError::Status {
                status: 404 | 422, ..
            }) => Ok(Reachability::UnknownCommit),
            Err(err) => Err(AncestryError::Failed(err.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compared(status: &str, behind_by: u64) -> Reachability {
        reachability_of(&Comparison {
            status: status.into(),
            behind_by,
        })
    }

    #[test]
    fn only_ahead_or_identical_heads_make_the_commit_an_ancestor() {
        assert_eq!(compared("ahead", 0), Reachability::Reachable);
        assert_eq!(compared("identical", 0), Reachability::Reachable);
        // The head is behind the commit: the commit is newer than the branch (a fork's commit
        // on top of it, say).
        assert_eq!(compared("behind", 2), Reachability::NotReachable);
        assert_eq!(compared("diverged", 1), Reachability::NotReachable);
        assert_eq!(compared("ahead", 1), Reachability::NotReachable);
        assert_eq!(compared("", 0), Reachability::NotReachable);
    }

    #[test]
    fn file_urls_name_local_paths() {
        assert_eq!(
            local_path("file:///tmp/repo"),
            Some(PathBuf::from("/tmp/repo"))
        );
        assert_eq!(local_path("https://github.com/PRX/app.git"), None);
    }
}
