//! Git for tests: the repositories the local runner and the dispatcher clone (`file://` URLs).

use std::path::Path;
use std::process::Command;

/// Runs `git args` in `dir` with a fixed identity, `main` as the default branch and no signing
/// (whatever the machine's git config says), and returns its trimmed stdout. Panics with git's
/// stderr when git fails: a test cannot go on without its repository.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@prx.invalid"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
