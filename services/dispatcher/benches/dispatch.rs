//! Dispatcher benchmark (`cargo bench -p prx-ci-dispatcher --bench dispatch`).
//!
//! 1. Decision throughput: the pure decision (payload parse, rules, variables) over recorded
//!    push and pull-request payloads.
//! 2. Latency from "webhook stored in PRX_WEBHOOKS" (publish acknowledged) to "BuildRequested
//!    stored in PRX_EVENTS" (seen on the subject), at a steady 200 webhooks/s, against a real
//!    nats-server, a GitHub that answers at once (wiremock) and a backend that starts builds at
//!    once. Pull-request pushes rotate over 40 PRs so the superseded-build path (lane
//!    compare-and-set, stops, BuildCancelled) runs too. For scale, the same measurement is
//!    taken for a bare relay (consume the webhook, publish one event) — the floor JetStream
//!    itself imposes — so the dispatcher's own share is the difference.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_dispatcher::decision::{DecisionConfig, decide};
use prx_ci_dispatcher::{Dispatcher, DispatcherConfig, GitHubBuildspecSource};
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::consume::{ConsumerSettings, Delivery, Handler, HandlerError};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::bus::nats::Definitions;
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::run_consumer;
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const RATE_PER_SECOND: u64 = 200;
const EVENTS: u64 = 2_000;
const WARMUP: u64 = 100;
const PULL_REQUESTS: u64 = 40;
const DECISIONS: u32 = 200_000;

fn recorded(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/github")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).expect("recorded payload")).unwrap()
}

fn decision_throughput() {
    let config = DecisionConfig::default();
    let payloads = [
        ("push", serde_json::to_vec(&recorded("push.json")).unwrap()),
        (
            "pull_request",
            serde_json::to_vec(&recorded("pull_request-synchronize.json")).unwrap(),
        ),
        (
            "push",
            serde_json::to_vec(&recorded("push-non-default-branch.json")).unwrap(),
        ),
    ];
    let buildspec = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\n    PRX_BUILD_AARCH64: true\n    PRX_CI_PUBLISH: true\n";
    let started = Instant::now();
    let mut builds = 0usize;
    for i in 0..DECISIONS {
        let (event, payload) = &payloads[i as usize % payloads.len()];
        if let Ok(plan) = decide(event, payload, &config) {
            builds += plan
                .builds(buildspec, &config)
                .map_or(0, |b| b.builds.len());
        }
    }
    let elapsed = started.elapsed();
    println!(
        "decision: {DECISIONS} decisions in {elapsed:?}: {:.0} decisions/s, {:.1} µs/decision ({builds} builds planned; payloads 8-27 KB)",
        f64::from(DECISIONS) / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / f64::from(DECISIONS),
    );
}

/// Starts builds at once; stops them at once.
#[derive(Debug, Default)]
struct InstantBackend {
    next: AtomicU64,
}

#[async_trait::async_trait]
impl BuildBackend for InstantBackend {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(StartedBuild {
            build_id: format!("bench:{}:{n}", request.request_id),
            backend: "bench".into(),
            project: "bench".into(),
            region: String::new(),
            log_url: String::new(),
        })
    }

    /// Never asked: the bench delivers every webhook once.
    async fn find(
        &self,
        _request: &StartBuild,
        _since: time::OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError> {
        Ok(None)
    }

    async fn stop(&self, _build_id: &str) -> Result<StopOutcome, BackendError> {
        Ok(StopOutcome::Stopped)
    }
}

/// The floor: consume a webhook, publish one derived event, nothing else.
struct Relay {
    publisher: prx_ci_shared::EventPublisher,
}

impl Handler for Relay {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let chain = Chain::caused_by(&delivery.envelope);
        let envelope = chain.envelope(
            derived_event_id(&delivery.envelope.event_id, &["relay"]),
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    repository: "PRX/example-app".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        self.publisher
            .publish(&envelope)
            .await
            .map(drop)
            .map_err(HandlerError::transient)
    }
}

fn webhook(i: u64, base_push: &Value, base_pr: &Value) -> Envelope {
    // Never the all-zero SHA (a branch deletion).
    let sha = format!("{:040x}", i + 1);
    let (event, payload) = if i.is_multiple_of(2) {
        let mut p = base_push.clone();
        p["after"] = json!(sha);
        ("push", p)
    } else {
        let mut p = base_pr.clone();
        let number = 1000 + i % PULL_REQUESTS;
        p["number"] = json!(number);
        p["pull_request"]["number"] = json!(number);
        p["pull_request"]["head"]["sha"] = json!(sha);
        ("pull_request", p)
    };
    let delivery = format!("bench-delivery-{i}");
    Chain::starting(&delivery).envelope(
        delivery.clone(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: delivery,
            event_name: event.into(),
            payload: serde_json::to_vec(&payload).unwrap(),
            repository: "PRX/example-app".into(),
            origin: v1::Origin::Github as i32,
            ..Default::default()
        }),
    )
}

