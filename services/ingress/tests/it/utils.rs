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
use prx_ci_shared::subject::WEBHOOKS_STREAM;
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
        let server = NatsServer::start().await;
        let mut registry = Registry::default();
        let rt = Runtime::from_client(server.connect().await, &mut registry);
        rt.provision(1).await.expect("provision");
        let mut config = IngressConfig::default().with_secrets_from_env_value(SECRET);
        configure(&mut config);
        let ingress = Ingress::new(rt, config, &mut registry).expect("ingress");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingress.run(listener, Arc::new(registry), shutdown.clone()));
        let js = jetstream::new(server.connect().await);
        Self {
            server,
            addr,
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

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
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
