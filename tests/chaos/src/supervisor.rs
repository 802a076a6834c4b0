//! The process supervisor: every service binary as its own process, each replica with its own
//! config and log file; SIGKILLs on request, and restarts whatever died (killed, or exited on
//! its own, e.g. unable to reach NATS during an outage), like systemd's `Restart=always`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// One service process.
#[derive(Debug)]
pub struct Process {
    pub service: &'static str,
    pub replica: usize,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:<port>/readyz`.
    pub ready_url: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Times it exited without being killed by the supervisor.
    pub exits: usize,
}

impl Process {
    pub fn new(
        service: &'static str,
        replica: usize,
        binary: PathBuf,
        (config, log): (PathBuf, PathBuf),
        port: u16,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            service,
            replica,
            binary,
            config,
            log,
            ready_url: format!("http://127.0.0.1:{port}/readyz"),
            env,
            child: None,
            exits: 0,
        }
    }

    /// `ingress-1` etc.
    pub fn name(&self) -> String {
        format!(
            "{}-{}",
            self.service.trim_start_matches("prx-ci-"),
            self.replica
        )
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(err) = child.kill().await
        {
            tracing::warn!(process = %self.name(), %err, "cannot kill");
        }
    }

    /// The process id of the running process (to read its CPU time in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether it exited on its own since the last look (then it is restarted).
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => true,
            Some(Ok(None)) => false,
            Some(Err(_)) | None => true,
        }
    }
}

/// The binary of `service` in `bin_dir`, or an error naming it and how to build it.
pub fn binary(bin_dir: &Path, service: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(service);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "the service binary {} is missing: build it with `cargo build --workspace --bins --locked` (scripts/chaos and scripts/test do)",
            path.display()
        )
    }
}

/// Every service process.
#[derive(Debug, Default)]
pub struct Supervisor {
    pub processes: Vec<Process>,
    pub kills: usize,
}

impl Supervisor {
    /// Starts every process.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            p.start()?;
        }
        Ok(())
    }

    /// Waits until every process answers `/readyz` with 200, restarting those that exit.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = tokio::time::Instant::now() + timeout;
        for i in 0..self.processes.len() {
            loop {
                self.restart_exited()?;
                let p = &self.processes[i];
                let ok = http
                    .get(&p.ready_url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "{} not ready after {timeout:?} ({}): see its log",
                        p.name(),
                        p.ready_url
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs process `index` and starts it again at once.
    pub async fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<String> {
        let p = &mut self.processes[index];
        p.kill().await;
        self.kills += 1;
        p.start()?;
        Ok(p.name())
    }

    /// Restarts every process that exited on its own; returns their names.
    pub fn restart_exited(&mut self) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        for p in &mut self.processes {
            if p.exited() {
                p.exits += 1;
                p.start()?;
                restarted.push(p.name());
            }
        }
        Ok(restarted)
    }

    /// The index of replica `replica` of `service`.
    pub fn index_of(&self, service: &str, replica: usize) -> Option<usize> {
        self.processes
            .iter()
            .position(|p| p.service == service && p.replica == replica)
    }

    /// Times processes exited on their own.
    pub fn exits(&self) -> usize {
        self.processes.iter().map(|p| p.exits).sum()
    }

    /// Stops every process (SIGKILL: nothing is left to finish).
    pub async fn stop(&mut self) {
        for p in &mut self.processes {
            p.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named_with_the_build_command() {
        let err = binary(Path::new("/nonexistent"), "prx-ci-dispatcher").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/prx-ci-dispatcher"), "{text}");
        assert!(
            text.contains("cargo build --workspace --bins --locked"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_killed_or_exited_process_is_restarted() {
        let dir = std::env::temp_dir().join(format!("chaos-sup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // `sleep --config <file>` fails at once: an exit the supervisor restarts.
        let mut sup = Supervisor::default();
        sup.processes.push(Process::new(
            "prx-ci-test",
            0,
            PathBuf::from("/bin/sleep"),
            (dir.join("x.toml"), dir.join("x.log")),
            1,
            vec![],
        ));
        sup.start_all().unwrap();
        let restarted = prx_ci_shared::testing::wait_until(
            Duration::from_secs(10),
            "the exited process to be restarted",
            || {
                let r = sup.restart_exited().unwrap();
                async move { (!r.is_empty()).then_some(r) }
            },
        )
        .await;
        assert_eq!(restarted, ["test-0"]);
        assert_eq!(sup.kill_and_restart(0).await.unwrap(), "test-0");
        assert_eq!(sup.kills, 1);
        sup.stop().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