struct Latencies {
    label: &'static str,
    values: Vec<Duration>,
}

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.values.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    fn print(&self) {
        println!(
            "{}: {} webhooks at {RATE_PER_SECOND}/s: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.label,
            self.values.len(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.90).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
        );
    }
}

/// Publishes webhooks at the rate and measures stored → first event with the same
/// correlation id stored on `prx.build.requested.>`.
async fn measure(rt: &Runtime, label: &'static str) -> Latencies {
    let base_push = recorded("push.json");
    let base_pr = recorded("pull_request-synchronize.json");
    // correlation id -> (index, stored at)
    let stored_at: Arc<Mutex<HashMap<String, (u64, Instant)>>> = Arc::default();
    let mut subscription = rt.client.subscribe("prx.build.requested.>").await.unwrap();
    rt.client.flush().await.unwrap();
    let collector = {
        let stored_at = stored_at.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            while let Some(message) = subscription.next().await {
                let now = Instant::now();
                let Ok(envelope) = Envelope::decode(message.payload) else {
                    continue;
                };
                seen.entry(envelope.correlation_id).or_insert(now);
                if seen.len() as u64 >= EVENTS {
                    break;
                }
            }
            let stored_at = stored_at.lock().await;
            // The first webhooks warm connections and buckets up: not measured.
            seen.into_iter()
                .filter_map(|(id, at)| {
                    let (index, stored) = stored_at.get(&id)?;
                    (*index >= WARMUP).then(|| at.duration_since(*stored))
                })
                .collect::<Vec<_>>()
        })
    };
    let interval = Duration::from_micros(1_000_000 / RATE_PER_SECOND);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..EVENTS {
        ticker.tick().await;
        let envelope = webhook(i, &base_push, &base_pr);
        let publisher = rt.publisher.clone();
        let stored_at = stored_at.clone();
        publishes.spawn(async move {
            publisher.publish(&envelope).await.unwrap();
            // Stored = the moment the store acknowledged (what ingress waits for).
            stored_at
                .lock()
                .await
                .insert(envelope.correlation_id.clone(), (i, Instant::now()));
        });
    }
    while publishes.join_next().await.is_some() {}
    let values = match tokio::time::timeout(Duration::from_secs(60), collector).await {
        Ok(values) => values.unwrap(),
        Err(_) => {
            let stored = stored_at.lock().await.len();
            panic!("{label}: not every webhook was dispatched within a minute ({stored} stored)");
        }
    };
    Latencies { label, values }
}

async fn relay_floor() -> Latencies {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let definitions = Definitions::embedded().unwrap();
    let settings = ConsumerSettings::from_definition(definitions.consumer("dispatcher").unwrap())
        .with_concurrency(4);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_consumer(
        rt.js.clone(),
        rt.publisher.clone(),
        settings,
        Arc::new(Relay {
            publisher: rt.publisher.clone(),
        }),
        rt.consumer_metrics.clone(),
        shutdown.clone(),
    ));
    let latencies = measure(&rt, "relay floor (consume + publish only)").await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    latencies
}

async fn dispatcher_latency() -> Latencies {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let github = MockServer::start().await;
    let spec = "version: 0.2\nenv:\n  variables:\n    PRX_SPIRE_ECR_PKG_PARAMETERS: APP=/prx/stag/Spire/app\n";
    use base64::Engine as _;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "type": "file",
            "encoding": "base64",
            "content": base64::engine::general_purpose::STANDARD.encode(spec),
        })))
        .mount(&github)
        .await;
    let client = GitHubClient::new(GitHubConfig {
        api_url: github.uri(),
        ..GitHubConfig::default()
    })
    .unwrap();
    let dispatcher = Dispatcher::new(
        rt.clone(),
        DispatcherConfig::default(),
        Arc::new(GitHubBuildspecSource::new(client)),
        Arc::new(InstantBackend::default()),
        &mut Registry::default(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    let latencies = measure(&rt, "dispatcher (decision + GitHub + KV + start + events)").await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    latencies
}

fn main() {
    // Warnings and errors of the services under test (PRX_BENCH_LOG overrides the filter).
    let _telemetry = prx_ci_shared::telemetry::init(
        "dispatch-bench",
        &prx_ci_shared::telemetry::TelemetryConfig {
            log_filter: Some(std::env::var("PRX_BENCH_LOG").unwrap_or_else(|_| "warn".into())),
            ..Default::default()
        },
    )
    .unwrap();
    if std::env::var_os("PRX_BENCH_SKIP_DECISIONS").is_none() {
        decision_throughput();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let floor = relay_floor().await;
        floor.print();
        let dispatcher = dispatcher_latency().await;
        dispatcher.print();
        println!(
            "dispatcher's own share: p50 {:.2} ms, p99 {:.2} ms",
            (dispatcher.percentile(0.5).as_secs_f64() - floor.percentile(0.5).as_secs_f64()) * 1e3,
            (dispatcher.percentile(0.99).as_secs_f64() - floor.percentile(0.99).as_secs_f64())
                * 1e3,
        );
    });
}
