//! Build-watcher benchmark against a real nats-server (and the AWS emulator for SQS):
//! - state changes processed per second (IN_PROGRESS, a phase change, SUCCEEDED per build,
//!   many builds at once);
//! - state change handed to NATS (the clock starts before its publish) → its BuildCompleted
//!   seen, one build at a time, p50/p99/max;
//! - the SQS path: SendMessage to moto issued → poll (ReceiveMessage, store, DeleteMessageBatch)
//!   → BuildCompleted seen, one build at a time.
//!
//! `cargo bench -p prx-ci-build-watcher --bench watch` (set `BENCH_BUILDS` to change the build
//! count, default 300). Headline rows go to `docs/benchmarks/results/watch.json`; the method is
//! in docs/benchmarks/build-watcher.md.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use prx_ci_build_watcher::metrics::Metrics;
use prx_ci_build_watcher::sqs::SqsSource;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::codebuild::event::{PHASE_CHANGE, STATE_CHANGE};
use prx_ci_shared::testing::bench::{BenchRun, Row, percentile};
use prx_ci_shared::testing::{MotoServer, NatsServer, durable_drained, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::json;

const REPO: &str = "PRX/bench-app";
const PAGE: &str = "benchmarks/build-watcher.md";

fn event(
    build_id: &str,
    detail_type: &str,
    status: Option<&str>,
    phase: Option<&str>,
) -> serde_json::Value {
    json!({
        "version": "0",
        "id": new_event_id(),
        "detail-type": detail_type,
        "source": "aws.codebuild",
        "time": "2025-03-04T17:06:30Z",
        "region": "us-east-1",
        "detail": {
            "build-status": status,
            "completed-phase": phase,
            "completed-phase-status": phase.map(|_| "SUCCEEDED"),
            "project-name": "infrastructure-ci-Runner2",
            "build-id": format!("arn:aws:codebuild:us-east-1:123456789012:build/{build_id}"),
            "additional-information": {
                "build-start-time": "Mar 4, 2025 5:02:10 PM",
                "environment": {"environment-variables": [
                    {"name": "PRX_REPO", "value": REPO, "type": "PLAINTEXT"},
                    {"name": "PRX_CI_PUBLISH", "value": "true", "type": "PLAINTEXT"}
                ]},
                "phases": [
                    {"phase-type": "BUILD", "phase-status": "SUCCEEDED", "duration-in-seconds": 186,
                     "start-time": "Mar 4, 2025 5:02:35 PM", "end-time": "Mar 4, 2025 5:05:41 PM", "phase-context": [": "]},
                    {"phase-type": "COMPLETED", "start-time": "Mar 4, 2025 5:06:29 PM"}
                ],
                "exported-environment-variables": [{"name": "APP", "value": "github/prx/bench-app:abc-x86_64"}]
            }
        }
    })
}

fn report(event: &serde_json::Value) -> v1::Envelope {
    Chain::default().envelope(
        new_event_id(),
        Payload::BuildReportReceived(v1::BuildReportReceived {
            event_json: serde_json::to_vec(event).unwrap(),
            source: "bench".into(),
            build_id: event["detail"]["build-id"].as_str().unwrap().into(),
            repository: REPO.into(),
            log_tail: None,
        }),
    )
}

fn requested(build_id: &str) -> v1::Envelope {
    Chain::starting(&new_event_id()).envelope(
        new_event_id(),
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(v1::BuildRef {
                build_id: build_id.into(),
                build_request_id: new_event_id(),
                repository: REPO.into(),
                commit: "a".repeat(40),
                backend: "codebuild".into(),
                project: "infrastructure-ci-Runner2".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

/// Prints and returns "p50 a / p99 b / max c ms" (n samples).
fn summary(name: &str, mut samples: Vec<Duration>) -> (String, Duration) {
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    let text = format!(
        "p50 {:.2} / p99 {:.2} / max {:.2} ms",
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!("{name}: n={} {text}", samples.len());
    (text, p99)
}

/// Waits for the BuildCompleted of `build_id` (skipping any other).
async fn completion_of(completed: &mut async_nats::Subscriber, build_id: &str) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), completed.next())
            .await
            .unwrap_or_else(|_| panic!("no completion of {build_id}"))
            .unwrap();
        let envelope = <v1::Envelope as prost::Message>::decode(message.payload).unwrap();
        if let Some(Payload::BuildCompleted(done)) = &envelope.payload
            && done.build.as_ref().is_some_and(|b| {
                b.build_id == build_id || b.build_id.ends_with(&format!("/{build_id}"))
            })
        {
            return;
        }
        if std::env::var_os("PRX_BENCH_DEBUG").is_some() {
            eprintln!("skipped while waiting for {build_id}: {envelope:?}");
        }
    }
}

async fn request_all(rt: &Runtime, ids: &[String]) {
    for id in ids {
        rt.publisher.publish(&requested(id)).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let mut bench = BenchRun::start("watch");
    let builds: usize = std::env::var("BENCH_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let nats = NatsServer::start().await;
    let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let shutdown = CancellationToken::new();
    let watcher = BuildWatcher::new(
        rt.clone(),
        BuildWatcherConfig::default(),
        None,
        None,
        &mut Registry::default(),
    )
    .unwrap();
    let service = tokio::spawn(watcher.run(shutdown.clone()));
    let mut completed = rt.client.subscribe("prx.build.completed.>").await.unwrap();

    // Throughput: every build requested first, then 3 state changes per build at once.
    let ids: Vec<String> = (0..builds)
        .map(|_| format!("infrastructure-ci-Runner2:{}", new_event_id()))
        .collect();
    request_all(&rt, &ids).await;
    let reports: Vec<v1::Envelope> = ids
        .iter()
        .flat_map(|id| {
            [
                report(&event(id, STATE_CHANGE, Some("IN_PROGRESS"), None)),
                report(&event(id, PHASE_CHANGE, None, Some("BUILD"))),
                report(&event(id, STATE_CHANGE, Some("SUCCEEDED"), None)),
            ]
        })
        .collect();
    let started = Instant::now();
    let publishes = reports.iter().map(|r| rt.publisher.publish(r));
    for result in futures::future::join_all(publishes).await {
        result.unwrap();
    }
    // Distinct builds: a completion published again (a redelivered report) is not a build.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < builds {
        let message = tokio::time::timeout(Duration::from_secs(120), completed.next())
            .await
            .expect("completions stalled")
            .unwrap();
        let envelope = <v1::Envelope as prost::Message>::decode(message.payload).unwrap();
        if let Some(Payload::BuildCompleted(done)) = envelope.payload
            && let Some(build) = done.build
        {
            seen.insert(build.build_id);
        }
    }
    let elapsed = started.elapsed();
    let rate = reports.len() as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {} state changes ({} builds) in {:.2}s = {rate:.0} state changes/s",
        reports.len(),
        builds,
        elapsed.as_secs_f64(),
    );
    bench.row(
        Row::new(
            format!(
                "state changes processed: {builds} builds × (IN_PROGRESS, a phase change, SUCCEEDED) handed to NATS at once, first publish → every build's BuildCompleted seen"
            ),
            "-",
        )
        .measured(format!("{rate:.0} /s ({} in {:.2} s)", reports.len(), elapsed.as_secs_f64()))
        .details(PAGE),
    );

    // Latency: one build at a time, its final report stored → its BuildCompleted received.
    let ids: Vec<String> = (0..builds.min(500))
        .map(|_| format!("infrastructure-ci-Runner2:{}", new_event_id()))
        .collect();
    request_all(&rt, &ids).await;
    for id in &ids {
        rt.publisher
            .publish(&report(&event(id, STATE_CHANGE, Some("IN_PROGRESS"), None)))
            .await
            .unwrap();
    }
    // Let the starts drain so each measurement is of one report alone.
    wait_until(Duration::from_secs(120), "the starts to be handled", || {
        durable_drained(&rt.js, "PRX_EVENTS", "build-watcher-reports")
    })
    .await;
    let mut samples = Vec::with_capacity(ids.len());
    for id in &ids {
        let envelope = report(&event(id, STATE_CHANGE, Some("SUCCEEDED"), None));
        // The clock starts when the state change is handed to NATS, before its publish.
        let handed = Instant::now();
        rt.publisher.publish(&envelope).await.unwrap();
        completion_of(&mut completed, id).await;
        samples.push(handed.elapsed());
    }
    let n = samples.len();
    let (text, p99) = summary(
        "state change handed to NATS -> BuildCompleted seen",
        samples,
    );
    bench.row(
        Row::new(
            format!(
                "state change (SUCCEEDED) handed to NATS (clock before its publish) → its BuildCompleted seen, one build at a time, {n} builds, p50 / p99 / max"
            ),
            "< 10 ms p99",
        )
        .measured(text)
        .met(p99 < Duration::from_millis(10))
        .details(PAGE),
    );

    // SQS: one message per poll against moto.
    let moto = MotoServer::start().await;
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config());
    let queue_url = sqs
        .create_queue()
        .queue_name("bench")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let config = BuildWatcherConfig {
        queue_url: Some(queue_url.clone()),
        sqs_wait_time: Duration::from_secs(1),
        ..BuildWatcherConfig::default()
    };
    let source = SqsSource::new(
        sqs.clone(),
        queue_url.clone(),
        rt.publisher.clone(),
        &config,
        Metrics::register(&mut Registry::default()),
    );
    let mut path_samples = Vec::new();
    let mut send_samples = Vec::new();
    let mut poll_samples = Vec::new();
    for _ in 0..builds.min(200) {
        let id = format!("infrastructure-ci-Runner2:{}", new_event_id());
        request_all(&rt, std::slice::from_ref(&id)).await;
        let body = event(&id, STATE_CHANGE, Some("SUCCEEDED"), None).to_string();
        // The clock starts when the state change is handed to SQS.
        let handed = Instant::now();
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
        send_samples.push(handed.elapsed());
        let poll = Instant::now();
        let outcome = source.poll_once().await.unwrap();
        poll_samples.push(poll.elapsed());
        assert_eq!(outcome.deleted, 1);
        completion_of(&mut completed, &id).await;
        path_samples.push(handed.elapsed());
    }
    let n = path_samples.len();
    let (path, _) = summary(
        "SQS SendMessage issued -> poll -> BuildCompleted seen",
        path_samples,
    );
    let (send, _) = summary("SendMessage (moto)", send_samples);
    let (poll, _) = summary(
        "one SQS poll (ReceiveMessage + store + DeleteMessageBatch, moto)",
        poll_samples,
    );
    bench.row(
        Row::new(
            format!(
                "SQS path: state change handed to SQS (clock before SendMessage to moto) → one poll (ReceiveMessage, store, DeleteMessageBatch) → BuildCompleted seen, one build at a time, {n} builds, p50 / p99 / max"
            ),
            "-",
        )
        .measured(format!(
            "{path}; its parts, each timed on its own (their percentiles do not add up): moto's SendMessage {send}, the whole poll {poll}"
        ))
        .details(PAGE),
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
    bench.finish().unwrap();
}
