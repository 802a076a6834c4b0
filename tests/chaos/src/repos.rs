//! The run's git repositories (`file://` clones for the runner) with one commit per planned
//! push, every lane a branch (pull requests also under `refs/pull/N/head`), and each commit's
//! buildspec: a short build exporting the value the publisher maps into the repository's SSM
//! parameter, or failing by its own fault.

use std::collections::HashMap;
use std::path::Path;

use prx_ci_shared::testing::git::git;

use crate::plan::{LaneKind, Plan, PushPlan, RepoPlan};

/// The created repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repos {
    /// Commit of each push (by push id).
    pub commits: Vec<String>,
    /// Commit before each push on its lane (`None`: the lane's first push).
    pub befores: Vec<Option<String>>,
    /// `file://` clone URL of each repository.
    pub clone_urls: Vec<String>,
}

/// The value a build of `commit` publishes.
pub fn published_value(commit: &str) -> String {
    format!("chaos-{commit}")
}

/// The buildspec of `push` in `repo`.
pub fn buildspec(repo: &RepoPlan, push: &PushPlan) -> String {
    let markers = if repo.both_architectures {
        "PRX_BUILD_X86_64 PRX_BUILD_AARCH64 PRX_PRIMARY_X86_64"
    } else {
        "PRX_BUILD_X86_64"
    };
    let sleep = format!("{}.{:03}", push.build_ms / 1000, push.build_ms % 1000);
    let fail = if push.fails { "\n      - exit 1" } else { "" };
    format!(
        "version: 0.2\n# markers: {markers}\nenv:\n  variables:\n    PRX_SPIRE_ECR_PKG_PARAMETERS: \"APP={parameter}\"\n  \
         exported-variables:\n    - PRX_SPIRE_ECR_PKG_PARAMETERS\n    - APP\nphases:\n  build:\n    commands:\n      \
         - sleep {sleep}; export APP=\"chaos-$PRX_COMMIT\"{fail}\n",
        parameter = repo.parameter,
    )
}

/// Creates every repository of `plan` under `dir` with fixed dates and identities, so one seed
/// always gives the same commits.
pub fn create(dir: &Path, plan: &Plan) -> anyhow::Result<Repos> {
    let mut roots = Vec::new();
    let mut clone_urls = Vec::new();
    for (i, repo) in plan.repos.iter().enumerate() {
        let path = dir.join(format!("app-{i}"));
        std::fs::create_dir_all(&path)?;
        git(&path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("README"), format!("{}\n", repo.name))?;
        git(&path, &["add", "README"]);
        let tree = git(&path, &["write-tree"]);
        let root = commit_tree(&path, &tree, None, "root");
        roots.push((path.clone(), tree, root));
        clone_urls.push(
            url::Url::from_file_path(&path)
                .map_err(|()| anyhow::anyhow!("not an absolute path: {}", path.display()))?
                .to_string(),
        );
    }
    let mut tips: HashMap<(usize, LaneKind), String> = HashMap::new();
    let mut commits = Vec::new();
    let mut befores = Vec::new();
    for push in &plan.pushes {
        let (path, tree, root) = &roots[push.repo];
        let key = (push.repo, push.lane.clone());
        let before = tips.get(&key).cloned();
        let parent = before.clone().unwrap_or_else(|| root.clone());
        let message = format!(
            "push {} ({} #{})",
            push.id,
            push.lane.branch(),
            push.index_in_lane
        );
        let commit = commit_tree(path, tree, Some(&parent), &message);
        tips.insert(key, commit.clone());
        commits.push(commit);
        befores.push(before);
    }
    for (repo, (path, _, root)) in roots.iter().enumerate() {
        if !tips.contains_key(&(repo, LaneKind::Main)) {
            git(path, &["update-ref", "refs/heads/main", root]);
        }
    }
    for ((repo, lane), tip) in &tips {
        let path = &roots[*repo].0;
        git(path, &["update-ref", &lane.git_ref(), tip]);
        if matches!(lane, LaneKind::PullRequest(_)) {
            git(
                path,
                &["update-ref", &format!("refs/heads/{}", lane.branch()), tip],
            );
        }
    }
    Ok(Repos {
        commits,
        befores,
        clone_urls,
    })
}

fn commit_tree(path: &Path, tree: &str, parent: Option<&str>, message: &str) -> String {
    let mut args = vec!["commit-tree", tree, "-m", message];
    if let Some(parent) = parent {
        args.extend(["-p", parent]);
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(args)
        .env("GIT_AUTHOR_NAME", "chaos")
        .env("GIT_AUTHOR_EMAIL", "chaos@prx.invalid")
        .env("GIT_COMMITTER_NAME", "chaos")
        .env("GIT_COMMITTER_EMAIL", "chaos@prx.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git commit-tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanConfig;

    #[test]
    fn every_push_has_its_own_commit_on_its_lane() {
        let dir = std::env::temp_dir().join(format!("chaos-repos-{}", std::process::id()));
        let plan = Plan::new(PlanConfig::new(1, 30));
        let repos = create(&dir, &plan).unwrap();
        let unique: std::collections::HashSet<_> = repos.commits.iter().collect();
        assert_eq!(unique.len(), plan.pushes.len());
        for push in &plan.pushes {
            let lane = plan.lane(push.repo, &push.lane);
            let path = dir.join(format!("app-{}", push.repo));
            if push.index_in_lane > 0 {
                let previous = lane[push.index_in_lane - 1].id;
                assert_eq!(
                    repos.befores[push.id].as_deref(),
                    Some(repos.commits[previous].as_str())
                );
                let parent = git(
                    &path,
                    &["rev-parse", &format!("{}^", repos.commits[push.id])],
                );
                assert_eq!(parent, repos.commits[previous]);
            }
            if push.index_in_lane + 1 == lane.len() {
                let tip = git(&path, &["rev-parse", &push.lane.git_ref()]);
                assert_eq!(tip, repos.commits[push.id]);
            }
        }
        // Same seed, same commits.
        let again = dir.join("again");
        assert_eq!(create(&again, &plan).unwrap().commits, repos.commits);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_push_exits_1_and_the_first_repository_builds_two_architectures() {
        let plan = Plan::new(PlanConfig::new(2, 40));
        let failing = plan.pushes.iter().find(|p| p.fails).unwrap();
        let text = buildspec(&plan.repos[failing.repo], failing);
        assert!(text.contains("- exit 1"), "{text}");
        assert!(text.contains("PRX_SPIRE_ECR_PKG_PARAMETERS: \"APP=/prx/stag/Spire/ChaosApp"));
        let two = buildspec(&plan.repos[0], &plan.pushes[0]);
        assert!(two.contains("PRX_BUILD_AARCH64"));
    }
}
