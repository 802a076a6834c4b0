//! A running ingress on a free port against a real nats-server, and helpers to sign, send and
//! read back deliveries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_ingress::{Ingress, IngressConfig, WEBHOOK_PATH, signature_256};
use prx_ci_proto::v1::{Envelope, WebhookReceived, envelope::Payload};
use prx_ci_shared::bus::subject::WEBHOOKS_STREAM;
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::{CancellationToken, Runtime};
use tokio::task::JoinHandle;

pub const SECRET: &str = "correct horse battery staple";
pub const WAIT: Duration = Duration::from_secs(30);

/// The recorded default-branch push (about 10 KB pretty-printed).
pub fn push_body() -> Vec<u8> {
    recorded("push.json")
}

pub fn recorded(name: &str) -> Vec<u8> {
    let path = prx_ci_shared::testing::workspace_root()
        .join("tests/data/github")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn new_delivery_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub struct Harness {
    pub server: NatsServer,
    pub addr: SocketAddr,
    /// The separate `/metrics` listener, when the test asked for one.
    pub metrics_addr: Option<SocketAddr>,
    pub http: reqwest::Client,
    pub js: jetstream::Context,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts nats-server, provisions the streams, and runs the ingress with the default
    /// config plus `SECRET`, changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut IngressConfig)) -> Self {
        Self::start_with_listeners(configure, false).await
    }

    /// Like [`Harness::start_with`]; with `metrics_listener`, `/metrics` gets a listener of
    /// its own on a free port.
    pub async fn start_with_listeners(
        configure: impl FnOnce(&mut IngressConfig),
        metrics_listener: bool,
    ) -> Self {
        let server = NatsServer::start().await;
        let mut registry = Registry::default();
        let rt = Runtime::from_client(server.connect().await, &mut registry);
        rt.provision(1).await.expect("provision");
        let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
        configure(&mut config);
        let ingress = Ingress::new(rt, config, &mut registry).expect("ingress");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = if metrics_listener {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingress.serve(
            listener,
            metrics_listener,
            Arc::new(registry),
            shutdown.clone(),
        ));
        let js = jetstream::new(server.connect().await);
        Self {
            server,
            addr,
            metrics_addr,
            http: reqwest::Client::new(),
            js,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A webhook request as GitHub sends it, signed with `secret`.
    pub fn webhook(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        secret: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(WEBHOOK_PATH))
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/044aadd")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-github-hook-id", "512345678")
            .header("x-hub-signature-256", signature_256(secret, body))
            .body(body.to_vec())
    }

    /// Sends a signed delivery and returns the status and JSON answer.
    pub async fn send(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, serde_json::Value) {
        answer(
            self.webhook(event, delivery, body, SECRET)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn stream(&self) -> jetstream::stream::Stream {
        self.js
            .get_stream(WEBHOOKS_STREAM)
            .await
            .expect("PRX_WEBHOOKS")
    }

    pub async fn message_count(&self) -> u64 {
        self.stream().await.info().await.unwrap().state.messages
    }

    /// Every stored message of PRX_WEBHOOKS, decoded, with its subject.
    pub async fn stored(&self) -> Vec<(String, Envelope)> {
        let stream = self.stream().await;
        let state = stream.get_info().await.unwrap().state;
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.unwrap();
            let envelope = Envelope::decode(message.payload).expect("stored envelope decodes");
            out.push((message.subject.to_string(), envelope));
        }
        out
    }

    /// The text of `/metrics` (on its own listener if it has one).
    pub async fn metrics(&self) -> String {
        let addr = self.metrics_addr.unwrap_or(self.addr);
        self.http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the ingress and checks it stopped cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("ingress stops")
                .unwrap()
                .expect("ingress ran without error");
        }
    }
}

pub async fn answer(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
    (status, json)
}

pub fn webhook_received(envelope: &Envelope) -> &WebhookReceived {
    match &envelope.payload {
        Some(Payload::WebhookReceived(w)) => w,
        other => panic!("not a WebhookReceived: {other:?}"),
    }
}

