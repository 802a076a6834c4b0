//! The trigger rules: which webhooks build (push, pull request, fork, owner), from the payload.

use prx_ci_shared::domain::{Branch, CommitSha, OrderingKey, RepoName};
use serde_json::Value;

use super::{BuildPlan, DecisionConfig, ForkPolicy, Skip, SkipReason, Trigger};

/// Pull-request actions that start builds (the original's list; `unlocked` since Dec 2021).
pub const PULL_REQUEST_ACTIONS_BUILT: [&str; 5] = [
    "opened",
    "reopened",
    "synchronize",
    "ready_for_review",
    "unlocked",
];

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
    use prx_ci_proto::v1;
    use prx_ci_shared::domain::CommitSha;
    use serde_json::Value;

    use super::super::fixtures::*;
    use super::*;

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
