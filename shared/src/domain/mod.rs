//! Domain identifiers with rules (repository names, commits, branches, ordering keys), converted
//! from and to the wire types at the edges.

pub mod push_position;

use std::fmt;

use prx_ci_proto::v1;

/// The first seven characters of a commit SHA, as people and GitHub write it; text shorter than
/// that (or a wire value that is not a SHA) is shown whole.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// Why a value is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidIdentifier {
    what: &'static str,
    value: String,
    why: &'static str,
}

impl InvalidIdentifier {
    fn new(what: &'static str, value: &str, why: &'static str) -> Self {
        Self {
            what,
            value: value.to_owned(),
            why,
        }
    }
}

/// `owner/repo`, case preserved as GitHub reports it (`PRX_REPO`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    owner: String,
    name: String,
}

impl RepoName {
    /// Parses `owner/repo`.
    pub fn parse(full_name: &str) -> Result<Self, InvalidIdentifier> {
        let (owner, name) = full_name.split_once('/').ok_or_else(|| {
            InvalidIdentifier::new("repository", full_name, "expected owner/repo")
        })?;
        if owner.is_empty() || name.is_empty() || name.contains('/') {
            return Err(InvalidIdentifier::new(
                "repository",
                full_name,
                "expected owner/repo",
            ));
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A full 40-hex-digit git commit SHA (lower case, as GitHub sends it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitSha(String);

impl CommitSha {
    /// The all-zero SHA GitHub uses for "no commit" (branch creation/deletion).
    pub const ZERO: &'static str = "0000000000000000000000000000000000000000";

    pub fn parse(sha: &str) -> Result<Self, InvalidIdentifier> {
        if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(sha.to_ascii_lowercase()))
        } else {
            Err(InvalidIdentifier::new(
                "commit",
                sha,
                "expected 40 hex digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 7-character abbreviation people read.
    pub fn short(&self) -> &str {
        short_sha(&self.0)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == Self::ZERO
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A branch name, without `refs/heads/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch(String);

impl Branch {
    pub fn new(name: &str) -> Result<Self, InvalidIdentifier> {
        if name.is_empty() {
            return Err(InvalidIdentifier::new("branch", name, "empty"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The branch of a `refs/heads/<branch>` ref; `None` for tags and other refs.
    pub fn from_ref(git_ref: &str) -> Option<Self> {
        git_ref
            .strip_prefix("refs/heads/")
            .filter(|b| !b.is_empty())
            .map(|b| Self(b.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a build belongs to for ordering purposes: a branch (pushes) or a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Branch(Branch),
    PullRequest(u64),
}

/// Repository plus lane: pushes of one key are ordered; different keys are independent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderingKey {
    pub repository: RepoName,
    pub lane: Lane,
}

impl OrderingKey {
    pub fn branch(repository: RepoName, branch: Branch) -> Self {
        Self {
            repository,
            lane: Lane::Branch(branch),
        }
    }

    pub fn pull_request(repository: RepoName, number: u64) -> Self {
        Self {
            repository,
            lane: Lane::PullRequest(number),
        }
    }

    /// Converts from the wire type; `None` when the message lacks a repository or lane.
    pub fn from_proto(key: &v1::OrderingKey) -> Option<Self> {
        let repository = RepoName::parse(&key.repository).ok()?;
        let lane = match key.lane.as_ref()? {
            v1::ordering_key::Lane::Branch(b) => Lane::Branch(Branch::new(b).ok()?),
            v1::ordering_key::Lane::PullRequest(n) => Lane::PullRequest(*n),
        };
        Some(Self { repository, lane })
    }

    pub fn to_proto(&self) -> v1::OrderingKey {
        v1::OrderingKey {
            repository: self.repository.to_string(),
            lane: Some(match &self.lane {
                Lane::Branch(b) => v1::ordering_key::Lane::Branch(b.as_str().to_owned()),
                Lane::PullRequest(n) => v1::ordering_key::Lane::PullRequest(*n),
            }),
        }
    }
}

impl fmt::Display for OrderingKey {
    /// `owner/repo@branch` or `owner/repo#42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lane {
            Lane::Branch(b) => write!(f, "{}@{}", self.repository, b),
            Lane::PullRequest(n) => write!(f, "{}#{}", self.repository, n),
        }
    }
}

/// A CodeBuild architecture (`PRX_TARGET_ARCHITECTURE`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    X86_64,
    Aarch64,
}

impl Architecture {
    /// The value of `PRX_TARGET_ARCHITECTURE` and of ECR tag suffixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }

    pub fn from_proto(value: i32) -> Option<Self> {
        match v1::Architecture::try_from(value).ok()? {
            v1::Architecture::X8664 => Some(Self::X86_64),
            v1::Architecture::Aarch64 => Some(Self::Aarch64),
            v1::Architecture::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> v1::Architecture {
        match self {
            Self::X86_64 => v1::Architecture::X8664,
            Self::Aarch64 => v1::Architecture::Aarch64,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_name_keeps_case_and_rejects_garbage() {
        let repo = RepoName::parse("PRX/My-App").unwrap();
        assert_eq!(repo.owner(), "PRX");
        assert_eq!(repo.name(), "My-App");
        assert_eq!(repo.to_string(), "PRX/My-App");
        for bad in ["", "PRX", "/app", "PRX/", "a/b/c"] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn commit_sha_needs_forty_hex_digits() {
        let sha = CommitSha::parse("0123456789ABCDEF0123456789abcdef01234567").unwrap();
        assert_eq!(sha.as_str(), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(sha.short(), "0123456");
        assert!(CommitSha::parse("abc").is_err());
        assert!(CommitSha::parse(&"g".repeat(40)).is_err());
        assert!(CommitSha::parse(CommitSha::ZERO).unwrap().is_zero());
    }

    #[test]
    fn branch_from_ref_only_for_heads() {
        assert_eq!(
            Branch::from_ref("refs/heads/main").unwrap().as_str(),
            "main"
        );
        assert_eq!(
            Branch::from_ref("refs/heads/feature/x").unwrap().as_str(),
            "feature/x"
        );
        assert!(Branch::from_ref("refs/tags/v1.0").is_none());
        assert!(Branch::from_ref("refs/heads/").is_none());
    }

    #[test]
    fn ordering_key_round_trips_through_proto() {
        let repo = RepoName::parse("PRX/app").unwrap();
        for key in [
            OrderingKey::branch(repo.clone(), Branch::new("main").unwrap()),
            OrderingKey::pull_request(repo, 42),
        ] {
            assert_eq!(OrderingKey::from_proto(&key.to_proto()).unwrap(), key);
        }
    }
}