/// The value of a metric line like `name{labels} 3`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A well-formed signature that matches no secret: what a hostile client sends.
pub const WRONG_SIGNATURE: &str =
    "sha256=0000000000000000000000000000000000000000000000000000000000000000";

/// A webhook request over a raw TCP connection, so a test controls when (and whether) each
/// byte of the body is sent.
pub struct RawRequest {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: RawWriter,
}

/// The sending half of a [`RawRequest`], to trickle a body from another task.
pub struct RawWriter(tokio::net::tcp::OwnedWriteHalf);

/// How a [`RawRequest`] frames its body.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    ContentLength(usize),
    Chunked,
}

/// A response read off a [`RawRequest`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.body))
    }
}

impl RawWriter {
    /// Sends raw bytes (for a chunked body, see [`RawWriter::send_chunk`]). Errors are
    /// returned, not unwrapped: the server may have closed the connection on purpose.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.0.write_all(bytes).await?;
        self.0.flush().await
    }

    /// Sends one chunk of a chunked body.
    pub async fn send_chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(b"\r\n");
        self.send(&framed).await
    }
}

impl RawRequest {
    /// Connects and sends the headers of a `push` delivery with `signature`, and nothing of
    /// the body.
    pub async fn start(addr: SocketAddr, framing: Framing, signature: &str) -> Self {
        let framing = match framing {
            Framing::ContentLength(length) => format!("Content-Length: {length}"),
            Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
        };
        let head = format!(
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             User-Agent: GitHub-Hookshot/test\r\nX-GitHub-Event: push\r\n\
             X-GitHub-Delivery: {}\r\nX-Hub-Signature-256: {signature}\r\n{framing}\r\n\r\n",
            new_delivery_id()
        );
        Self::start_raw(addr, head.as_bytes()).await
    }

    /// Connects and sends `bytes` only (e.g. part of a request head).
    pub async fn start_raw(addr: SocketAddr, bytes: &[u8]) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (reader, writer) = stream.into_split();
        let mut writer = RawWriter(writer);
        writer.send(bytes).await.unwrap();
        Self { reader, writer }
    }

    /// Sends body bytes; panics if the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.send(bytes).await.unwrap();
    }

    /// Splits off the sending half; the returned request only reads.
    pub fn into_parts(self) -> (RawReader, RawWriter) {
        (RawReader(self.reader), self.writer)
    }

    /// Reads the response (within `WAIT`), then checks the server closes the connection.
    pub async fn response_then_close(self) -> RawResponse {
        let mut reader = RawReader(self.reader);
        let response = reader.response().await;
        reader.closed().await;
        response
    }
}

/// The receiving half of a [`RawRequest`].
pub struct RawReader(tokio::net::tcp::OwnedReadHalf);

impl RawReader {
    /// Reads the response (within `WAIT`).
    pub async fn response(&mut self) -> RawResponse {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = Vec::new();
        let read = async {
            loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    let response = RawResponse {
                        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
                        head,
                        body: String::new(),
                    };
                    let length: usize = response
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buffer.len() < end + 4 + length {
                        let mut chunk = [0u8; 4096];
                        let n = self.0.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "connection closed inside the response body");
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                    return RawResponse {
                        body: body.into_owned(),
                        ..response
                    };
                }
                let mut chunk = [0u8; 4096];
                let n = self.0.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before a response: {buffer:?}");
                buffer.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("a response in time")
    }

    /// Waits (within `WAIT`) for the server to close the connection; returns what it sent
    /// before closing.
    pub async fn closed(mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut rest = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.0.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the server closes the connection");
        rest
    }
}

/// A signed-looking JSON push body of exactly `size` bytes (padding in a string field).
pub fn padded_body(size: usize) -> Vec<u8> {
    let head = br#"{"repository":{"full_name":"PRX/app"},"padding":""#;
    let tail = br#""}"#;
    assert!(size >= head.len() + tail.len());
    let mut body = head.to_vec();
    body.resize(size - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}
