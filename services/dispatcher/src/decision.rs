//! The build decision, with no I/O: a webhook becomes a [`Skip`] or a [`BuildPlan`]; a plan
//! plus the buildspec text becomes one [`PlannedBuild`] per architecture with the exact
//! `PRX_*` environment of the original build handler (reference §1.2, §2.2).
//!
//! The rules, in the order they are checked:
//! 1. only `push` and `pull_request` events build (`EVENT_TYPE_NOT_BUILT`);
//! 2. the payload names its repository (`MALFORMED_PAYLOAD`), whose owner is allowed
//!    (`OWNER_NOT_ALLOWED`, only when an allow-list is configured);
//! 3. pushes: tags (`TAG_PUSH`), branch deletions (`BRANCH_DELETED`) and branches other than
//!    `repository.default_branch` (`NON_DEFAULT_BRANCH`) do not build;
//!    pull requests: only the actions of [`PULL_REQUEST_ACTIONS_BUILT`] build
//!    (`PULL_REQUEST_ACTION_NOT_BUILT`); drafts build like any other pull request;
//! 4. the fields a build needs are present (`MALFORMED_PAYLOAD`, the detail names the field);
//! 5. (after the lookup) `buildspec.yml` exists at the commit (`NO_BUILDSPEC`) and contains the
//!    marker (`NO_MARKER`).

#![expect(
    clippy::result_large_err,
    reason = "a skip carries the event's details; one decision per webhook, nothing to gain by boxing"
)]

use std::collections::BTreeMap;

use prx_ci_proto::v1;
use prx_ci_shared::domain::{Architecture, Branch, CommitSha, OrderingKey, RepoName};
use serde::Deserialize;
use serde_json::Value;

/// Pull-request actions that start builds (the original's list; `unlocked` since Dec 2021).
pub const PULL_REQUEST_ACTIONS_BUILT: [&str; 5] = [
    "opened",
    "reopened",
    "synchronize",
    "ready_for_review",
    "unlocked",
];

/// Variable names handed to every build (reference §2.2). Fixed: app buildspecs read them.
pub mod vars {
    pub const REPO: &str = "PRX_REPO";
    pub const COMMIT: &str = "PRX_COMMIT";
    pub const BRANCH: &str = "PRX_BRANCH";
    pub const CI_PUBLISH: &str = "PRX_CI_PUBLISH";
    pub const GITHUB_PR: &str = "PRX_GITHUB_PR";
    pub const GITHUB_PR_TITLE: &str = "PRX_GITHUB_PR_TITLE";
    pub const GITHUB_PR_BASE_BRANCH: &str = "PRX_GITHUB_PR_BASE_BRANCH";
    pub const GITHUB_PR_AUTHOR: &str = "PRX_GITHUB_PR_AUTHOR";
    pub const GITHUB_ACTION: &str = "PRX_GITHUB_ACTION";
    pub const GITHUB_BEFORE: &str = "PRX_GITHUB_BEFORE";
    pub const GITHUB_AFTER: &str = "PRX_GITHUB_AFTER";
    pub const TARGET_ARCHITECTURE: &str = "PRX_TARGET_ARCHITECTURE";
}

/// The decision rules' strings (section `[dispatcher.rules]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Repository owners (organisations or users) whose webhooks may build, compared
    /// case-insensitively. Default: empty = every owner (the original relies on the webhook
    /// being installed on one organisation only).
    pub allowed_owners: Vec<String>,
    /// Substring a buildspec must contain to be built. Default `PRX_`.
    pub marker: String,
    /// Substring whose presence requests an x86_64 build. Default `PRX_BUILD_X86_64`.
    pub x86_64_marker: String,
    /// Substring whose presence requests an aarch64 build. Default `PRX_BUILD_AARCH64`.
    pub aarch64_marker: String,
    /// Literal substrings with which a pull request's buildspec opts in to publishing
    /// (`PRX_CI_PUBLISH=true`). Default: `PRX_CI_PUBLISH: true`, `PRX_CI_PUBLISH: "true"`,
    /// `PRX_CI_PUBLISH: 'true'`.
    pub publish_opt_in: Vec<String>,
    /// What to do with pull requests from forks (head repository other than the base, or
    /// deleted): `skip` (default, skip reason `FORK`) or `build` (never publishing, in the
    /// untrusted project, with none of the local runner's configured environment).
    pub fork_pull_requests: ForkPolicy,
}

