//! Operator rebuilds (pure part): which branch and commit a `prx-ci rebuild` means, and the
//! push payload synthesized for it.
//!
//! A rebuild is stored as a `WebhookReceived` with origin OPERATOR, so it takes exactly the
//! dispatcher's push path (same trigger rules, same variables) and is recorded in the history
//! like any push. Like any push it is the newest push of its branch when stored: rebuilding an
//! older commit makes that commit the one published (as a force-push back would).
//!
//! Because a rebuild is a push (and a push to the default branch publishes), only GitHub's own
//! pushes to a branch of this repository say what is on that branch: a pull request's head
//! branch is a name its author chose (a fork's `main` is not this repository's `main`), and an
//! operator's earlier rebuild is not GitHub's word either. A commit given by hand is rebuilt on
//! a branch only if it is in the history of that branch's head ([`Target::head`]); the API
//! checks that (`crate::ancestry`) before storing anything.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use prx_ci_proto::v1::{self, WebhookReceived};

/// The all-zero SHA GitHub sends as `before` of a new branch.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Why a revision cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no webhook of {0} was ever stored; cannot tell its default branch and clone URL")]
    UnknownRepository(String),
    #[error(
        "GitHub never reported a push to branch {branch:?} of {repository} (pull request head \
         branches do not count)"
    )]
    UnknownBranch { repository: String, branch: String },
    #[error("branch {branch:?} of {repository} was deleted (its last push)")]
    DeletedBranch { repository: String, branch: String },
    #[error(
        "no push to {repository} mentions {revision:?} (give the full SHA to rebuild a commit \
         in a branch's history that was never pushed as a head)"
    )]
    UnknownRevision {
        repository: String,
        revision: String,
    },
    #[error("commit prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("revision {revision:?} is a branch name, but branch {branch:?} was asked for")]
    BranchMismatch { revision: String, branch: String },
}

/// What a rebuild builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub branch: String,
    pub commit: String,
    /// The branch's current head (GitHub's latest push to it). A `commit` other than the head
    /// is rebuilt only once it is known to be an ancestor of the head.
    pub head: String,
    /// The repository object of the latest webhook (what the dispatcher reads from it).
    pub repository: Value,
}

impl Target {
    /// Whether the commit must be shown to be in the head's history first.
    pub fn needs_ancestry_check(&self) -> bool {
        self.commit != self.head
    }
}

