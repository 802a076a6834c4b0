//! Operator rebuilds (pure part): which branch and commit a `prx-ci rebuild` means, and the
//! push payload synthesized for it.
//!
//! A rebuild is stored as a `WebhookReceived` with origin OPERATOR, so it takes exactly the
//! dispatcher's push path (same trigger rules, same variables) and is recorded in the history
//! like any push. Like any push it is the newest push of its branch when stored: rebuilding an
//! older commit makes that commit the one published (as a force-push back would).

use serde_json::{Value, json};

use crate::history::webhook_facts;
use prx_ci_proto::v1::WebhookReceived;

/// The all-zero SHA GitHub sends as `before` of a new branch.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Why a revision cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no webhook of {0} was ever stored; cannot tell its default branch and clone URL")]
    UnknownRepository(String),
    #[error("no push or pull request of {repository} mentions {revision:?}")]
    UnknownRevision {
        repository: String,
        revision: String,
    },
    #[error("commit prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

/// What a rebuild builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub branch: String,
    pub commit: String,
    /// The repository object of the latest webhook (what the dispatcher reads from it).
    pub repository: Value,
}

fn is_sha_like(s: &str) -> bool {
    (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves `revision` (a commit SHA or prefix, or a branch name) against the repository's
/// webhooks (oldest first).
pub fn resolve(
    repository: &str,
    revision: &str,
    webhooks: &[WebhookReceived],
) -> Result<Target, ResolveError> {
    let mut repo_object = None;
    // (branch, commit) of every push and PR head, oldest first.
    let mut seen: Vec<(String, String)> = Vec::new();
    for webhook in webhooks {
        let Ok(body) = serde_json::from_slice::<Value>(&webhook.payload) else {
            continue;
        };
        if let Some(repo) = body.get("repository").filter(|r| r.is_object()) {
            repo_object = Some(repo.clone());
        }
        let facts = webhook_facts(webhook);
        let branch = facts.branch.or_else(|| {
            body.pointer("/pull_request/head/ref")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if let (Some(branch), Some(commit)) = (branch, facts.commit) {
            seen.push((branch, commit.to_ascii_lowercase()));
        }
    }
    let repository_object =
        repo_object.ok_or_else(|| ResolveError::UnknownRepository(repository.to_owned()))?;
    let default_branch = repository_object
        .get("default_branch")
        .and_then(Value::as_str)
        .unwrap_or("main")
        .to_owned();
    let unknown = || ResolveError::UnknownRevision {
        repository: repository.to_owned(),
        revision: revision.to_owned(),
    };

    if is_sha_like(revision) {
        let wanted = revision.to_ascii_lowercase();
        let mut commits: Vec<&(String, String)> = seen
            .iter()
            .filter(|(_, c)| c.starts_with(&wanted))
            .collect();
        let distinct: std::collections::BTreeSet<&str> =
            commits.iter().map(|(_, c)| c.as_str()).collect();
        match distinct.len() {
            0 if revision.len() == 40 => {
                // Never seen, but a full SHA: build it on the default branch.
                return Ok(Target {
                    branch: default_branch,
                    commit: wanted,
                    repository: repository_object,
                });
            }
            0 => {}
            1 => {
                // Prefer the default branch when the commit was seen on several.
                commits.sort_by_key(|(b, _)| *b != default_branch);
                let (branch, commit) = commits[0].clone();
                return Ok(Target {
                    branch,
                    commit,
                    repository: repository_object,
                });
            }
            _ => return Err(ResolveError::Ambiguous(revision.to_owned())),
        }
    }
    let (branch, commit) = seen
        .iter()
        .rev()
        .find(|(b, _)| b == revision)
        .cloned()
        .ok_or_else(unknown)?;
    Ok(Target {
        branch,
        commit,
        repository: repository_object,
    })
}

/// The push payload of a rebuild: what the dispatcher's push path reads (`ref`, `after`,
/// `before`, `repository{full_name, default_branch, clone_url, owner}`, `head_commit`), marked
/// as an operator's.
pub fn push_payload(
    full_name: &str,
    target: &Target,
    requested_by: &str,
    now_rfc3339: &str,
) -> Value {
    let mut repository = target.repository.clone();
    if let Some(object) = repository.as_object_mut() {
        object.insert("full_name".into(), json!(full_name));
        let (owner, name) = full_name.split_once('/').unwrap_or((full_name, ""));
        object.entry("name").or_insert_with(|| json!(name));
        object
            .entry("owner")
            .or_insert_with(|| json!({ "login": owner, "name": owner }));
        object
            .entry("clone_url")
            .or_insert_with(|| json!(format!("https://github.com/{full_name}.git")));
        object
            .entry("default_branch")
            .or_insert_with(|| json!("main"));
    }
    json!({
        "ref": format!("refs/heads/{}", target.branch),
        "before": ZERO_SHA,
        "after": target.commit,
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": repository,
        "pusher": { "name": requested_by },
        "sender": { "login": requested_by },
        "head_commit": {
            "id": target.commit,
            "message": format!("Rebuild requested by {requested_by}"),
            "timestamp": now_rfc3339,
        },
        "commits": [],
        "prx_ci_operator": { "requested_by": requested_by },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn push(branch: &str, after: &str) -> WebhookReceived {
        WebhookReceived {
            event_name: "push".into(),
            repository: "PRX/app".into(),
            payload: json!({
                "ref": format!("refs/heads/{branch}"),
                "after": after,
                "repository": {
                    "full_name": "PRX/app",
                    "default_branch": "main",
                    "clone_url": "https://github.com/PRX/app.git",
                    "owner": {"login": "PRX"},
                    "private": true
                }
            })
            .to_string()
            .into_bytes(),
            ..Default::default()
        }
    }

    fn pr(head_ref: &str, sha: &str) -> WebhookReceived {
        WebhookReceived {
            event_name: "pull_request".into(),
            payload: json!({"action": "synchronize", "number": 3,
                "pull_request": {"number": 3, "head": {"ref": head_ref, "sha": sha}}})
            .to_string()
            .into_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn a_branch_resolves_to_its_latest_push() {
        let hooks = [push("main", A), push("dev", C), push("main", B)];
        let t = resolve("PRX/app", "main", &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.commit.as_str()), ("main", B));
        assert_eq!(t.repository["private"], true);
        assert!(matches!(
            resolve("PRX/app", "nope", &hooks),
            Err(ResolveError::UnknownRevision { .. })
        ));
    }

    #[test]
    fn a_commit_resolves_to_the_branch_it_was_pushed_to() {
        let hooks = [push("dev", A), push("main", A), pr("feature", C)];
        let t = resolve("PRX/app", "aaaaaaa", &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.commit.as_str()), ("main", A));
        let t = resolve("PRX/app", C, &hooks).unwrap();
        assert_eq!(t.branch, "feature");
        // A full SHA never seen builds on the default branch.
        let t = resolve("PRX/app", B, &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.commit.as_str()), ("main", B));
        assert_eq!(
            resolve("PRX/app", "A", &[]),
            Err(ResolveError::UnknownRepository("PRX/app".into()))
        );
    }

    #[test]
    fn ambiguous_prefixes_are_refused() {
        let hooks = [push("main", "abcdef0111"), push("main", "abcdef0222")];
        assert_eq!(
            resolve("PRX/app", "abcdef0", &hooks),
            Err(ResolveError::Ambiguous("abcdef0".into()))
        );
    }

    #[test]
    fn the_payload_takes_the_dispatchers_push_path() {
        let target = resolve("PRX/app", "main", &[push("main", A)]).unwrap();
        let body = push_payload("PRX/app", &target, "alice", "2026-01-01T00:00:00Z");
        assert_eq!(body["ref"], "refs/heads/main");
        assert_eq!(body["after"], A);
        assert_eq!(body["before"], ZERO_SHA);
        assert_eq!(body["repository"]["default_branch"], "main");
        assert_eq!(
            body["repository"]["clone_url"],
            "https://github.com/PRX/app.git"
        );
        assert_eq!(body["repository"]["owner"]["login"], "PRX");
        assert_eq!(body["head_commit"]["id"], A);
        assert_eq!(body["deleted"], false);
    }
}