/// `[dispatcher.rules] fork_pull_requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkPolicy {
    #[default]
    Skip,
    Build,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            allowed_owners: Vec::new(),
            marker: "PRX_".to_owned(),
            x86_64_marker: "PRX_BUILD_X86_64".to_owned(),
            aarch64_marker: "PRX_BUILD_AARCH64".to_owned(),
            publish_opt_in: vec![
                "PRX_CI_PUBLISH: true".to_owned(),
                "PRX_CI_PUBLISH: \"true\"".to_owned(),
                "PRX_CI_PUBLISH: 'true'".to_owned(),
            ],
            fork_pull_requests: ForkPolicy::Skip,
        }
    }
}

impl DecisionConfig {
    /// The first problem with the strings, phrased for an operator.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("marker", &self.marker),
            ("x86_64_marker", &self.x86_64_marker),
            ("aarch64_marker", &self.aarch64_marker),
        ] {
            if value.is_empty() {
                return Err(format!("rules.{name} is empty"));
            }
        }
        if self.publish_opt_in.iter().any(String::is_empty) {
            return Err("rules.publish_opt_in has an empty entry".into());
        }
        if self.allowed_owners.iter().any(|o| o.trim().is_empty()) {
            return Err("rules.allowed_owners has an empty entry".into());
        }
        Ok(())
    }

    fn owner_allowed(&self, owner: &str) -> bool {
        self.allowed_owners.is_empty()
            || self
                .allowed_owners
                .iter()
                .any(|allowed| allowed.trim().eq_ignore_ascii_case(owner))
    }
}

/// Why a webhook builds nothing (mirrors `prx.ci.v1.SkipReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    EventTypeNotBuilt,
    NonDefaultBranch,
    TagPush,
    BranchDeleted,
    PullRequestActionNotBuilt,
    OwnerNotAllowed,
    NoBuildspec,
    NoMarker,
    MalformedPayload,
    InvalidBuildspec,
    Fork,
}

impl SkipReason {
    pub fn to_proto(self) -> v1::SkipReason {
        match self {
            Self::EventTypeNotBuilt => v1::SkipReason::EventTypeNotBuilt,
            Self::NonDefaultBranch => v1::SkipReason::NonDefaultBranch,
            Self::TagPush => v1::SkipReason::TagPush,
            Self::BranchDeleted => v1::SkipReason::BranchDeleted,
            Self::PullRequestActionNotBuilt => v1::SkipReason::PullRequestActionNotBuilt,
            Self::OwnerNotAllowed => v1::SkipReason::OwnerNotAllowed,
            Self::NoBuildspec => v1::SkipReason::NoBuildspec,
            Self::NoMarker => v1::SkipReason::NoMarker,
            Self::MalformedPayload => v1::SkipReason::MalformedPayload,
            Self::InvalidBuildspec => v1::SkipReason::InvalidBuildspec,
            Self::Fork => v1::SkipReason::Fork,
        }
    }

    /// `NO_BUILDSPEC` etc., for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::EventTypeNotBuilt => "EVENT_TYPE_NOT_BUILT",
            Self::NonDefaultBranch => "NON_DEFAULT_BRANCH",
            Self::TagPush => "TAG_PUSH",
            Self::BranchDeleted => "BRANCH_DELETED",
            Self::PullRequestActionNotBuilt => "PULL_REQUEST_ACTION_NOT_BUILT",
            Self::OwnerNotAllowed => "OWNER_NOT_ALLOWED",
            Self::NoBuildspec => "NO_BUILDSPEC",
            Self::NoMarker => "NO_MARKER",
            Self::MalformedPayload => "MALFORMED_PAYLOAD",
            Self::InvalidBuildspec => "INVALID_BUILDSPEC",
            Self::Fork => "FORK",
        }
    }
}

/// A decision not to build, with everything known about the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    /// What a person needs to understand the skip (the branch, the action, the field...).
    pub detail: String,
    pub event_name: String,
    /// `action` of the payload ("" when it has none).
    pub action: String,
    /// `owner/repo` as the payload names it ("" when it does not).
    pub repository: String,
    /// The commit the event is about ("" when unknown).
    pub commit: String,
    /// The git ref of a push ("" otherwise).
    pub git_ref: String,
    /// Set when the event names a repository and a lane.
    pub ordering_key: Option<OrderingKey>,
}

