//! Ops benchmarks over 100,000 stored events (a real nats-server):
//! - projection rebuild: the builds projection from scratch (target: under 10 s);
//! - replay read: listing a whole stream range as `prx-ci replay --dry-run` does;
//! - history of one branch among them (target: under 50 ms).
//!
//! `cargo bench -p prx-ci-ops --bench ops`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use prx_ci_ops::api::OpsApi;
use prx_ci_ops::builds_projection::BuildsProjection;
use prx_ci_ops::event_log::{End, Start, scan};
use prx_ci_ops::metrics::Metrics;
use prx_ci_ops::{OpsConfig, projection_runner};
use prx_ci_proto::v1::{self, envelope::Payload, history_request};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::EVENTS_STREAM;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::NatsServer;
use tokio::sync::RwLock;

const PUSHES: usize = 20_000;
const REPOSITORIES: usize = 200;
const BRANCHES: usize = 5;
/// Events per push: the webhook, then requested, started, phase, completed.
const EVENTS_PER_PUSH: usize = 5;
const HISTORY_RUNS: usize = 30;
const IN_FLIGHT_PUBLISHES: usize = 512;

fn push_events(n: usize) -> Vec<v1::Envelope> {
    let repo = format!("PRX/app-{}", n % REPOSITORIES);
    let branch = format!("branch-{}", (n / REPOSITORIES) % BRANCHES);
    let commit = format!("{n:040x}");
    let delivery = format!("bench-{n}");
    let webhook = Chain::starting(&delivery).envelope(
        delivery.clone(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: delivery,
            event_name: "push".into(),
            repository: repo.clone(),
            payload: serde_json::json!({
                "ref": format!("refs/heads/{branch}"),
                "after": commit,
                "repository": {"full_name": repo, "default_branch": "branch-0"},
            })
            .to_string()
            .into_bytes(),
            ..Default::default()
        }),
    );
    let key = OrderingKey::branch(
        RepoName::parse(&repo).unwrap(),
        Branch::new(&branch).unwrap(),
    );
    let chain = Chain::caused_by(&webhook).with_ordering(&key, n as u64 + 1);
    let request = chain.derive_id(&["build"]);
    let build = v1::BuildRef {
        build_request_id: request.clone(),
        build_id: format!("local:{request}"),
        repository: repo,
        commit,
        architecture: v1::Architecture::X8664 as i32,
        log_url: format!("file:///logs/{request}"),
        ..Default::default()
    };
    let events = [
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(build.clone()),
            ..Default::default()
        }),
        Payload::BuildStarted(v1::BuildStarted {
            build: Some(build.clone()),
            ..Default::default()
        }),
        Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(build.clone()),
            completed_phase: "BUILD".into(),
            completed_phase_status: "SUCCEEDED".into(),
            ..Default::default()
        }),
        Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(build),
            status: v1::BuildStatus::Succeeded as i32,
            ..Default::default()
        }),
    ];
    let mut out = vec![webhook];
    for (i, payload) in events.into_iter().enumerate() {
        out.push(chain.envelope(chain.derive_id(&[&i.to_string()]), payload));
    }
    out
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.unwrap();

    let started = Instant::now();
    let total = PUSHES * EVENTS_PER_PUSH;
    // Webhooks first per push keeps each push's story in order; pushes overlap in time.
    futures::stream::iter(0..PUSHES)
        .map(|n| {
            let publisher = rt.publisher.clone();
            async move {
                for e in push_events(n) {
                    publisher.publish(&e).await.unwrap();
                }
            }
        })
        .buffer_unordered(IN_FLIGHT_PUBLISHES / EVENTS_PER_PUSH)
        .collect::<Vec<()>>()
        .await;
    println!(
        "stored {total} events ({PUSHES} webhooks + {} build events) in {:.1} s",
        total - PUSHES,
        started.elapsed().as_secs_f64()
    );

    // Projection rebuild from scratch.
    let started = Instant::now();
    let projection = projection_runner::rebuild(&rt.js, 1000).await.unwrap();
    let rebuild = started.elapsed();
    let build_events = total - PUSHES;
    println!(
        "builds projection rebuild: {build_events} build events in {:.0} ms ({:.0} events/s), {} builds kept",
        millis(rebuild),
        build_events as f64 / rebuild.as_secs_f64(),
        projection.len()
    );

    // Replay read: every message of PRX_EVENTS, in order (what a replay listing reads).
    let started = Instant::now();
    let mut bytes = 0usize;
    let count = scan(&rt.js, EVENTS_STREAM, &[], Start::First, End::Now, |m| {
        bytes += m.payload.len();
    })
    .await
    .unwrap();
    let replay = started.elapsed();
    println!(
        "replay read: {count} messages ({:.1} MB) in {:.0} ms ({:.0} events/s)",
        bytes as f64 / 1e6,
        millis(replay),
        count as f64 / replay.as_secs_f64()
    );

    // History of one branch of one repository.
    let config = OpsConfig::default();
    let api = OpsApi::new(
        rt.clone(),
        Arc::new(config),
        Arc::new(RwLock::new(BuildsProjection::new(10))),
        Metrics::register(&mut registry),
    );
    let request = v1::HistoryRequest {
        repository: "PRX/app-7".into(),
        filter: Some(history_request::Filter::Branch("branch-3".into())),
    };
    let mut samples = Vec::new();
    let mut events = 0;
    for _ in 0..HISTORY_RUNS {
        let started = Instant::now();
        let response = api.history(request.clone()).await.unwrap();
        samples.push(started.elapsed());
        events = response.events.len();
    }
    samples.sort();
    println!(
        "history of one branch ({events} events of {} stored for the repository): median {:.1} ms, p95 {:.1} ms, max {:.1} ms over {HISTORY_RUNS} runs",
        total / REPOSITORIES,
        millis(samples[HISTORY_RUNS / 2]),
        millis(samples[HISTORY_RUNS * 95 / 100]),
        millis(samples[HISTORY_RUNS - 1]),
    );
    assert_eq!(events, PUSHES / REPOSITORIES / BRANCHES * EVENTS_PER_PUSH);
    assert!(rebuild < Duration::from_secs(10), "rebuild target missed");
}
