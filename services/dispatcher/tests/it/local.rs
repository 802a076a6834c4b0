//! The local buildspec source (`git` on a `file://` clone URL) against real repositories, and
//! the dispatcher running with it (the `prx-ci up` wiring).

use std::path::Path;
use std::sync::Arc;

use prx_ci_dispatcher::DispatcherConfig;
use prx_ci_dispatcher::LocalGitBuildspecSource;
use prx_ci_dispatcher::buildspec::{Buildspec, BuildspecError, BuildspecRequest, BuildspecSource};
use prx_ci_shared::domain::{CommitSha, RepoName};
use serde_json::json;

use prx_ci_shared::testing::git::git;

use crate::utils::*;

/// A repository with a commit without buildspec, then one with; and a bare clone of it.
struct Repo {
    _dir: tempfile::TempDir,
    work: std::path::PathBuf,
    bare: std::path::PathBuf,
    without: String,
    with: String,
}

const SPEC: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_AARCH64: yes\n";

fn repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hi\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let without = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("buildspec.yml"), SPEC).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "second"]);
    let with = git(&work, &["rev-parse", "HEAD"]);
    let bare = dir.path().join("bare.git");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    Repo {
        _dir: dir,
        work,
        bare,
        without,
        with,
    }
}

fn url(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

async fn fetch(clone_url: &str, sha: &str) -> Result<Buildspec, BuildspecError> {
    let repository = RepoName::parse("local/app").unwrap();
    let commit = CommitSha::parse(sha).unwrap();
    LocalGitBuildspecSource::new()
        .fetch(BuildspecRequest {
            repository: &repository,
            commit: &commit,
            clone_url,
        })
        .await
}

#[tokio::test]
async fn reads_the_buildspec_at_the_commit_from_working_and_bare_repositories() {
    let repo = repo();
    for path in [&repo.work, &repo.bare] {
        assert_eq!(
            fetch(&url(path), &repo.with).await.unwrap(),
            Buildspec::Found(SPEC.to_owned())
        );
        assert!(matches!(
            fetch(&url(path), &repo.without).await.unwrap(),
            Buildspec::NotFound { .. }
        ));
    }
    // A commit that is not there is an error an operator sees, not a skip.
    assert!(matches!(
        fetch(&url(&repo.work), &"f".repeat(40)).await,
        Err(BuildspecError::Transient(_))
    ));
    assert!(matches!(
        fetch("https://github.com/PRX/app.git", &repo.with).await,
        Err(BuildspecError::Permanent(_))
    ));
}

#[tokio::test]
async fn the_dispatcher_builds_a_local_repository() {
    let repo = repo();
    let nats = Nats::start().await;
    let backend = Arc::new(FakeBackend::default());
    let running = start(
        &nats,
        DispatcherConfig::default(),
        Arc::new(LocalGitBuildspecSource::new()),
        backend.clone(),
    );
    let clone_url = url(&repo.bare);
    let payload = |sha: &str, before: &str| {
        json!({
            "ref": "refs/heads/main",
            "before": before,
            "after": sha,
            "repository": {
                "full_name": "local/app",
                "default_branch": "main",
                "clone_url": clone_url,
            },
        })
    };
    nats.webhook("push", &payload(&repo.without, &"0".repeat(40)), "local-1")
        .await;
    nats.webhook("push", &payload(&repo.with, &repo.without), "local-2")
        .await;
    let skipped = nats.wait_for("BuildSkipped", 1, is_skipped).await;
    assert_eq!(
        skipped[0].reason,
        prx_ci_proto::v1::SkipReason::NoBuildspec as i32
    );
    let requested = nats.wait_for("BuildRequested", 1, is_requested).await;
    assert_eq!(requested[0].clone_url, clone_url);
    assert_eq!(
        requested[0].source_version,
        format!("refs/heads/main^{{{}}}", repo.with)
    );
    assert_eq!(
        requested[0].environment["PRX_TARGET_ARCHITECTURE"],
        "aarch64"
    );
    let started = backend.started().await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].request.buildspec, SPEC);
    assert_eq!(started[0].request.clone_url, clone_url);
    running.stop().await;
}