impl Skip {
    pub fn to_proto(&self) -> v1::BuildSkipped {
        v1::BuildSkipped {
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            reason: self.reason.to_proto() as i32,
            detail: self.detail.clone(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            r#ref: self.git_ref.clone(),
        }
    }
}

/// What triggered a build, with the fields its variables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A push to the default branch.
    Push {
        git_ref: String,
        branch: Branch,
        before: String,
        after: String,
    },
    /// A pull request event with a built action.
    PullRequest {
        number: u64,
        title: String,
        head_ref: String,
        base_ref: String,
        author: String,
        action: String,
        draft: bool,
        /// The head repository differs from the base repository, or is gone (deleted fork).
        fork: bool,
        /// `before` of a `synchronize` (the previous head; "" for other actions).
        before: String,
    },
}

/// A webhook that builds, once its buildspec says how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub repository: RepoName,
    /// The exact commit built: `after` (push) or `pull_request.head.sha`.
    pub commit: CommitSha,
    /// Branch (pushes) or pull request number: the unit of ordering and supersession.
    pub ordering_key: OrderingKey,
    /// `repository.clone_url`.
    pub clone_url: String,
    pub event_name: String,
    pub action: String,
    pub trigger: Trigger,
    /// GitHub's time of the push, seconds (`repository.pushed_at` of a push,
    /// `pull_request.updated_at` of a pull request); `None` when the payload has none.
    pub pushed_at: Option<i64>,
}

/// One build to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBuild {
    pub architecture: Architecture,
    /// The exact variables of reference §2.2 for this build.
    pub environment: BTreeMap<String, String>,
}

impl BuildPlan {
    /// What the backend checks out: the exact commit, for pushes and pull requests alike.
    ///
    /// The original built `pr/<number>` for pull requests, which makes CodeBuild resolve the
    /// pull request's head when the build starts: if more commits landed meanwhile, the build
    /// compiles a newer head than the `PRX_COMMIT` it reports, its artifacts carry the wrong
    /// SHA, and the ordering fence (which assumes a build's artifacts belong to its push) would
    /// publish content of another push under this push's sequence. Building the SHA keeps
    /// "what was built" and "what the events say was built" the same. GitHub serves a pull
    /// request's head commits (forks included) from the base repository, so the SHA is
    /// fetchable from `repository.clone_url`.
    pub fn source_version(&self) -> &str {
        self.commit.as_str()
    }

    /// A pull request from a fork: code nobody trusted wrote.
    pub fn is_fork(&self) -> bool {
        matches!(self.trigger, Trigger::PullRequest { fork: true, .. })
    }

    /// The branch built (`PRX_BRANCH`).
    pub fn branch(&self) -> &str {
        match &self.trigger {
            Trigger::Push { branch, .. } => branch.as_str(),
            Trigger::PullRequest { head_ref, .. } => head_ref,
        }
    }

    /// The pull request number (0 for pushes).
    pub fn pull_request(&self) -> u64 {
        match &self.trigger {
            Trigger::Push { .. } => 0,
            Trigger::PullRequest { number, .. } => *number,
        }
    }

    /// What GitHub says about this push, for its place in the push order; `received_at`
    /// (when ingress stored the webhook) stands in for a payload without GitHub's time.
    pub fn push_facts(&self, received_at: i64) -> crate::push_order::PushFacts {
        let (before, after) = match &self.trigger {
            Trigger::Push { before, after, .. } => (before.clone(), after.clone()),
            Trigger::PullRequest { before, .. } => (before.clone(), self.commit.to_string()),
        };
        crate::push_order::PushFacts {
            pushed_at: self.pushed_at.unwrap_or(received_at),
            before,
            after,
        }
    }

