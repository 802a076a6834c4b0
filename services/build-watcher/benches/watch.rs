//! Build-watcher benchmark against a real nats-server (and the AWS emulator for SQS):
//! - state changes processed per second (IN_PROGRESS, a phase change, SUCCEEDED per build,
//!   many builds at once);
//! - report stored → BuildCompleted stored latency (p50/p99), one build at a time;
//! - SQS received → report stored (the store part of a poll) and a whole one-message poll
//!   (ReceiveMessage + store + DeleteMessageBatch against moto), p50/p99.
//!
//! `cargo bench -p prx-ci-build-watcher --bench watch` (set `BENCH_BUILDS` to change the build
//! count, default 300). Results: docs/benchmarks/build-watcher.md.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use prx_ci_build_watcher::metrics::Metrics;
use prx_ci_build_watcher::sqs::{SqsSource, report_envelope};
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::codebuild::event::{PHASE_CHANGE, STATE_CHANGE};
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::json;

const REPO: &str = "PRX/bench-app";

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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        percentile(&samples, 50.0).as_secs_f64() * 1e3,
        percentile(&samples, 99.0).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn request_all(rt: &Runtime, ids: &[String]) {
    for id in ids {
        rt.publisher.publish(&requested(id)).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
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
    let mut seen = 0;
    while seen < builds {
        tokio::time::timeout(Duration::from_secs(120), completed.next())
            .await
            .expect("completions stalled")
            .unwrap();
        seen += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {} state changes ({} builds) in {:.2}s = {:.0} state changes/s",
        reports.len(),
        builds,
        elapsed.as_secs_f64(),
        reports.len() as f64 / elapsed.as_secs_f64()
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
    wait_until(
        Duration::from_secs(120),
        "the starts to be handled",
        || async {
            let stream = rt.js.get_stream("PRX_EVENTS").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("build-watcher-reports").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    let mut samples = Vec::with_capacity(ids.len());
    for id in &ids {
        let envelope = report(&event(id, STATE_CHANGE, Some("SUCCEEDED"), None));
        rt.publisher.publish(&envelope).await.unwrap();
        let stored = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), completed.next())
            .await
            .expect("no completion")
            .unwrap();
        samples.push(stored.elapsed());
    }
    summary("report stored -> BuildCompleted stored", samples);

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
    let mut store_samples = Vec::new();
    let mut poll_samples = Vec::new();
    for _ in 0..builds.min(200) {
        let id = format!("infrastructure-ci-Runner2:{}", new_event_id());
        let body = event(&id, STATE_CHANGE, Some("SUCCEEDED"), None).to_string();
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(body.clone())
            .send()
            .await
            .unwrap();
        let poll = Instant::now();
        let outcome = source.poll_once().await.unwrap();
        poll_samples.push(poll.elapsed());
        assert_eq!(outcome.deleted, 1);
        // The store part alone (what happens between ReceiveMessage and DeleteMessage).
        let other = format!("infrastructure-ci-Runner2:{}", new_event_id());
        let body = event(&other, STATE_CHANGE, Some("SUCCEEDED"), None).to_string();
        let store = Instant::now();
        rt.publisher
            .publish(&report_envelope(&body, "m", "bench"))
            .await
            .unwrap();
        store_samples.push(store.elapsed());
    }
    summary("SQS received -> report stored", store_samples);
    summary(
        "one SQS poll (ReceiveMessage + store + DeleteMessageBatch, moto)",
        poll_samples,
    );

    shutdown.cancel();
    service.await.unwrap().unwrap();
}