fn is_sha_like(s: &str) -> bool {
    (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A push GitHub reported to a branch of the repository: the branch and its new head (`None`:
/// the branch was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BranchPush {
    branch: String,
    head: Option<String>,
}

/// GitHub's push to a branch of `repository`, if `webhook` is one. Operator rebuilds, tag
/// pushes, pull request events and payloads naming another repository are not.
fn branch_push(repository: &str, webhook: &WebhookReceived, body: &Value) -> Option<BranchPush> {
    if webhook.event_name != "push" || webhook.origin() == v1::Origin::Operator {
        return None;
    }
    let full_name = body.pointer("/repository/full_name")?.as_str()?;
    if !full_name.eq_ignore_ascii_case(repository) {
        return None;
    }
    let branch = body
        .get("ref")?
        .as_str()?
        .strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())?;
    let deleted = body.get("deleted").and_then(Value::as_bool) == Some(true);
    let head = body
        .get("after")
        .and_then(Value::as_str)
        .filter(|sha| !deleted && sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|sha| *sha != ZERO_SHA)
        .map(str::to_ascii_lowercase);
    Some(BranchPush {
        branch: branch.to_owned(),
        head,
    })
}

/// Resolves `revision` (a commit SHA or prefix, or a branch name) and the optional `branch` a
/// commit is to be rebuilt on, against the repository's webhooks (oldest first).
pub fn resolve(
    repository: &str,
    revision: &str,
    branch: Option<&str>,
    webhooks: &[WebhookReceived],
) -> Result<Target, ResolveError> {
    let mut repo_object = None;
    // GitHub's pushes to branches of this repository, oldest first.
    let mut pushes: Vec<BranchPush> = Vec::new();
    for webhook in webhooks {
        let Ok(body) = serde_json::from_slice::<Value>(&webhook.payload) else {
            continue;
        };
        if let Some(repo) = body.get("repository").filter(|r| r.is_object()) {
            repo_object = Some(repo.clone());
        }
        pushes.extend(branch_push(repository, webhook, &body));
    }
    let repository_object =
        repo_object.ok_or_else(|| ResolveError::UnknownRepository(repository.to_owned()))?;
    let default_branch = repository_object
        .get("default_branch")
        .and_then(Value::as_str)
        .unwrap_or("main")
        .to_owned();
    // Each branch's current head: its latest push.
    let heads: BTreeMap<&str, Option<&str>> = pushes
        .iter()
        .map(|p| (p.branch.as_str(), p.head.as_deref()))
        .collect();
    let head_of = |branch: &str| -> Result<String, ResolveError> {
        match heads.get(branch) {
            Some(Some(head)) => Ok((*head).to_owned()),
            Some(None) => Err(ResolveError::DeletedBranch {
                repository: repository.to_owned(),
                branch: branch.to_owned(),
            }),
            None => Err(ResolveError::UnknownBranch {
                repository: repository.to_owned(),
                branch: branch.to_owned(),
            }),
        }
    };
    let target = |branch: String, commit: String| -> Result<Target, ResolveError> {
        Ok(Target {
            head: head_of(&branch)?,
            branch,
            commit,
            repository: repository_object.clone(),
        })
    };

    if is_sha_like(revision) {
        let wanted = revision.to_ascii_lowercase();
        let distinct: std::collections::BTreeSet<&str> = pushes
            .iter()
            .filter_map(|p| p.head.as_deref())
            .filter(|c| c.starts_with(&wanted))
            .collect();
        let commit = match distinct.len() {
            // Never a pushed head, but a full SHA: the ancestry check decides.
            0 if revision.len() == 40 => Some(wanted),
            0 => None,
            1 => distinct.first().map(|c| (*c).to_owned()),
            _ => return Err(ResolveError::Ambiguous(revision.to_owned())),
        };
        if let Some(commit) = commit {
            let branch = match branch {
                Some(branch) => branch.to_owned(),
                None => {
                    // A branch GitHub pushed it to, the default branch first, else the latest.
                    let pushed_to: Vec<&str> = pushes
                        .iter()
                        .filter(|p| p.head.as_deref() == Some(commit.as_str()))
                        .map(|p| p.branch.as_str())
                        .collect();
                    if pushed_to.is_empty() || pushed_to.contains(&default_branch.as_str()) {
                        default_branch.clone()
                    } else {
                        pushed_to[pushed_to.len() - 1].to_owned()
                    }
                }
            };
            return target(branch, commit);
        }
    }
    if heads.contains_key(revision) {
        if let Some(branch) = branch.filter(|b| *b != revision) {
            return Err(ResolveError::BranchMismatch {
                revision: revision.to_owned(),
                branch: branch.to_owned(),
            });
        }
        let head = head_of(revision)?;
        return target(revision.to_owned(), head);
    }
    if is_sha_like(revision) {
        return Err(ResolveError::UnknownRevision {
            repository: repository.to_owned(),
            revision: revision.to_owned(),
        });
    }
    Err(ResolveError::UnknownBranch {
        repository: repository.to_owned(),
        branch: revision.to_owned(),
    })
}

/// The push payload of a rebuild: what the dispatcher's push path reads (`ref`, `after`,
/// `before`, `repository{full_name, default_branch, clone_url, owner}`, `head_commit`), marked
/// as an operator's: `requested_by` is the authenticated operator, `reason` the caller's text.
pub fn push_payload(
    full_name: &str,
    target: &Target,
    requested_by: &str,
    reason: &str,
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
        // A rebuild is a new push, placed at the time the operator asked (not at the time of
        // the push whose repository object it copies): see docs/ordering.md.
        let asked_at = time::OffsetDateTime::parse(
            now_rfc3339,
            &time::format_description::well_known::Rfc3339,
        )
        .map(time::OffsetDateTime::unix_timestamp);
        match asked_at {
            Ok(seconds) => object.insert("pushed_at".into(), json!(seconds)),
            Err(_) => object.remove("pushed_at"),
        };
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
            "message": match reason {
                "" => format!("Rebuild requested by {requested_by}"),
                reason => format!("Rebuild requested by {requested_by}: {reason}"),
            },
            "timestamp": now_rfc3339,
        },
        "commits": [],
        "prx_ci_operator": {
            "requested_by": requested_by,
            "reason": reason,
            "branch_head": target.head,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
    const F: &str = "ffffffffffffffffffffffffffffffffffffffff";

    fn push(branch: &str, after: &str) -> WebhookReceived {
        WebhookReceived {
            event_name: "push".into(),
            repository: "PRX/app".into(),
            origin: v1::Origin::Github as i32,
            payload: json!({
                "ref": format!("refs/heads/{branch}"),
                "after": after,
                "repository": {
                    "full_name": "PRX/app",
                    "default_branch": "main",
                    "clone_url": "https://github.com/PRX/app.git",
                    "owner": {"login": "PRX"},
                    "pushed_at": 1_700_000_000,
                    "private": true
                }
            })
            .to_string()
            .into_bytes()
            .into(),
            ..Default::default()
        }
    }

    /// A pull request whose head branch is `head_ref` (a fork's, when `fork`).
    fn pr(head_ref: &str, sha: &str, fork: bool) -> WebhookReceived {
        let head_repo = if fork { "mallory/app" } else { "PRX/app" };
        WebhookReceived {
            event_name: "pull_request".into(),
            repository: "PRX/app".into(),
            origin: v1::Origin::Github as i32,
            payload: json!({"action": "synchronize", "number": 3,
                "repository": {"full_name": "PRX/app", "default_branch": "main"},
                "pull_request": {"number": 3, "head": {"ref": head_ref, "sha": sha,
                    "repo": {"full_name": head_repo}}}})
            .to_string()
            .into_bytes()
            .into(),
            ..Default::default()
        }
    }

    fn resolved(hooks: &[WebhookReceived], revision: &str) -> (String, String, String) {
        let t = resolve("PRX/app", revision, None, hooks).unwrap();
        (t.branch, t.commit, t.head)
    }

    fn owned(branch: &str, commit: &str, head: &str) -> (String, String, String) {
        (branch.into(), commit.into(), head.into())
    }

    #[test]
    fn a_branch_resolves_to_its_latest_push() {
        let hooks = [push("main", A), push("dev", C), push("main", B)];
        let t = resolve("PRX/app", "main", None, &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.commit.as_str()), ("main", B));
        assert!(!t.needs_ancestry_check());
        assert_eq!(t.repository["private"], true);
        assert!(matches!(
            resolve("PRX/app", "nope", None, &hooks),
            Err(ResolveError::UnknownBranch { .. })
        ));
    }

    #[test]
    fn a_pull_requests_head_branch_is_never_a_branch_of_the_repository() {
        // A fork's PR whose head branch is called `main`, after the real main's push.
        let hooks = [push("main", A), pr("main", F, true)];
        assert_eq!(resolved(&hooks, "main"), owned("main", A, A));
        // With no push to `main` at all, `main` is unknown rather than the fork's head.
        let err = resolve("PRX/app", "main", None, &[pr("main", F, true)]).unwrap_err();
        assert_eq!(
            err,
            ResolveError::UnknownBranch {
                repository: "PRX/app".into(),
                branch: "main".into()
            }
        );
        assert!(err.to_string().contains("pull request head"), "{err}");
        // A PR head commit is not a pushed head: its prefix resolves to nothing ...
        assert!(matches!(
            resolve("PRX/app", &F[..10], None, &hooks),
            Err(ResolveError::UnknownRevision { .. })
        ));
        // ... and its full SHA goes on the default branch, pending the ancestry check.
        let t = resolve("PRX/app", F, None, &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.head.as_str()), ("main", A));
        assert!(t.needs_ancestry_check());
    }

    #[test]
    fn operator_pushes_and_other_repositories_do_not_move_a_branch_head() {
        let mut rebuild = push("main", C);
        rebuild.origin = v1::Origin::Operator as i32;
        let mut other: WebhookReceived = push("main", F);
        other.payload = String::from_utf8(other.payload.to_vec())
            .unwrap()
            .replace("PRX/app", "PRX/other")
            .into_bytes()
            .into();
        let hooks = [push("main", A), rebuild, other];
        assert_eq!(resolved(&hooks, "main"), owned("main", A, A));
    }

    #[test]
    fn a_commit_resolves_to_the_branch_it_was_pushed_to_and_that_branchs_head() {
        let hooks = [
            push("dev", A),
            push("main", A),
            push("feature", C),
            push("main", B),
        ];
        // Pushed to main and dev: main, whose head is now B.
        assert_eq!(resolved(&hooks, "aaaaaaa"), owned("main", A, B));
        assert_eq!(resolved(&hooks, C), owned("feature", C, C));
        // A full SHA never pushed as a head goes on the default branch.
        let unseen = "dddddddddddddddddddddddddddddddddddddddd";
        assert_eq!(resolved(&hooks, unseen), owned("main", unseen, B));
        // Or on the branch asked for.
        let t = resolve("PRX/app", unseen, Some("dev"), &hooks).unwrap();
        assert_eq!((t.branch.as_str(), t.head.as_str()), ("dev", A));
        assert!(matches!(
            resolve("PRX/app", unseen, Some("gone"), &hooks),
            Err(ResolveError::UnknownBranch { .. })
        ));
        assert_eq!(
            resolve("PRX/app", "main", Some("dev"), &hooks),
            Err(ResolveError::BranchMismatch {
                revision: "main".into(),
                branch: "dev".into()
            })
        );
        assert_eq!(
            resolve("PRX/app", "A", None, &[]),
            Err(ResolveError::UnknownRepository("PRX/app".into()))
        );
    }

    #[test]
    fn a_deleted_branch_has_no_head() {
        let mut deleted = push("dev", ZERO_SHA);
        deleted.payload = String::from_utf8(deleted.payload.to_vec())
            .unwrap()
            .replacen('{', "{\"deleted\":true,", 1)
            .into_bytes()
            .into();
        let hooks = [push("dev", A), deleted];
        assert!(matches!(
            resolve("PRX/app", "dev", None, &hooks),
            Err(ResolveError::DeletedBranch { .. })
        ));
    }

    #[test]
    fn ambiguous_prefixes_are_refused() {
        let one = "abcdef0111111111111111111111111111111111";
        let two = "abcdef0222222222222222222222222222222222";
        let hooks = [push("main", one), push("main", two)];
        assert_eq!(
            resolve("PRX/app", "abcdef0", None, &hooks),
            Err(ResolveError::Ambiguous("abcdef0".into()))
        );
    }

    #[test]
    fn the_payload_takes_the_dispatchers_push_path() {
        let target = resolve("PRX/app", "main", None, &[push("main", A)]).unwrap();
        let body = push_payload(
            "PRX/app",
            &target,
            "alice",
            "redeploy after outage",
            "2026-01-01T00:00:00Z",
        );
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
        assert_eq!(
            body["head_commit"]["message"],
            "Rebuild requested by alice: redeploy after outage"
        );
        assert_eq!(body["prx_ci_operator"]["requested_by"], "alice");
        assert_eq!(body["prx_ci_operator"]["reason"], "redeploy after outage");
        assert_eq!(body["deleted"], false);
        assert_eq!(
            body["repository"]["pushed_at"], 1_767_225_600,
            "a rebuild is a push at the time the operator asked"
        );
    }
}