    /// A skip of this plan (after the buildspec lookup).
    pub fn skip(&self, reason: SkipReason, detail: impl Into<String>) -> Skip {
        Skip {
            reason,
            detail: detail.into(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            repository: self.repository.to_string(),
            commit: self.commit.to_string(),
            git_ref: match &self.trigger {
                Trigger::Push { git_ref, .. } => git_ref.clone(),
                Trigger::PullRequest { .. } => String::new(),
            },
            ordering_key: Some(self.ordering_key.clone()),
        }
    }

    /// The builds the buildspec asks for, or why none: the marker must be present; the
    /// architecture markers select architectures by presence (none = one x86_64 build).
    pub fn builds(
        &self,
        buildspec: &str,
        config: &DecisionConfig,
    ) -> Result<Vec<PlannedBuild>, Skip> {
        if !buildspec.contains(&config.marker) {
            return Err(self.skip(
                SkipReason::NoMarker,
                format!("buildspec.yml does not contain {:?}", config.marker),
            ));
        }
        let mut architectures = Vec::with_capacity(2);
        if buildspec.contains(&config.x86_64_marker) {
            architectures.push(Architecture::X86_64);
        }
        if buildspec.contains(&config.aarch64_marker) {
            architectures.push(Architecture::Aarch64);
        }
        if architectures.is_empty() {
            architectures.push(Architecture::X86_64);
        }
        let publish = match &self.trigger {
            // Forced: a default-branch push always publishes, whatever the buildspec says.
            Trigger::Push { .. } => true,
            // A fork controls its buildspec text: its opt-in counts for nothing.
            Trigger::PullRequest { fork: true, .. } => false,
            // String matching, not YAML: exactly the original's opt-in.
            Trigger::PullRequest { .. } => config
                .publish_opt_in
                .iter()
                .any(|opt_in| buildspec.contains(opt_in.as_str())),
        };
        Ok(architectures
            .into_iter()
            .map(|architecture| PlannedBuild {
                architecture,
                environment: self.environment(architecture, publish),
            })
            .collect())
    }

    fn environment(&self, architecture: Architecture, publish: bool) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |name: &str, value: &str| {
            env.insert(name.to_owned(), value.to_owned());
        };
        set(vars::REPO, &self.repository.to_string());
        set(vars::COMMIT, self.commit.as_str());
        set(vars::CI_PUBLISH, if publish { "true" } else { "false" });
        set(vars::TARGET_ARCHITECTURE, architecture.as_str());
        match &self.trigger {
            Trigger::Push {
                branch,
                before,
                after,
                ..
            } => {
                set(vars::BRANCH, branch.as_str());
                set(vars::GITHUB_BEFORE, before);
                set(vars::GITHUB_AFTER, after);
            }
            Trigger::PullRequest {
                number,
                title,
                head_ref,
                base_ref,
                author,
                action,
                ..
            } => {
                set(vars::BRANCH, head_ref);
                set(vars::GITHUB_PR, &number.to_string());
                set(vars::GITHUB_PR_TITLE, title);
                set(vars::GITHUB_PR_BASE_BRANCH, base_ref);
                set(vars::GITHUB_PR_AUTHOR, author);
                set(vars::GITHUB_ACTION, action);
            }
        }
        env
    }
}

/// Decides whether a webhook builds. `payload` is the webhook's JSON body.
pub fn decide(
    event_name: &str,
    payload: &[u8],
    config: &DecisionConfig,
) -> Result<BuildPlan, Skip> {
    let mut skip = Skip {
        reason: SkipReason::EventTypeNotBuilt,
        detail: String::new(),
        event_name: event_name.to_owned(),
        action: String::new(),
        repository: String::new(),
        commit: String::new(),
        git_ref: String::new(),
        ordering_key: None,
    };
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return Err(malformed(skip, "payload is not a JSON object")),
        Err(err) => return Err(malformed(skip, format!("payload is not JSON: {err}"))),
    };
    let payload = Payload(&value);
    skip.action = payload.str(&["action"]).unwrap_or_default().to_owned();
    skip.repository = payload
        .str(&["repository", "full_name"])
        .unwrap_or_default()
        .to_owned();
    match event_name {
        "push" => {
            skip.git_ref = payload.str(&["ref"]).unwrap_or_default().to_owned();
            skip.commit = payload.str(&["after"]).unwrap_or_default().to_owned();
        }
        "pull_request" => {
            skip.commit = payload
                .str(&["pull_request", "head", "sha"])
                .unwrap_or_default()
                .to_owned();
        }
        other => {
            skip.detail = format!("{other:?} events are not built (only push and pull_request)");
            return Err(skip);
        }
    }
    let repository = match payload.required_str(&["repository", "full_name"]) {
        Ok(name) => match RepoName::parse(name) {
            Ok(repo) => repo,
            Err(err) => return Err(malformed(skip, err.to_string())),
        },
        Err(missing) => return Err(malformed(skip, missing)),
    };
    if !config.owner_allowed(repository.owner()) {
        skip.reason = SkipReason::OwnerNotAllowed;
        skip.detail = format!(
            "owner {:?} is not in allowed_owners {:?}",
            repository.owner(),
            config.allowed_owners
        );
        return Err(skip);
    }
    if event_name == "push" {
        decide_push(&payload, repository, skip)
    } else {
        decide_pull_request(&payload, repository, skip, config.fork_pull_requests)
    }
}

