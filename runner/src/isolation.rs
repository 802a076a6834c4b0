//! How a build process is started: isolated in Linux namespaces (the default) or directly on
//! the host (`isolation = "none"`). See `docs/local-runner.md`, "Isolation".
//!
//! Isolated, a build runs as
//!
//! ```text
//! unshare --user --map-root-user --mount --pid --fork --kill-child --mount-proc -- \
//!   /bin/sh -c PROLOGUE prx-ci-sandbox <build dir> <hidden path>... -- \
//!   setpriv --no-new-privs --bounding-set=-all --inh-caps=-all -- \
//!   <bash> -c LOADER prx-ci-env <shell> <driver>
//! ```
//!
//! - The prologue (root of the new user namespace, nothing of the build's yet) opens the build
//!   dir, mounts an empty tmpfs over every hidden directory (`/dev/null` over a hidden file),
//!   bind-mounts the build dir back in place through the open descriptor (it may lie under a
//!   hidden directory: the work root hides the other builds) and `cd`s into the checkout by
//!   path, so no working directory points into a hidden tree.
//! - `setpriv` drops every capability, so the build cannot unmount the tmpfs; mounts inherited
//!   by a namespace the build creates itself are locked and cannot be removed either.
//! - The fresh `/proc` of the new PID namespace shows only the build's processes: no
//!   `/proc/<pid>/root`, `environ` or `mem` of the runner or the nats-server. When the build's
//!   first process dies, the kernel kills every process of the namespace, `setsid` or not.
//! - Up to the loader, everything runs with a fixed environment; the build's variables come on
//!   stdin (NUL-separated) and the loader exports them just before it `exec`s the driver. So no
//!   build variable (`LD_PRELOAD`, `SHELLOPTS`/`PS4`, `PATH`) reaches the steps that run with
//!   capabilities, and no value appears on a command line (`/proc/<pid>/cmdline` is
//!   world-readable).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};

use crate::config::Isolation;

/// `PATH` of the isolation's own steps (never the build's).
const SANDBOX_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs as root of the new user and mount namespaces. `$1` is the build dir, `$2` the working
/// directory, then pairs of a path to hide and its `device:inode` as the runner saw it at start
/// (`-` if it did not exist) up to `--`, then the command. A path that is no longer the same
/// file (an earlier build renamed an ancestor and put a decoy in its place) stops the build:
/// hiding the decoy would leave the real one visible.
const PROLOGUE: &str = r#"set -eu
own=$1
cwd=$2
shift 2
exec 3<"$own"
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  path=$1
  id=$2
  shift 2
  if [ "$id" != - ] && [ "$(stat -L -c %d:%i -- "$path" 2>/dev/null || true)" != "$id" ]; then
    echo "prx-ci: $path was moved or replaced since the runner started; not running the build" >&2
    exit 1
  fi
  if [ -d "$path" ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev prx-ci-hidden "$path"
  elif [ -e "$path" ]; then
    mount --bind /dev/null "$path"
  fi
done
shift
mkdir -p "$own"
mount --no-canonicalize --bind /proc/self/fd/3 "$own"
exec 3<&-
cd "$cwd"
exec "$@"
"#;

/// Runs without capabilities: replaces its environment with the NUL-separated `NAME=value`
/// pairs on stdin and `exec`s `"$@"`.
const LOADER: &str = r#"# shellcheck disable=SC2163 # exporting the variable named by the value is the point
for __prx_ci_v in $(compgen -e); do export -n "$__prx_ci_v"; done
while IFS= read -r -d '' __prx_ci_kv; do export "$__prx_ci_kv" 2>/dev/null || true; done
unset __prx_ci_v __prx_ci_kv
exec "$@" </dev/null
"#;

/// A process to start for a build.
#[derive(Debug)]
pub struct BuildProcess<'a> {
    /// The shell (bash) and the script it runs.
    pub shell: &'a str,
    pub script: &'a Path,
    /// The build's own directory (visible to it even under a hidden directory).
    pub build_dir: &'a Path,
    /// The working directory, inside `build_dir`.
    pub work_dir: &'a Path,
    /// The complete environment.
    pub env: &'a BTreeMap<String, String>,
}

/// Starts build processes with the configured isolation.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// Directly on the host, with a cleared environment.
    Host,
    /// In namespaces.
    Namespaces(Sandbox),
}

/// The tools of the namespace isolation and what it hides.
#[derive(Debug, Clone)]
pub struct Sandbox {
    unshare: PathBuf,
    setpriv: PathBuf,
    bash: PathBuf,
    /// Absolute paths hidden from builds, with `device:inode` when they existed at start.
    hidden: Vec<(PathBuf, Option<String>)>,
}

impl Launcher {
    /// Resolves the tools the isolation needs and checks, by starting one isolated process in
    /// `probe_dir`, that this host hides `hidden` from builds. Fails closed, naming the fix.
    pub fn new(
        isolation: Isolation,
        shell: &str,
        hidden: Vec<PathBuf>,
        probe_dir: &Path,
    ) -> anyhow::Result<Self> {
        if isolation == Isolation::None {
            tracing::warn!(
                "[runner] isolation = \"none\": builds run as this user on the host and can read \
                 prx-ci's secrets (ops token, webhook secret, NATS credentials); run only builds you trust"
            );
            return Ok(Launcher::Host);
        }
        let sandbox = Sandbox::new(shell, hidden).map_err(explain)?;
        sandbox.probe(probe_dir).map_err(explain)?;
        Ok(Launcher::Namespaces(sandbox))
    }

