//! The pushes the end-to-end bench sends (pure): a steady rate of default-branch pushes spread
//! round-robin over many repositories, each a new commit on top of its repository's previous
//! push; the GitHub push webhook of each; and what a build of it exports and publishes.

use std::time::Duration;

use serde_json::json;

/// The owner of every bench repository.
pub const OWNER: &str = "bench";
/// Where every published parameter lives (the publisher's default `parameter_prefix`).
pub const PARAMETER_PREFIX: &str = "/prx/stag/Spire/";
/// The variable a build exports its value in (named by the mapping).
pub const LABEL: &str = "APP";

/// `bench/app-007`.
pub fn repository(index: usize) -> String {
    format!("{OWNER}/app-{index:03}")
}

/// The parameter `repository`'s builds publish: `/prx/stag/Spire/app-007/image`.
pub fn parameter(repository: &str) -> String {
    let name = repository.rsplit('/').next().unwrap_or(repository);
    format!("{PARAMETER_PREFIX}{name}/image")
}

/// The value a build of `commit` publishes.
pub fn value(commit: &str) -> String {
    format!("bench-{commit}")
}

/// Every repository's `buildspec.yml` (what the fake GitHub serves for each of its commits):
/// one x86_64 build exporting the mapping of [`LABEL`] to the repository's parameter and the
/// commit's [`value`]. The fake CodeBuild completes it at once with exactly those exports
/// ([`exported_variables`]).
pub fn buildspec(repository: &str) -> String {
    format!(
        "version: 0.2\n# markers: PRX_BUILD_X86_64\nenv:\n  variables:\n    \
         PRX_SPIRE_ECR_PKG_PARAMETERS: \"{LABEL}={parameter}\"\n  exported-variables:\n    \
         - PRX_SPIRE_ECR_PKG_PARAMETERS\n    - {LABEL}\nphases:\n  build:\n    commands:\n      \
         - export {LABEL}=\"bench-$PRX_COMMIT\"\n",
        parameter = parameter(repository),
    )
}

/// What a build of [`buildspec`] exports, given the build's `PRX_REPO` and `PRX_COMMIT`.
pub fn exported_variables(repository: &str, commit: &str) -> Vec<(String, String)> {
    vec![
        (
            "PRX_SPIRE_ECR_PKG_PARAMETERS".to_owned(),
            format!("{LABEL}={}", parameter(repository)),
        ),
        (LABEL.to_owned(), value(commit)),
    ]
}

/// One push to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Index of the repository.
    pub repo: usize,
    pub repository: String,
    /// The repository's previous push (`None`: the first push of the run creates `main`).
    pub before: Option<String>,
    /// The pushed commit (unique in the run: the bench's key of the push).
    pub commit: String,
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// When to send it, from the start of its phase.
    pub offset: Duration,
}

/// The pushes of a run: every phase continues each repository's chain of commits.
#[derive(Debug, Clone)]
pub struct Plan {
    nonce: u64,
    tips: Vec<Option<String>>,
    sent: u64,
}

impl Plan {
    /// A run over `repos` repositories; `nonce` makes its commits its own.
    pub fn new(repos: usize, nonce: u64) -> Self {
        Self {
            nonce,
            tips: vec![None; repos.max(1)],
            sent: 0,
        }
    }

