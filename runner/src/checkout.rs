//! DOWNLOAD_SOURCE: fetching the repository and checking out the requested version.
//!
//! `<ref>^{<sha>}` (what the dispatcher sends): a shallow fetch of that one ref, deepened to
//! the ref's history when the commit is not its tip; the commit must be reachable from the ref.
//! A bare commit, branch or tag: a full clone, else fetched by name (`pr/N` as a GitHub pull
//! request). git's output goes to the build log, and every git process runs in its own group,
//! killed on stop or timeout.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::Context as _;
use prx_ci_shared::codebuild::build::SourceVersion;
use prx_ci_shared::domain::CommitSha;
use tokio::process::Command;

use crate::build_log::BuildLog;
use crate::outcome::{InterruptWatch, Interruption};
use crate::process::{exit_text, run_in_group};

/// What to check out, and where.
#[derive(Debug)]
pub struct Checkout<'a> {
    pub clone_url: &'a str,
    /// Any form of [`SourceVersion`].
    pub source_version: &'a str,
    /// Created by the clone.
    pub src_dir: &'a Path,
    pub log: &'a BuildLog,
    pub watch: &'a InterruptWatch,
}

/// `git checkout` of `rev` as a detached head; the `--` keeps a rev from being read as a path.
fn checkout_args(rev: &str) -> Vec<String> {
    ["checkout", "--quiet", "--detach", rev, "--"]
        .map(str::to_owned)
        .to_vec()
}

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The exit status of a git run, or returns the interruption that cut it short.
macro_rules! finished {
    ($run:expr) => {
        match $run {
            Ok(status) => status,
            Err(why) => return Ok(Err(why)),
        }
    };
}