fn decide_push(
    payload: &Payload<'_>,
    repository: RepoName,
    mut skip: Skip,
) -> Result<BuildPlan, Skip> {
    let git_ref = match payload.required_str(&["ref"]) {
        Ok(r) => r.to_owned(),
        Err(missing) => return Err(malformed(skip, missing)),
    };
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        skip.reason = SkipReason::TagPush;
        skip.detail = if payload.is_deletion() {
            format!("tag {tag} deleted")
        } else {
            format!("tag {tag}")
        };
        return Err(skip);
    }
    let branch = Branch::from_ref(&git_ref);
    if let Some(branch) = &branch {
        skip.ordering_key = Some(OrderingKey::branch(repository.clone(), branch.clone()));
    }
    if payload.is_deletion() {
        skip.reason = SkipReason::BranchDeleted;
        skip.detail = format!("{git_ref} deleted");
        return Err(skip);
    }
    let default_branch = match payload.required_str(&["repository", "default_branch"]) {
        Ok(b) => b,
        Err(missing) => return Err(malformed(skip, missing)),
    };
    let branch = match branch {
        Some(branch) if branch.as_str() == default_branch => branch,
        _ => {
            skip.reason = SkipReason::NonDefaultBranch;
            skip.detail = format!(
                "push to {git_ref}; only refs/heads/{default_branch} (the default branch) builds"
            );
            return Err(skip);
        }
    };
    let fields = (|| {
        Ok::<_, String>((
            payload.required_str(&["after"])?,
            payload.required_str(&["before"])?,
            payload.required_str(&["repository", "clone_url"])?,
        ))
    })();
    let (after, before, clone_url) = match fields {
        Ok(fields) => fields,
        Err(missing) => return Err(malformed(skip, missing)),
    };
    let commit = match CommitSha::parse(after) {
        Ok(commit) => commit,
        Err(err) => return Err(malformed(skip, format!("after: {err}"))),
    };
    Ok(BuildPlan {
        ordering_key: OrderingKey::branch(repository.clone(), branch.clone()),
        repository,
        commit,
        clone_url: clone_url.to_owned(),
        event_name: skip.event_name,
        action: skip.action,
        trigger: Trigger::Push {
            git_ref,
            branch,
            before: before.to_owned(),
            after: after.to_owned(),
        },
        pushed_at: payload.time(&["repository", "pushed_at"]),
    })
}

