//! DOWNLOAD_SOURCE: cloning the repository and checking out the requested version.
//!
//! A commit, branch or tag of the clone, else fetched by name (`pr/N` as a GitHub pull request).
//! git's output goes to the build log, and every git process runs in its own group, killed on
//! stop or timeout.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::Context as _;
use tokio::process::Command;

use crate::build_log::BuildLog;
use crate::outcome::{InterruptWatch, Interruption};
use crate::process::{exit_text, run_in_group};

/// What to check out, and where.
#[derive(Debug)]
pub struct Checkout<'a> {
    pub clone_url: &'a str,
    pub source_version: &'a str,
    /// Created by the clone.
    pub src_dir: &'a Path,
    pub log: &'a BuildLog,
    pub watch: &'a InterruptWatch,
}

/// The refspec fetched for a version the clone does not have: `pr/N` is CodeBuild's pull
/// request syntax (`refs/pull/N/head` on GitHub); anything else is fetched by its name.
pub fn fetch_refspec(version: &str) -> String {
    match version.strip_prefix("pr/") {
        Some(n) => format!("refs/pull/{n}/head"),
        None => version.to_owned(),
    }
}

/// `git checkout` of `rev` as a detached head; the `--` keeps a rev from being read as a path.
fn checkout_args(rev: &str) -> Vec<String> {
    ["checkout", "--quiet", "--detach", rev, "--"]
        .map(str::to_owned)
        .to_vec()
}

impl Checkout<'_> {
    /// Clones and checks out the requested version; returns the resolved commit, or the
    /// interruption that cut it short.
    pub async fn run(&self) -> anyhow::Result<Result<String, Interruption>> {
        let url = self.clone_url;
        let version = self.source_version;
        let src = self.src_dir.display().to_string();
        self.log.line(&format!("Cloning {url} into {src}"));
        let status = self
            .git(&["clone", "--no-checkout", "--quiet", "--", url, &src])
            .await?;
        match status {
            Err(why) => return Ok(Err(why)),
            Ok(s) if !s.success() => {
                anyhow::bail!("cannot clone {url}: git clone {}", exit_text(s))
            }
            Ok(_) => {}
        }
        match self.git_in_src(&checkout_args(version)).await? {
            Err(why) => return Ok(Err(why)),
            Ok(s) if s.success() => {}
            Ok(_) => {
                // Not a branch, tag or commit of the clone.
                let refspec = fetch_refspec(version);
                self.log.line(&format!(
                    "{version} is not in the clone; fetching {refspec}"
                ));
                let fetch = ["fetch", "--quiet", "origin", &refspec].map(str::to_owned);
                match self.git_in_src(&fetch).await? {
                    Err(why) => return Ok(Err(why)),
                    Ok(s) if !s.success() => anyhow::bail!(
                        "cannot check out {version} of {url}: it is not in the repository (git fetch {})",
                        exit_text(s)
                    ),
                    Ok(_) => {}
                }
                match self.git_in_src(&checkout_args("FETCH_HEAD")).await? {
                    Err(why) => return Ok(Err(why)),
                    Ok(s) if !s.success() => {
                        anyhow::bail!("cannot check out {version}: git checkout {}", exit_text(s))
                    }
                    Ok(_) => {}
                }
            }
        }
        let output = Command::new("git")
            .args(["-C", &src, "rev-parse", "HEAD"])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run git rev-parse")?;
        if !output.status.success() {
            anyhow::bail!("cannot resolve the checked-out commit (git rev-parse HEAD)");
        }
        let resolved = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        self.log
            .line(&format!("Checked out {version} ({resolved})"));
        Ok(Ok(resolved))
    }

    async fn git_in_src(
        &self,
        args: &[String],
    ) -> anyhow::Result<Result<ExitStatus, Interruption>> {
        let src = self.src_dir.display().to_string();
        let mut all = vec!["-C", src.as_str()];
        all.extend(args.iter().map(String::as_str));
        self.git(&all).await
    }

    /// Runs git in its own process group with its output in the build log; never prompts.
    async fn git(&self, args: &[&str]) -> anyhow::Result<Result<ExitStatus, Interruption>> {
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
    fn pull_requests_are_fetched_by_their_github_ref() {
        assert_eq!(fetch_refspec("pr/42"), "refs/pull/42/head");
        assert_eq!(fetch_refspec("feature/x"), "feature/x");
        assert_eq!(fetch_refspec("refs/heads/main"), "refs/heads/main");
        assert_eq!(fetch_refspec("abc123"), "abc123");
    }

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