impl Checkout<'_> {
    /// Fetches and checks out the requested version; returns the resolved commit, or the
    /// interruption that cut it short.
    pub async fn run(&self) -> anyhow::Result<Result<String, Interruption>> {
        let version = SourceVersion::parse(self.source_version)?;
        let checked_out = match &version {
            SourceVersion::RefAt { git_ref, commit } => self.commit_of_ref(git_ref, commit).await?,
            SourceVersion::Commit(_) | SourceVersion::Name(_) => self.clone(&version).await?,
        };
        if let Err(why) = checked_out {
            return Ok(Err(why));
        }
        let resolved = self
            .rev_parse("HEAD")
            .await?
            .context("cannot resolve the checked-out commit (git rev-parse HEAD)")?;
        self.log
            .line(&format!("Checked out {version} ({resolved})"));
        Ok(Ok(resolved))
    }

    /// `<ref>^{<sha>}`: fetches only `git_ref`, shallowly, and checks out `commit`, which must
    /// be reachable from it (the ref's history is fetched when the commit is not its tip).
    async fn commit_of_ref(
        &self,
        git_ref: &str,
        commit: &CommitSha,
    ) -> anyhow::Result<Result<(), Interruption>> {
        let url = self.clone_url;
        let src = self.src_dir.display().to_string();
        self.log.line(&format!(
            "Fetching {git_ref} of {url} (depth 1) into {src} for {commit}"
        ));
        let init = args(&["-c", "init.defaultBranch=main", "init", "--quiet", &src]);
        let status = finished!(self.git(&init).await?);
        if !status.success() {
            anyhow::bail!("cannot create {src}: git init {}", exit_text(status));
        }
        // `--`: a URL that starts with `-` is never read as an option.
        let remote = args(&["remote", "add", "--", "origin", url]);
        let status = finished!(self.git_in_src(&remote).await?);
        if !status.success() {
            anyhow::bail!("cannot add remote {url}: git remote {}", exit_text(status));
        }
        let fetch = args(&["fetch", "--quiet", "--depth", "1", "origin", git_ref]);
        let status = finished!(self.git_in_src(&fetch).await?);
        if !status.success() {
            if git_ref.starts_with("refs/pull/") && url.starts_with("file://") {
                // A local repository has no GitHub pull request refs: the commit itself, as
                // for a bare SHA (a GitHub remote always has the ref).
                self.log.line(&format!(
                    "{git_ref} is not in the local repository {url}; checking out {commit} from a \
                     full clone"
                ));
                tokio::fs::remove_dir_all(self.src_dir)
                    .await
                    .with_context(|| format!("cannot remove {src}"))?;
                return self.clone(&SourceVersion::Commit(commit.clone())).await;
            }
            anyhow::bail!(
                "cannot check out {commit} of {git_ref}: cannot fetch {git_ref} from {url} (git \
                 fetch {})",
                exit_text(status)
            );
        }
        let tip = self
            .rev_parse("FETCH_HEAD^{commit}")
            .await?
            .with_context(|| format!("git fetch of {git_ref} left no commit"))?;
        if tip != commit.as_str() {
            self.log.line(&format!(
                "{git_ref} is at {tip}, not {commit}; fetching the history of {git_ref}"
            ));
            if self.src_dir.join(".git/shallow").exists() {
                let deepen = args(&["fetch", "--quiet", "--unshallow", "origin", git_ref]);
                let status = finished!(self.git_in_src(&deepen).await?);
                if !status.success() {
                    anyhow::bail!(
                        "cannot check out {commit} of {git_ref}: cannot fetch the history of \
                         {git_ref} from {url} (git fetch {})",
                        exit_text(status)
                    );
                }
            }
            let ancestor = args(&["merge-base", "--is-ancestor", commit.as_str(), &tip]);
            let status = finished!(self.git_in_src(&ancestor).await?);
            if !status.success() {
                anyhow::bail!(
                    "cannot check out {commit}: it is not reachable from {git_ref} of {url} \
                     ({git_ref} is at {tip})"
                );
            }
        }
        let status = finished!(self.git_in_src(&checkout_args(commit.as_str())).await?);
        if !status.success() {
            anyhow::bail!(
                "cannot check out {commit}: git checkout {}",
                exit_text(status)
            );
        }
        Ok(Ok(()))
    }

    /// A bare commit or a name: a full clone (CodeBuild too downloads the whole history to
    /// find a bare commit), then the version, fetched by name when the clone lacks it.
    async fn clone(&self, version: &SourceVersion) -> anyhow::Result<Result<(), Interruption>> {
        let url = self.clone_url;
        let src = self.src_dir.display().to_string();
        self.log.line(&format!("Cloning {url} into {src}"));
        let clone = args(&["clone", "--no-checkout", "--quiet", "--", url, &src]);
        let status = finished!(self.git(&clone).await?);
        if !status.success() {
            anyhow::bail!("cannot clone {url}: git clone {}", exit_text(status));
        }
        let rev = version.to_string();
        let status = finished!(self.git_in_src(&checkout_args(&rev)).await?);
        if status.success() {
            return Ok(Ok(()));
        }
        // Not a branch, tag or commit of the clone.
        let refspec = version.fetch_ref().unwrap_or_else(|| rev.clone());
        self.log
            .line(&format!("{rev} is not in the clone; fetching {refspec}"));
        let fetch = args(&["fetch", "--quiet", "origin", &refspec]);
        let status = finished!(self.git_in_src(&fetch).await?);
        if !status.success() {
            anyhow::bail!(
                "cannot check out {rev} of {url}: it is not in the repository (git fetch {})",
                exit_text(status)
            );
        }
        let status = finished!(self.git_in_src(&checkout_args("FETCH_HEAD")).await?);
        if !status.success() {
            anyhow::bail!("cannot check out {rev}: git checkout {}", exit_text(status));
        }
        Ok(Ok(()))
    }

    /// The commit `rev` names in the checkout, `None` when it names none.
    async fn rev_parse(&self, rev: &str) -> anyhow::Result<Option<String>> {
        let output = Command::new("git")
            .arg("-C")
            .arg(self.src_dir)
            .args(["rev-parse", "--verify", "--quiet", rev])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run git rev-parse")?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
    }

    async fn git_in_src(
        &self,
        args: &[String],
    ) -> anyhow::Result<Result<ExitStatus, Interruption>> {
        let mut all = vec!["-C".to_owned(), self.src_dir.display().to_string()];
        all.extend_from_slice(args);
        self.git(&all).await
    }

    /// Runs git in its own process group with its output in the build log; never prompts.
    async fn git(&self, args: &[String]) -> anyhow::Result<Result<ExitStatus, Interruption>> {
        let log = self.log.open()?;
        let mut cmd = Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().context("cannot share the build log")?,
            ))
            .stderr(Stdio::from(log));
        run_in_group(cmd, self.watch.wait())
            .await
            .context("cannot run git")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use tempfile::TempDir;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[test]
    fn the_revision_cannot_be_read_as_a_path() {
        assert_eq!(
            checkout_args("main"),
            ["checkout", "--quiet", "--detach", "main", "--"]
        );
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// An origin with two commits on `main` and one reachable only from `refs/pull/7/head`.
    struct Fixture {
        dir: TempDir,
        first: String,
        head: String,
        pull: String,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let origin = dir.path().join("origin");
            std::fs::create_dir(&origin).unwrap();
            git(&origin, &["init", "--quiet"]);
            git(
                &origin,
                &["commit", "--quiet", "--allow-empty", "-m", "one"],
            );
            let first = git(&origin, &["rev-parse", "HEAD"]);
            git(
                &origin,
                &["commit", "--quiet", "--allow-empty", "-m", "two"],
            );
            let head = git(&origin, &["rev-parse", "HEAD"]);
            git(&origin, &["checkout", "--quiet", "-b", "pull"]);
            git(&origin, &["commit", "--quiet", "--allow-empty", "-m", "pr"]);
            let pull = git(&origin, &["rev-parse", "HEAD"]);
            git(&origin, &["update-ref", "refs/pull/7/head", &pull]);
            git(&origin, &["checkout", "--quiet", "main"]);
            git(&origin, &["branch", "--quiet", "-D", "pull"]);
            Fixture {
                dir,
                first,
                head,
                pull,
            }
        }

        fn url(&self) -> String {
            format!("file://{}", self.dir.path().join("origin").display())
        }

        fn src(&self) -> PathBuf {
            self.dir.path().join("src")
        }

        fn log(&self) -> BuildLog {
            BuildLog::new(self.dir.path().join("build.log").display().to_string())
        }

        async fn check_out(
            &self,
            version: &str,
            watch: &InterruptWatch,
        ) -> anyhow::Result<Result<String, Interruption>> {
            let url = self.url();
            let (src, log) = (self.src(), self.log());
            Checkout {
                clone_url: &url,
                source_version: version,
                src_dir: &src,
                log: &log,
                watch,
            }
            .run()
            .await
        }
    }

    fn no_interruption() -> InterruptWatch {
        InterruptWatch {
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            deadline: Instant::now() + Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn a_branch_or_commit_of_the_clone_is_checked_out() {
        let repo = Fixture::new();
        let resolved = repo.check_out("main", &no_interruption()).await.unwrap();
        assert_eq!(resolved.unwrap(), repo.head);
        let log = std::fs::read_to_string(&repo.log().path).unwrap();
        assert!(
            log.contains(&format!("Cloning {} into", repo.url())),
            "{log}"
        );
        assert!(
            log.contains(&format!("Checked out main ({})", repo.head)),
            "{log}"
        );

        let repo = Fixture::new();
        let resolved = repo.check_out(&repo.first, &no_interruption()).await;
        assert_eq!(resolved.unwrap().unwrap(), repo.first);
    }

    #[tokio::test]
    async fn a_pull_request_is_fetched_from_its_github_ref() {
        let repo = Fixture::new();
        let resolved = repo.check_out("pr/7", &no_interruption()).await.unwrap();
        assert_eq!(resolved.unwrap(), repo.pull);
        let log = std::fs::read_to_string(&repo.log().path).unwrap();
        assert!(
            log.contains("pr/7 is not in the clone; fetching refs/pull/7/head"),
            "{log}"
        );
    }

    fn at(git_ref: &str, sha: &str) -> String {
        format!("{git_ref}^{{{sha}}}")
    }

    #[tokio::test]
    async fn a_commit_only_under_a_pull_request_ref_is_fetched_shallowly_through_it() {
        let repo = Fixture::new();
        let version = at("refs/pull/7/head", &repo.pull);
        let resolved = repo.check_out(&version, &no_interruption()).await.unwrap();
        assert_eq!(resolved.unwrap(), repo.pull);
        // One commit fetched, not the history.
        assert!(repo.src().join(".git/shallow").exists());
        let log = std::fs::read_to_string(&repo.log().path).unwrap();
        assert!(
            log.contains(&format!(
                "Fetching refs/pull/7/head of {} (depth 1) into",
                repo.url()
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("Checked out {version} ({})", repo.pull)),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_commit_below_the_tip_of_its_ref_is_found_in_the_refs_history() {
        let repo = Fixture::new();
        let resolved = repo
            .check_out(&at("refs/heads/main", &repo.first), &no_interruption())
            .await
            .unwrap();
        assert_eq!(resolved.unwrap(), repo.first);
        let log = std::fs::read_to_string(&repo.log().path).unwrap();
        assert!(
            log.contains(&format!(
                "refs/heads/main is at {}, not {}; fetching the history of refs/heads/main",
                repo.head, repo.first
            )),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_commit_not_on_its_ref_is_refused_naming_both() {
        let repo = Fixture::new();
        let err = repo
            .check_out(&at("refs/heads/main", &repo.pull), &no_interruption())
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "cannot check out {}: it is not reachable from refs/heads/main of {} \
                 (refs/heads/main is at {})",
                repo.pull,
                repo.url(),
                repo.head
            )
        );
        let repo = Fixture::new();
        let err = repo
            .check_out(&at("refs/heads/gone", &repo.head), &no_interruption())
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!(
                "cannot check out {} of refs/heads/gone: cannot fetch refs/heads/gone from {} \
                 (git fetch exit status",
                repo.head,
                repo.url()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_local_repository_without_the_pull_request_ref_checks_out_the_commit() {
        let repo = Fixture::new();
        let resolved = repo
            .check_out(&at("refs/pull/9/head", &repo.first), &no_interruption())
            .await
            .unwrap();
        assert_eq!(resolved.unwrap(), repo.first);
        let log = std::fs::read_to_string(&repo.log().path).unwrap();
        assert!(
            log.contains(&format!(
                "refs/pull/9/head is not in the local repository {}; checking out {} from a full \
                 clone",
                repo.url(),
                repo.first
            )),
            "{log}"
        );
    }

    #[tokio::test]
    async fn an_unknown_version_is_an_error_naming_it() {
        let repo = Fixture::new();
        let err = repo
            .check_out("no-such-branch", &no_interruption())
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!(
                "cannot check out no-such-branch of {}: it is not in the repository (git fetch exit status",
                repo.url()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_repository_is_an_error() {
        let repo = Fixture::new();
        std::fs::remove_dir_all(repo.dir.path().join("origin")).unwrap();
        let err = repo
            .check_out("main", &no_interruption())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!(
                "cannot clone {}: git clone exit status",
                repo.url()
            )),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_stopped_build_does_not_check_out() {
        let repo = Fixture::new();
        let watch = no_interruption();
        watch.stop.cancel();
        let result = repo.check_out("main", &watch).await.unwrap();
        assert_eq!(result, Err(Interruption::Stopped));
    }
}