fn decide_pull_request(
    payload: &Payload<'_>,
    repository: RepoName,
    mut skip: Skip,
    forks: ForkPolicy,
) -> Result<BuildPlan, Skip> {
    let action = match payload.required_str(&["action"]) {
        Ok(a) => a.to_owned(),
        Err(missing) => return Err(malformed(skip, missing)),
    };
    let number = payload
        .0
        .get("number")
        .or_else(|| {
            payload
                .0
                .get("pull_request")
                .and_then(|pr| pr.get("number"))
        })
        .and_then(Value::as_u64);
    if let Some(number) = number {
        skip.ordering_key = Some(OrderingKey::pull_request(repository.clone(), number));
    }
    if !PULL_REQUEST_ACTIONS_BUILT.contains(&action.as_str()) {
        skip.reason = SkipReason::PullRequestActionNotBuilt;
        skip.detail = format!(
            "pull request action {action:?} is not built (only {})",
            PULL_REQUEST_ACTIONS_BUILT.join(", ")
        );
        return Err(skip);
    }
    let Some(number) = number else {
        return Err(malformed(skip, "missing number"));
    };
    let fields = (|| {
        Ok::<_, String>((
            payload.required_str(&["pull_request", "head", "sha"])?,
            payload.required_str(&["pull_request", "head", "ref"])?,
            payload.required_str(&["pull_request", "base", "ref"])?,
            payload.required_str(&["pull_request", "title"])?,
            payload.required_str(&["pull_request", "user", "login"])?,
            payload.required_str(&["repository", "clone_url"])?,
        ))
    })();
    let (head_sha, head_ref, base_ref, title, author, clone_url) = match fields {
        Ok(fields) => fields,
        Err(missing) => return Err(malformed(skip, missing)),
    };
    let commit = match CommitSha::parse(head_sha) {
        Ok(commit) => commit,
        Err(err) => return Err(malformed(skip, format!("pull_request.head.sha: {err}"))),
    };
    let draft = payload
        .0
        .get("pull_request")
        .and_then(|pr| pr.get("draft"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // `head.repo` is null when the fork was deleted; GitHub's names compare case-insensitively.
    let head_repository = payload.str(&["pull_request", "head", "repo", "full_name"]);
    let fork =
        !head_repository.is_some_and(|head| head.eq_ignore_ascii_case(&repository.to_string()));
    if fork && forks == ForkPolicy::Skip {
        skip.reason = SkipReason::Fork;
        skip.detail = format!(
            "pull request from fork {}; fork_pull_requests = \"skip\"",
            head_repository.unwrap_or("(deleted)")
        );
        return Err(skip);
    }
    let before = match action.as_str() {
        "synchronize" => payload.str(&["before"]).unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    Ok(BuildPlan {
        ordering_key: OrderingKey::pull_request(repository.clone(), number),
        repository,
        commit,
        clone_url: clone_url.to_owned(),
        event_name: skip.event_name,
        action: action.clone(),
        trigger: Trigger::PullRequest {
            number,
            title: title.to_owned(),
            head_ref: head_ref.to_owned(),
            base_ref: base_ref.to_owned(),
            author: author.to_owned(),
            action,
            draft,
            fork,
            before,
        },
        pushed_at: payload.time(&["pull_request", "updated_at"]),
    })
}

fn malformed(mut skip: Skip, detail: impl Into<String>) -> Skip {
    skip.reason = SkipReason::MalformedPayload;
    skip.detail = detail.into();
    skip
}

/// Read access to the JSON body by path.
struct Payload<'a>(&'a Value);

impl Payload<'_> {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self.0, |value, key| value.get(key))
    }

    fn str(&self, path: &[&str]) -> Option<&str> {
        self.at(path).and_then(Value::as_str)
    }

    /// A time at `path` in seconds: GitHub writes Unix seconds (`repository.pushed_at` of a
    /// push) or RFC 3339 (`pull_request.updated_at`, and `pushed_at` elsewhere).
    fn time(&self, path: &[&str]) -> Option<i64> {
        match self.at(path)? {
            Value::Number(n) => n.as_i64().filter(|s| *s > 0),
            Value::String(s) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(time::OffsetDateTime::unix_timestamp)
            }
            _ => None,
        }
    }

    /// The string at `path`, or the detail of a malformed-payload skip.
    fn required_str(&self, path: &[&str]) -> Result<&str, String> {
        match self.at(path) {
            Some(Value::String(s)) => Ok(s),
            Some(Value::Null) | None => Err(format!("missing {}", path.join("."))),
            Some(_) => Err(format!("{} is not a string", path.join("."))),
        }
    }

    /// A ref deletion: `deleted: true`, or `after` all zeros.
    fn is_deletion(&self) -> bool {
        self.at(&["deleted"]).and_then(Value::as_bool) == Some(true)
            || self.str(&["after"]) == Some(CommitSha::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    const SHA_B: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    fn push(git_ref: &str, after: &str) -> Vec<u8> {
        serde_json::json!({
            "ref": git_ref,
            "before": SHA_B,
            "after": after,
            "deleted": after == CommitSha::ZERO,
            "repository": {
                "full_name": "PRX/app",
                "default_branch": "main",
                "clone_url": "https://github.com/PRX/app.git",
            },
        })
        .to_string()
        .into_bytes()
    }

    fn pull_request(action: &str) -> Vec<u8> {
        pull_request_from(action, serde_json::json!({"full_name": "PRX/app"}))
    }

    /// A pull request whose head lives in `head_repo` (`null` for a deleted fork).
    fn pull_request_from(action: &str, head_repo: Value) -> Vec<u8> {
        serde_json::json!({
            "action": action,
            "number": 7,
            "before": SHA_B,
            "after": SHA_A,
            "pull_request": {
                "number": 7,
                "title": "Add a thing",
                "draft": false,
                "updated_at": "2026-11-26T07:41:02Z",
                "head": {"sha": SHA_A, "ref": "feat/x", "repo": head_repo},
                "base": {"ref": "main"},
                "user": {"login": "octo"},
            },
            "repository": {
                "full_name": "PRX/app",
                "default_branch": "main",
                "clone_url": "https://github.com/PRX/app.git",
            },
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn fork_pull_requests_are_skipped_by_default() {
        let config = DecisionConfig::default();
        for head_repo in [
            serde_json::json!({"full_name": "outsider/app"}),
            Value::Null,
            serde_json::json!({}),
        ] {
            let skip = decide(
                "pull_request",
                &pull_request_from("opened", head_repo.clone()),
                &config,
            )
            .expect_err("a fork must not build by default");
            assert_eq!(skip.reason, SkipReason::Fork, "{head_repo}");
            assert_eq!(skip.to_proto().reason, v1::SkipReason::Fork as i32);
            assert_eq!(skip.ordering_key.unwrap().to_string(), "PRX/app#7");
        }
        // Same repository, whatever the case GitHub reports it in.
        let same = pull_request_from("opened", serde_json::json!({"full_name": "prx/APP"}));
        assert!(!decide("pull_request", &same, &config).unwrap().is_fork());
    }

    #[test]
    fn built_forks_never_publish_whatever_their_buildspec_says() {
        let config = DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..DecisionConfig::default()
        };
        let fork = pull_request_from(
            "synchronize",
            serde_json::json!({"full_name": "outsider/app"}),
        );
        let plan = decide("pull_request", &fork, &config).unwrap();
        assert!(plan.is_fork());
        let builds = plan
            .builds(
                "PRX_\nenv:\n  variables:\n    PRX_CI_PUBLISH: true\n",
                &config,
            )
            .unwrap();
        assert_eq!(builds[0].environment[vars::CI_PUBLISH], "false");
    }

    #[test]
    fn github_time_and_chain_of_the_push() {
        let config = DecisionConfig::default();
        let mut body: Value = serde_json::from_slice(&push("refs/heads/main", SHA_A)).unwrap();
        body["repository"]["pushed_at"] = serde_json::json!(1_764_142_800);
        let plan = decide("push", body.to_string().as_bytes(), &config).unwrap();
        let facts = plan.push_facts(99);
        assert_eq!(facts.pushed_at, 1_764_142_800);
        assert_eq!(
            (facts.before.as_str(), facts.after.as_str()),
            (SHA_B, SHA_A)
        );
        // No time in the payload: when ingress stored it.
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        assert_eq!(plan.push_facts(99).pushed_at, 99);
        // Pull requests: `updated_at`, and the synchronize chain.
        let plan = decide("pull_request", &pull_request("synchronize"), &config).unwrap();
        let facts = plan.push_facts(99);
        assert_eq!(facts.pushed_at, 1_795_678_862);
        assert_eq!(
            (facts.before.as_str(), facts.after.as_str()),
            (SHA_B, SHA_A)
        );
        let opened = decide("pull_request", &pull_request("opened"), &config).unwrap();
        assert_eq!(opened.push_facts(99).before, "");
    }

    fn reason(result: Result<BuildPlan, Skip>) -> SkipReason {
        result.expect_err("expected a skip").reason
    }

    #[test]
    fn default_branch_push_builds_the_after_sha() {
        let plan = decide(
            "push",
            &push("refs/heads/main", SHA_A),
            &DecisionConfig::default(),
        )
        .unwrap();
        assert_eq!(plan.commit.as_str(), SHA_A);
        assert_eq!(plan.source_version(), SHA_A);
        assert_eq!(plan.ordering_key.to_string(), "PRX/app@main");
        let builds = plan.builds("PRX_", &DecisionConfig::default()).unwrap();
        assert_eq!(builds.len(), 1);
        let env = &builds[0].environment;
        assert_eq!(env[vars::CI_PUBLISH], "true");
        assert_eq!(env[vars::BRANCH], "main");
        assert_eq!(env[vars::GITHUB_BEFORE], SHA_B);
        assert_eq!(env[vars::GITHUB_AFTER], SHA_A);
        assert!(!env.contains_key(vars::GITHUB_PR));
    }

    #[test]
    fn pushes_that_do_not_build_have_distinct_reasons() {
        let config = DecisionConfig::default();
        assert_eq!(
            reason(decide("push", &push("refs/heads/feat", SHA_A), &config)),
            SkipReason::NonDefaultBranch
        );
        assert_eq!(
            reason(decide("push", &push("refs/tags/v1", SHA_A), &config)),
            SkipReason::TagPush
        );
        assert_eq!(
            reason(decide(
                "push",
                &push("refs/heads/feat", CommitSha::ZERO),
                &config
            )),
            SkipReason::BranchDeleted
        );
        assert_eq!(
            reason(decide("push", &push("refs/heads/main", "abc"), &config)),
            SkipReason::MalformedPayload
        );
        // A default-branch name that is a prefix of the pushed branch is not the default.
        assert_eq!(
            reason(decide("push", &push("refs/heads/main2", SHA_A), &config)),
            SkipReason::NonDefaultBranch
        );
        assert_eq!(
            reason(decide("push", &push("refs/notes/commits", SHA_A), &config)),
            SkipReason::NonDefaultBranch
        );
    }

    #[test]
    fn pull_request_actions() {
        let config = DecisionConfig::default();
        for action in PULL_REQUEST_ACTIONS_BUILT {
            let plan = decide("pull_request", &pull_request(action), &config).unwrap();
            assert_eq!(plan.action, action);
            assert_eq!(plan.ordering_key.to_string(), "PRX/app#7");
        }
        for action in [
            "closed",
            "edited",
            "labeled",
            "converted_to_draft",
            "assigned",
        ] {
            assert_eq!(
                reason(decide("pull_request", &pull_request(action), &config)),
                SkipReason::PullRequestActionNotBuilt,
                "{action}"
            );
        }
    }

    #[test]
    fn publish_opt_in_is_literal() {
        let config = DecisionConfig::default();
        let plan = decide("pull_request", &pull_request("opened"), &config).unwrap();
        let publish = |spec: &str| {
            plan.builds(spec, &config).unwrap()[0].environment[vars::CI_PUBLISH].clone()
        };
        assert_eq!(
            publish("env:\n  variables:\n    PRX_CI_PUBLISH: true\n"),
            "true"
        );
        assert_eq!(publish("PRX_CI_PUBLISH: \"true\""), "true");
        assert_eq!(publish("PRX_CI_PUBLISH: 'true'"), "true");
        assert_eq!(publish("PRX_CI_PUBLISH: false"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH:true"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH:  true"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH: True"), "false");
        assert_eq!(publish("PRX_OTHER: 1"), "false");
    }

    #[test]
    fn architecture_markers_select_builds() {
        let config = DecisionConfig::default();
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        let arches = |spec: &str| {
            plan.builds(spec, &config)
                .unwrap()
                .into_iter()
                .map(|b| b.environment[vars::TARGET_ARCHITECTURE].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(arches("PRX_X"), ["x86_64"]);
        assert_eq!(arches("PRX_BUILD_AARCH64: 1"), ["aarch64"]);
        assert_eq!(
            arches("PRX_BUILD_AARCH64\nPRX_BUILD_X86_64"),
            ["x86_64", "aarch64"]
        );
        assert_eq!(arches("PRX_BUILD_X86_64: false"), ["x86_64"]);
        assert_eq!(
            reason(plan.builds("version: 0.2", &config).map(|_| plan.clone())),
            SkipReason::NoMarker
        );
    }

    #[test]
    fn owner_allow_list() {
        let mut config = DecisionConfig::default();
        assert!(decide("push", &push("refs/heads/main", SHA_A), &config).is_ok());
        config.allowed_owners = vec!["prx".into()];
        assert!(decide("push", &push("refs/heads/main", SHA_A), &config).is_ok());
        config.allowed_owners = vec!["Other".into()];
        assert_eq!(
            reason(decide("push", &push("refs/heads/main", SHA_A), &config)),
            SkipReason::OwnerNotAllowed
        );
    }

    #[test]
    fn other_events_and_garbage() {
        let config = DecisionConfig::default();
        assert_eq!(
            reason(decide("issues", b"{}", &config)),
            SkipReason::EventTypeNotBuilt
        );
        assert_eq!(
            reason(decide("push", b"[1]", &config)),
            SkipReason::MalformedPayload
        );
        assert_eq!(
            reason(decide("push", b"not json", &config)),
            SkipReason::MalformedPayload
        );
        let skip = decide("push", br#"{"ref":"refs/heads/main"}"#, &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::MalformedPayload);
        assert_eq!(skip.detail, "missing repository.full_name");
    }
}