    /// Starts `process` as the leader of a new process group, stdin closed (isolated: stdin
    /// carries the environment, then the loader closes it).
    pub fn spawn(
        &self,
        process: &BuildProcess<'_>,
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Child> {
        match self {
            Launcher::Host => {
                let mut cmd = Command::new(process.shell);
                cmd.arg(process.script)
                    .current_dir(process.work_dir)
                    .env_clear()
                    .envs(process.env)
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    .process_group(0)
                    .kill_on_drop(true);
                cmd.spawn()
                    .with_context(|| format!("cannot start the build shell `{}`", process.shell))
            }
            Launcher::Namespaces(sandbox) => sandbox.spawn(process, stdout, stderr),
        }
    }
}

impl Sandbox {
    fn new(shell: &str, hidden: Vec<PathBuf>) -> anyhow::Result<Self> {
        if !cfg!(target_os = "linux") {
            bail!("namespaces exist only on Linux");
        }
        let hidden = hidden
            .into_iter()
            .map(|path| {
                let id = std::fs::metadata(&path)
                    .ok()
                    .map(|m| format!("{}:{}", m.dev(), m.ino()));
                (path, id)
            })
            .collect();
        Ok(Sandbox {
            unshare: find_tool("unshare")?,
            setpriv: find_tool("setpriv")?,
            bash: find_tool(shell)?,
            hidden,
        })
    }

    /// Runs a check isolated in `probe_dir`: every hidden directory (but the work root, which
    /// shows the probe's own dir) must look empty.
    fn probe(&self, probe_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(probe_dir)
            .with_context(|| format!("cannot create {}", probe_dir.display()))?;
        let check = r#"for p; do if [ -d "$p" ] && [ -n "$(ls -A "$p")" ]; then echo "$p is visible" >&2; exit 1; fi; done"#;
        let mut command = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            check.to_owned(),
            "probe".to_owned(),
        ];
        // The work root holds the probe's own dir, mounted back: it is not empty.
        command.extend(
            self.hidden
                .iter()
                .filter(|(p, _)| !probe_dir.starts_with(p))
                .map(|(p, _)| p.display().to_string()),
        );
        let (program, args) = self.argv(probe_dir, probe_dir, &command);
        let output = std::process::Command::new(&program)
            .args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", program.display()));
        let _ = std::fs::remove_dir_all(probe_dir);
        let output = output?;
        if !output.status.success() {
            bail!(
                "{} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// unshare, prologue and setpriv around `command`.
    fn argv(
        &self,
        build_dir: &Path,
        work_dir: &Path,
        command: &[String],
    ) -> (PathBuf, Vec<String>) {
        let mut args: Vec<String> = [
            "--user",
            "--map-root-user",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
            "/bin/sh",
            "-c",
            PROLOGUE,
            "prx-ci-sandbox",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        args.push(build_dir.display().to_string());
        args.push(work_dir.display().to_string());
        for (path, id) in &self.hidden {
            args.push(path.display().to_string());
            args.push(id.clone().unwrap_or_else(|| "-".to_owned()));
        }
        args.push("--".to_owned());
        args.push(self.setpriv.display().to_string());
        args.extend(
            [
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
            ]
            .map(str::to_owned),
        );
        args.extend(command.iter().cloned());
        (self.unshare.clone(), args)
    }

    fn spawn(
        &self,
        process: &BuildProcess<'_>,
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Child> {
        let bash = self.bash.display().to_string();
        let command = [
            bash.clone(),
            "--noprofile".to_owned(),
            "--norc".to_owned(),
            "-c".to_owned(),
            LOADER.to_owned(),
            "prx-ci-env".to_owned(),
            bash,
            process.script.display().to_string(),
        ];
        let (program, args) = self.argv(process.build_dir, process.work_dir, &command);
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut stdin = child.stdin.take().context("the build has no stdin")?;
        let payload = env_payload(process.env);
        // A pipe holds 64 KiB: write concurrently so a large environment cannot block the
        // runner; a build that dies early shows in its exit status, not here.
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
        Ok(child)
    }
}

/// `NAME=value\0` for every variable.
fn env_payload(env: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in env {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// `name` if it is a path, else the first match on this process's `PATH`.
fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(anyhow::anyhow!("`{name}` does not exist"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found (util-linux provides unshare and setpriv)"))
}

fn explain(err: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot isolate local builds ({err:#}). Builds run in Linux user, mount and PID \
         namespaces so that they cannot read prx-ci's secrets and forge events. Allow \
         unprivileged user namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1, or on \
         Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), or, for builds you trust, set \
         [runner] isolation = \"none\" (PRX_CI_RUNNER__ISOLATION=none)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_travels_nul_separated_and_never_on_the_command_line() {
        let env: BTreeMap<String, String> = [("A", "1"), ("B", "two\nlines")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(env_payload(&env), b"A=1\0B=two\nlines\0");

        let sandbox = Sandbox {
            unshare: "/usr/bin/unshare".into(),
            setpriv: "/usr/bin/setpriv".into(),
            bash: "/bin/bash".into(),
            hidden: vec![
                ("/data".into(), Some("2049:12".to_owned())),
                ("/work".into(), None),
            ],
        };
        let (program, args) = sandbox.argv(
            Path::new("/work/b1"),
            Path::new("/work/b1/src"),
            &["/bin/bash".to_owned()],
        );
        assert_eq!(program, Path::new("/usr/bin/unshare"));
        let separator = args.iter().position(|a| a == "prx-ci-sandbox").unwrap();
        assert_eq!(
            &args[separator + 1..],
            [
                "/work/b1",
                "/work/b1/src",
                "/data",
                "2049:12",
                "/work",
                "-",
                "--",
                "/usr/bin/setpriv",
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
                "/bin/bash"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("two")));
    }
}
