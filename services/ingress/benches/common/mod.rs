//! What the ingress benches share: the ingress as its own process, a minimal HTTP/1.1
//! client, and reading back the stream.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use prx_ci_shared::bus::subject::WEBHOOKS_STREAM;
use prx_ci_shared::testing::{free_port, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const SECRET: &str = "benchmark secret";

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A minimal HTTP/1.1 keep-alive connection: writes one request, reads one response.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends `head` + `body`, returns the response status.
    pub async fn request(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(head).await?;
        self.stream.write_all(body).await?;
        self.buffer.clear();
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).map_err(invalid)?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| invalid("status"))?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The ingress as its own process.
pub struct IngressProcess {
    pub child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl IngressProcess {
    /// Starts the release binary against `nats_url` with the log filter `log_filter` (`None`:
    /// the default, as shipped) and `[ingress]` settings beyond the address and secret in
    /// `ingress_config` (TOML lines), and waits until it is ready.
    pub async fn start(nats_url: &str, log_filter: Option<&str>, ingress_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("prx-ci.toml");
        let log_filter = log_filter
            .map(|filter| format!("log_filter = \"{filter}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[nats]\nurl = \"{nats_url}\"\n\n[telemetry]\n{log_filter}\n\
                 [ingress]\nlisten = \"{addr}\"\nsecrets = [\"{SECRET}\"]\n{ingress_config}\n"
            ),
        )
        .expect("write config");
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_prx-ci-ingress"));
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config)
            .env_remove("PRX_CI_WEBHOOK_SECRET")
            .env_remove("RUST_LOG");
        // Tokio's runtime reads TOKIO_WORKER_THREADS (default: one per core).
        if let Ok(threads) = std::env::var("PRX_BENCH_INGRESS_THREADS") {
            command.env("TOKIO_WORKER_THREADS", threads);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let process = Self {
            child,
            addr,
            _dir: dir,
        };
        let url = format!("http://{}/readyz", process.addr);
        let http = reqwest::Client::new();
        wait_until(Duration::from_secs(30), "the ingress to be ready", || {
            let request = http.get(&url).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        process
    }

    /// `VmHWM` (peak resident set) and `VmRSS` of the process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for IngressProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn stored_count(js: &jetstream::Context) -> u64 {
    js.get_stream(WEBHOOKS_STREAM)
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info")
        .state
        .messages
}
