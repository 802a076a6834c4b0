//! Test harness: real `nats-server` and `moto_server` processes on free loopback ports, each
//! with its own temporary store, killed on drop; condition waits with deadlines; git
//! ([`git`]) for the repositories builds clone; and a fault-injecting HTTP proxy
//! ([`fault_proxy`]) to put in front of the emulator and fake HTTP servers; and the record a
//! benchmark run leaves ([`bench`]); and one stateful fake GitHub ([`fake_github`]).
//!
//! A missing binary is a test failure with the install command, never a skip.

pub mod bench;
pub mod fake_github;
pub mod fault_proxy;
pub mod git;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent")
        .to_path_buf()
}

/// Finds an external tool: `$PRX_CI_TOOLS_BIN/<name>`, then `<workspace>/.tools/venv/bin/<name>`
/// (where `scripts/install-tools` puts it), then `PATH`.
///
/// # Panics
/// When the tool is nowhere, with the command that installs it.
pub fn tool_path(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("PRX_CI_TOOLS_BIN") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    candidates.push(workspace_root().join(".tools/venv/bin").join(name));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found: run `scripts/install-tools` (or set PRX_CI_TOOLS_BIN)")
        })
}

/// The Prometheus text exposition of `registry` (what `/metrics` serves).
pub fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("encoding into a String cannot fail");
    text
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    // Tests of one binary run in parallel and each server binds its port only later: a port
    // the kernel hands out twice (after the first holder let it go) would put two servers (a
    // nats-server and a moto, say) on one port. Never hand out the same port twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot bind a loopback port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `check` every 10 ms until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `Some` once the durable consumer `durable` of `stream` has nothing left to deliver and
/// nothing delivered but unacknowledged (a check for [`wait_until`]); `None` before, or while
/// the consumer cannot be read.
pub async fn durable_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> Option<()> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .ok()?
        .get_consumer(durable)
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
}

/// A `nats-server` with JetStream on a free port, storing in a temporary directory.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until JetStream answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port: free_port(),
            monitor_port: free_port(),
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("nats-server.log")).expect("log");
        let conf = self.dir.path().join("nats-server.conf");
        std::fs::write(&conf, crate::bus::nats::SERVER_CONFIG).expect("write nats-server.conf");
        let child = Command::new(tool_path("nats-server"))
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        let url = self.url();
        wait_until(
            START_TIMEOUT,
            "nats-server to accept JetStream requests",
            || {
                let url = url.clone();
                async move {
                    let client = async_nats::connect(url).await.ok()?;
                    async_nats::jetstream::new(client)
                        .query_account()
                        .await
                        .ok()
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint (`/jsz`, `/varz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// A new client connection.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("cannot connect to test nats-server")
    }

    /// Kills the server (simulates an outage); its store is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Credentials every test AWS client uses against the emulator.
pub const TEST_REGION: &str = "us-east-1";

/// A `moto_server` (the AWS emulator) on a free port; its state is private to this test.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    child: Child,
}

impl MotoServer {
    /// Starts the emulator and waits until it answers HTTP.
    pub async fn start() -> Self {
        let port = free_port();
        let child = Command::new(tool_path("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let server = Self { port, child };
        let url = format!("{}/moto-api/", server.endpoint());
        wait_until(START_TIMEOUT, "moto_server to answer", || {
            let url = url.clone();
            async move {
                let addr = format!("127.0.0.1:{port}");
                let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let request = format!("GET {url} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await.ok()?;
                head.starts_with(b"HTTP/1.").then_some(())
            }
        })
        .await;
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates the CodeBuild project `name` (GitHub source, no artifacts, a Linux container)
    /// in the emulator, as `deploy/aws/ci.yml` creates the projects (16-minute timeout), so
    /// `StartBuild` on it succeeds; one that exists already is kept.
    pub async fn create_codebuild_project(&self, name: &str) {
        use aws_sdk_codebuild::types::{
            ArtifactsType, ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment,
            ProjectSource, SourceType,
        };
        let codebuild = aws_sdk_codebuild::Client::new(&self.sdk_config());
        let created = codebuild
            .create_project()
            .name(name)
            .source(
                ProjectSource::builder()
                    .r#type(SourceType::Github)
                    .location("https://github.com/PRX/Infrastructure.git")
                    .git_clone_depth(1)
                    .build()
                    .expect("a complete source"),
            )
            .artifacts(
                ProjectArtifacts::builder()
                    .r#type(ArtifactsType::NoArtifacts)
                    .build()
                    .expect("complete artifacts"),
            )
            .environment(
                ProjectEnvironment::builder()
                    .r#type(EnvironmentType::LinuxContainer)
                    .image("aws/codebuild/amazonlinux2-x86_64-standard:5.0")
                    .compute_type(ComputeType::BuildGeneral1Small)
                    .privileged_mode(true)
                    .build()
                    .expect("a complete environment"),
            )
            .service_role("arn:aws:iam::123456789012:role/codebuild")
            .timeout_in_minutes(16)
            .send()
            .await;
        if let Err(err) = created {
            let exists = err
                .as_service_error()
                .is_some_and(|e| e.is_resource_already_exists_exception());
            assert!(exists, "CreateProject {name}: {err:?}");
        }
    }

    /// An SDK config pointing at this emulator with static test credentials.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        use aws_credential_types::Credentials;
        use aws_credential_types::provider::SharedCredentialsProvider;
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(TEST_REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "moto",
            )))
            .build()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