    /// The pushes of one phase: `rate` pushes per second for `duration`, `1/rate` apart,
    /// repositories in turn.
    pub fn phase(&mut self, rate: u32, duration: Duration) -> Vec<Push> {
        let rate = rate.max(1);
        let count = (u128::from(rate) * duration.as_millis() / 1000) as u64;
        let gap = Duration::from_secs(1) / rate;
        (0..count)
            .map(|i| {
                let n = self.sent;
                self.sent += 1;
                let repo = usize::try_from(n).unwrap_or(0) % self.tips.len();
                // The counter leads, so short SHAs are unique too.
                let commit = format!("{n:07x}{:033x}", self.nonce);
                let before = self.tips[repo].replace(commit.clone());
                Push {
                    repo,
                    repository: repository(repo),
                    before,
                    delivery_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, commit.as_bytes())
                        .to_string(),
                    commit,
                    offset: gap * u32::try_from(i).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// The newest commit of each repository (the value its parameter must end on).
    pub fn tips(&self) -> impl Iterator<Item = (String, &str)> {
        self.tips
            .iter()
            .enumerate()
            .filter_map(|(i, tip)| tip.as_deref().map(|t| (repository(i), t)))
    }
}

/// GitHub's `push` webhook body of `push`, pushed at `pushed_at` (seconds since the epoch).
pub fn webhook_body(push: &Push, pushed_at: i64) -> String {
    let name = push
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&push.repository);
    let url = format!("https://github.com/{}", push.repository);
    let iso = time::OffsetDateTime::from_unix_timestamp(pushed_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    json!({
        "ref": "refs/heads/main",
        "before": push.before.clone().unwrap_or_else(|| "0".repeat(40)),
        "after": push.commit,
        "created": push.before.is_none(),
        "deleted": false,
        "forced": false,
        "head_commit": {
            "id": push.commit,
            "message": "bench push",
            "timestamp": iso,
            "author": {"name": "bench", "username": "bench"},
        },
        "repository": {
            "name": name,
            "full_name": push.repository,
            "owner": {"login": OWNER},
            "default_branch": "main",
            "clone_url": format!("{url}.git"),
            "html_url": url,
            "pushed_at": pushed_at,
        },
        "pusher": {"name": "bench"},
        "sender": {"login": "bench"},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_pushes_over_repositories_and_chain_their_commits() {
        let mut plan = Plan::new(3, 7);
        let first = plan.phase(10, Duration::from_secs(1));
        assert_eq!(first.len(), 10);
        assert_eq!(first[1].offset, Duration::from_millis(100));
        assert_eq!(
            first.iter().map(|p| p.repo).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(first[0].before, None);
        assert_eq!(first[3].before.as_deref(), Some(first[0].commit.as_str()));
        // The next phase continues each chain.
        let second = plan.phase(4, Duration::from_millis(500));
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].repo, 1);
        assert_eq!(second[0].before.as_deref(), Some(first[7].commit.as_str()));
        let commits: std::collections::HashSet<_> = first
            .iter()
            .chain(&second)
            .map(|p| p.commit[..7].to_owned())
            .collect();
        assert_eq!(commits.len(), 12, "short SHAs are unique");
        assert!(
            first
                .iter()
                .all(|p| p.commit.len() == 40 && p.commit.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let tips: Vec<_> = plan.tips().collect();
        assert_eq!(
            tips[1],
            ("bench/app-001".to_owned(), second[0].commit.as_str())
        );
    }

    #[test]
    fn a_builds_exports_map_its_value_to_its_repositorys_parameter() {
        assert_eq!(parameter("bench/app-007"), "/prx/stag/Spire/app-007/image");
        let spec = buildspec("bench/app-007");
        assert!(spec.contains("APP=/prx/stag/Spire/app-007/image"), "{spec}");
        assert!(spec.contains("PRX_BUILD_X86_64"));
        assert_eq!(
            exported_variables("bench/app-007", "abc"),
            [
                (
                    "PRX_SPIRE_ECR_PKG_PARAMETERS".to_owned(),
                    "APP=/prx/stag/Spire/app-007/image".to_owned()
                ),
                ("APP".to_owned(), "bench-abc".to_owned())
            ]
        );
    }

    #[test]
    fn the_webhook_is_a_default_branch_push_in_github_order() {
        let mut plan = Plan::new(1, 1);
        let pushes = plan.phase(2, Duration::from_secs(1));
        let body: serde_json::Value =
            serde_json::from_str(&webhook_body(&pushes[1], 1_700_000_000)).unwrap();
        assert_eq!(body["ref"], "refs/heads/main");
        assert_eq!(body["before"], pushes[0].commit.as_str());
        assert_eq!(body["after"], pushes[1].commit.as_str());
        assert_eq!(body["created"], false);
        assert_eq!(body["repository"]["full_name"], "bench/app-000");
        assert_eq!(body["repository"]["pushed_at"], 1_700_000_000);
        let first: serde_json::Value =
            serde_json::from_str(&webhook_body(&pushes[0], 1_700_000_000)).unwrap();
        assert_eq!(first["before"], "0".repeat(40));
        assert_eq!(first["created"], true);
    }
}
