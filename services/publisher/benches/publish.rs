//! Publisher benchmark (`cargo bench -p prx-ci-publisher --bench publish`), against a real
//! nats-server and moto_server. Headline rows go to `docs/benchmarks/results/publish.json`; the
//! method is in docs/benchmarks/publisher.md.
//!
//! 1. The ordering fence's own overhead per publication (its KV reads and compare-and-sets,
//!    timed by the fence's own stopwatch, which leaves out the store write and waits on other
//!    claims), into a fine-bucketed histogram: sequentially on new parameters, on one parameter
//!    with newer pushes, for superseded pushes, and under contention — two fences on two
//!    connections (two replicas), 16 publications in flight, several pushes of the same
//!    parameters in shuffled order, a store whose writes take 2 ms. The contended run checks
//!    every write: each parameter ends on its newest push and its writes went in push order.
//! 2. End to end through the service: build completions (several builds per parameter, stored
//!    in shuffled push order) → fence → SSM in moto (or NATS KV) → `PublishApplied`, one and two
//!    replicas. Every parameter is then read back: its value must be its newest push's, and its
//!    SSM history (one version per write) must be in push order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::fence::{Position, Publication};
use prx_ci_publisher::fence_store::{FenceSettings, KvFence};
use prx_ci_publisher::metrics::FenceMetrics;
use prx_ci_publisher::{
    KvParameterStore, NoArtifactCheck, ParameterStore, Publisher, PublisherConfig,
    SsmParameterStore, StoreError, StoredParameter,
};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::bench::{BenchRun, Row, percentile};
use prx_ci_shared::testing::{MotoServer, NatsServer, durable_drained, metrics_text, wait_until};
use prx_ci_shared::{CancellationToken, Runtime, bus::subject};

/// Publications timed per sequential fence case.
const FENCE_SAMPLES: u64 = 2_000;
/// Contended fence case: parameters, and pushes of each.
const HOT_PARAMETERS: u64 = 10;
const HOT_PUSHES: u64 = 30;
/// Publications in flight at once in the contended case (half per fence).
const IN_FLIGHT: usize = 16;
/// How long a write of the contended case's store takes (SSM's is milliseconds).
const WRITE_TIME: Duration = Duration::from_millis(2);
/// End to end: parameters, and builds (pushes) of each.
const E2E_PARAMETERS: u64 = 40;
const E2E_PUSHES: u64 = 10;
const PAGE: &str = "benchmarks/publisher.md";

/// A store that writes nothing: what remains is the fence's own cost.
#[derive(Debug)]
struct NullStore;

#[async_trait]
impl ParameterStore for NullStore {
    async fn put(&self, _name: &str, _value: &str) -> Result<i64, StoreError> {
        Ok(1)
    }
    async fn get(&self, _name: &str) -> Result<Option<StoredParameter>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        Ok(Vec::new())
    }
}

/// An in-memory store that keeps every write, each taking [`WRITE_TIME`].
#[derive(Debug, Default)]
struct RecordingStore {
    writes: Mutex<HashMap<String, Vec<String>>>,
}

#[async_trait]
impl ParameterStore for RecordingStore {
    async fn put(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        tokio::time::sleep(WRITE_TIME).await;
        let mut writes = self.writes.lock().unwrap();
        let history = writes.entry(name.to_owned()).or_default();
        history.push(value.to_owned());
        Ok(history.len() as i64)
    }
    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError> {
        let writes = self.writes.lock().unwrap();
        Ok(writes.get(name).and_then(|h| {
            Some(StoredParameter {
                name: name.to_owned(),
                value: h.last()?.clone(),
                version: h.len() as i64,
            })
        }))
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        Ok(Vec::new())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints the samples and returns "p50 a / p99 b / max c ms" and the p99.
fn summary(label: &str, mut samples: Vec<Duration>) -> (String, Duration) {
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    let text = format!(
        "p50 {:.2} / p99 {:.2} / max {:.2} ms",
        ms(percentile(&samples, 0.50)),
        ms(p99),
        ms(samples[samples.len() - 1])
    );
    println!("{label}: n={} {text}", samples.len());
    (text, p99)
}

/// Cumulative buckets (upper bound in seconds, count) of the histogram `name` in `text`.
fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Adds the buckets of several histograms with the same bounds.
fn add_buckets(into: &mut Vec<(f64, u64)>, other: &[(f64, u64)]) {
    if into.is_empty() {
        into.extend_from_slice(other);
        return;
    }
    for (bucket, (_, count)) in into.iter_mut().zip(other) {
        bucket.1 += count;
    }
}

/// The bucket holding quantile `q`: (lower, upper bound) in seconds, and the sample count.
fn quantile_bucket(buckets: &[(f64, u64)], q: f64) -> ((f64, f64), u64) {
    let total = buckets.last().map_or(0, |b| b.1);
    let rank = (q * total as f64).ceil() as u64;
    let mut lower = 0.0;
    for &(upper, count) in buckets {
        if count >= rank.max(1) {
            return ((lower, upper), total);
        }
        lower = upper;
    }
    ((lower, f64::INFINITY), total)
}

fn publication(seq: u64, ordering_key: &str) -> Publication {
    Publication {
        position: Position::new(seq, true),
        value: value("PRX/app", seq),
        commit: format!("{seq:040x}"),
        build_id: format!("bench:{seq}"),
        ordering_key: ordering_key.into(),
        architecture: "x86_64".into(),
    }
}

/// The helper's ECR value of push `seq` of repository `repo` (what the strict check expects).
fn value(repo: &str, seq: u64) -> String {
    format!("github/{}:{seq:040x}-x86_64", repo.to_ascii_lowercase())
}

/// The push sequence a value was written by.
fn seq_of(value: &str) -> u64 {
    let hex = value
        .split_once(':')
        .and_then(|(_, v)| v.strip_suffix("-x86_64"))
        .unwrap_or_else(|| panic!("unexpected value {value}"));
    u64::from_str_radix(hex, 16).unwrap()
}

/// A fixed shuffle (xorshift), so every run sees the same out-of-order schedule.
fn shuffled<T>(mut items: Vec<T>, mut seed: u64) -> Vec<T> {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    items
}

fn settings() -> FenceSettings {
    FenceSettings {
        lease: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
    }
}

/// Fence metrics whose overhead histogram has 10 % buckets from 50 µs, registered in `registry`.
fn fine_metrics(registry: &mut Registry) -> FenceMetrics {
    let metrics = FenceMetrics {
        overhead_seconds: Histogram::new(exponential_buckets(0.000_05, 1.1, 120)),
        ..FenceMetrics::new()
    };
    registry.register(
        "fence_overhead_seconds",
        "fence KV time per publication",
        metrics.overhead_seconds.clone(),
    );
    metrics
}

async fn fence_overhead(nats: &NatsServer, rt: &Runtime, bench: &mut BenchRun) {
    let fence = KvFence::open(&rt.js, settings(), FenceMetrics::new())
        .await
        .unwrap();
    let key = "PRX/app@main";
    // A new parameter per publish (first write: create) ...
    let mut fresh = Vec::new();
    for seq in 1..=FENCE_SAMPLES {
        let name = format!("/prx/stag/Spire/Fresh{seq}/pkg/docker-image-tag");
        let started = Instant::now();
        fence
            .publish(&name, &publication(seq, key), &NullStore)
            .await
            .unwrap();
        fresh.push(started.elapsed());
    }
    let (fresh, _) = summary(
        "fence overhead, new parameter (read, create claim, re-read, mark)",
        fresh,
    );
    // ... and one parameter, each publish from a newer push (update path).
    let mut newer = Vec::new();
    for seq in 1..=FENCE_SAMPLES {
        let started = Instant::now();
        fence
            .publish(
                "/prx/stag/Spire/Hot/pkg/docker-image-tag",
                &publication(seq, key),
                &NullStore,
            )
            .await
            .unwrap();
        newer.push(started.elapsed());
    }
    let (newer, _) = summary("fence overhead, newer push on one parameter", newer);
    // A stale publish is decided by one read.
    let mut stale = Vec::new();
    for seq in 1..=FENCE_SAMPLES / 4 {
        let started = Instant::now();
        fence
            .publish(
                "/prx/stag/Spire/Hot/pkg/docker-image-tag",
                &publication(seq, key),
                &NullStore,
            )
            .await
            .unwrap();
        stale.push(started.elapsed());
    }
    let (stale, _) = summary("fence overhead, superseded publish (skip)", stale);
    bench.row(
        Row::new(
            format!(
                "fence overhead, uncontended, one publication at a time, store does nothing: new parameter ({FENCE_SAMPLES}) / newer push on one parameter ({FENCE_SAMPLES}) / superseded push ({}), p50 / p99 / max",
                FENCE_SAMPLES / 4
            ),
            "-",
        )
        .measured(format!("{fresh}; {newer}; {stale}"))
        .details(PAGE),
    );

    // Contention: two replicas' fences, pushes of a few parameters in shuffled order.
    let mut registry = Registry::default();
    let metrics = fine_metrics(&mut registry);
    let replica_rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
    let fences = [
        KvFence::open(&rt.js, settings(), metrics.clone())
            .await
            .unwrap(),
        KvFence::open(&replica_rt.js, settings(), metrics.clone())
            .await
            .unwrap(),
    ];
    let store = Arc::new(RecordingStore::default());
    let name = |p: u64| format!("/prx/stag/Spire/Contended{p}/pkg/docker-image-tag");
    // Push sequences interleave across parameters: parameter p's pushes are p, p + P, ...
    let work = shuffled(
        (0..HOT_PARAMETERS * HOT_PUSHES)
            .map(|i| (i % HOT_PARAMETERS, i + 1))
            .collect(),
        0x9e37_79b9_7f4a_7c15,
    );
    let started = Instant::now();
    let results = futures::future::join_all((0..IN_FLIGHT).map(|worker| {
        let fence = fences[worker % 2].clone();
        let store = store.clone();
        let mine: Vec<(u64, u64)> = work
            .iter()
            .copied()
            .skip(worker)
            .step_by(IN_FLIGHT)
            .collect();
        async move {
            for (parameter, seq) in mine {
                let key = format!("PRX/app-{parameter}@main");
                fence
                    .publish(&name(parameter), &publication(seq, &key), store.as_ref())
                    .await
                    .unwrap();
            }
        }
    }));
    results.await;
    let elapsed = started.elapsed();
    // Every write checked: each parameter ends on its newest push; writes never go back.
    let writes = store.writes.lock().unwrap().clone();
    let mut total_writes = 0;
    for p in 0..HOT_PARAMETERS {
        let history = writes.get(&name(p)).expect("written");
        let seqs: Vec<u64> = history.iter().map(|v| seq_of(v)).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: writes out of push order: {seqs:?}",
            name(p)
        );
        let newest = p + 1 + (HOT_PUSHES - 1) * HOT_PARAMETERS;
        assert_eq!(*seqs.last().unwrap(), newest, "{} final value", name(p));
        total_writes += seqs.len();
    }
    let text = metrics_text(&registry);
    let hist = buckets(&text, "fence_overhead_seconds");
    let ((p50_lo, p50_hi), n) = quantile_bucket(&hist, 0.50);
    let ((p99_lo, p99_hi), _) = quantile_bucket(&hist, 0.99);
    let publications = HOT_PARAMETERS * HOT_PUSHES;
    assert_eq!(n, publications, "one overhead sample per publication");
    println!(
        "fence overhead, contended: {publications} publications ({HOT_PARAMETERS} parameters x {HOT_PUSHES} pushes, shuffled, {IN_FLIGHT} in flight over 2 fences) in {elapsed:.2?}: p50 in ({:.2}, {:.2}] ms, p99 in ({:.2}, {:.2}] ms; {total_writes} writes, all in push order, every parameter on its newest push; {} waits on claims, {} CAS conflicts",
        p50_lo * 1e3,
        p50_hi * 1e3,
        p99_lo * 1e3,
        p99_hi * 1e3,
        metrics.waits.get(),
        metrics.conflicts.get(),
    );
    bench.row(
        Row::new(
            format!(
                "fence overhead under contention (KV time per publication by the fence's own stopwatch, store writes and waits on claims excluded): 2 fences on 2 connections, {IN_FLIGHT} in flight, {HOT_PARAMETERS} parameters × {HOT_PUSHES} pushes in shuffled order, 2 ms writes; p99 (p50), 10 % histogram buckets"
            ),
            "< 5 ms p99",
        )
        .measured(format!(
            "p99 ≤ {:.2} ms (p50 ≤ {:.2} ms); {total_writes} writes for {publications} publications, all in push order, every parameter ends on its newest push; {} waits on claims, {} CAS conflicts",
            p99_hi * 1e3,
            p50_hi * 1e3,
            metrics.waits.get(),
            metrics.conflicts.get(),
        ))
        .met(p99_hi < 0.005)
        .details(PAGE),
    );
}

fn completion(seq: u64, parameter: &str, repo: &str) -> v1::Envelope {
    let commit = format!("{seq:040x}");
    let variables: HashMap<String, String> = [
        ("PRX_REPO", repo.to_owned()),
        ("PRX_COMMIT", commit.clone()),
        ("PRX_CI_PUBLISH", "true".to_owned()),
        ("PRX_TARGET_ARCHITECTURE", "x86_64".to_owned()),
        ("PRX_SPIRE_ECR_PKG_PARAMETERS", format!("APP={parameter}")),
        ("APP", value(repo, seq)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let key = OrderingKey::branch(RepoName::parse(repo).unwrap(), Branch::new("main").unwrap());
    let build = v1::BuildRef {
        build_id: format!("bench:{seq}"),
        repository: repo.into(),
        commit,
        architecture: v1::Architecture::X8664 as i32,
        ..Default::default()
    };
    Chain::default().with_ordering(&key, seq).envelope(
        format!("bench-completed-{seq}"),
        Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(build.clone()),
            status: v1::BuildStatus::Succeeded as i32,
            // What the dispatcher asked for: without it nothing vouches for the build's
            // variables and the publisher writes nothing (`UNORDERED`).
            requested: Some(v1::BuildRequested {
                build: Some(build),
                branch: "main".into(),
                environment: variables.clone(),
                primary_architecture: v1::Architecture::X8664 as i32,
                ..Default::default()
            }),
            variables,
            ..Default::default()
        }),
    )
}

/// How a store's writes are read back after an end-to-end run.
enum Check<'a> {
    /// SSM: the value and the whole history (one version per write).
    Ssm(&'a aws_sdk_ssm::Client),
    /// NATS KV: the value (a revision counts writes to the whole bucket, not this key).
    Kv(&'a dyn ParameterStore),
}

/// What an end-to-end run measured.
struct EndToEnd {
    rate: f64,
    writes: usize,
    /// The services' own fence-overhead histogram, replicas added: p99 bucket (lower, upper).
    fence_p99: (f64, f64),
}

async fn end_to_end(
    nats: &NatsServer,
    label: &str,
    store: Arc<dyn ParameterStore>,
    check: Check<'_>,
    replicas: usize,
    run: u64,
) -> EndToEnd {
    let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut registries = Vec::new();
    for _ in 0..replicas {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(nats.connect().await, &mut registry);
        let publisher = Publisher::new(
            rt,
            PublisherConfig::default(),
            store.clone(),
            Arc::new(NoArtifactCheck),
            &mut registry,
        )
        .unwrap();
        tasks.push(tokio::spawn(publisher.run(shutdown.clone())));
        registries.push(registry);
    }
    // Parameter p of this run belongs to repository p; its pushes are interleaved sequences.
    let name = |p: u64| format!("/prx/stag/Spire/Run{run}App{p}/pkg/docker-image-tag");
    let repo = |p: u64| format!("PRX/run{run}-app{p}");
    let base = run * 1_000_000;
    let completions = shuffled(
        (0..E2E_PARAMETERS * E2E_PUSHES)
            .map(|i| (i % E2E_PARAMETERS, base + i + 1))
            .collect(),
        0x2545_f491_4f6c_dd1d ^ run,
    );
    let started = Instant::now();
    for (p, seq) in &completions {
        rt.publisher
            .publish(&completion(*seq, &name(*p), &repo(*p)))
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(300), "every completion handled", || {
        durable_drained(&rt.js, subject::EVENTS_STREAM, "publisher")
    })
    .await;
    let elapsed = started.elapsed();
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Read every parameter back.
    let mut writes = 0;
    for p in 0..E2E_PARAMETERS {
        let newest = base + p + 1 + (E2E_PUSHES - 1) * E2E_PARAMETERS;
        let values: Vec<String> = match &check {
            Check::Ssm(ssm) => ssm
                .get_parameter_history()
                .name(name(p))
                .max_results(50)
                .send()
                .await
                .unwrap()
                .parameters()
                .iter()
                .map(|h| h.value().unwrap_or_default().to_owned())
                .collect(),
            Check::Kv(store) => {
                vec![store.get(&name(p)).await.unwrap().expect("written").value]
            }
        };
        let seqs: Vec<u64> = values.iter().map(|v| seq_of(v)).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: writes out of push order: {seqs:?}",
            name(p)
        );
        assert_eq!(
            seqs.last().copied(),
            Some(newest),
            "{} final value",
            name(p)
        );
        writes += seqs.len();
    }
    let mut hist = Vec::new();
    for registry in &registries {
        add_buckets(
            &mut hist,
            &buckets(
                &metrics_text(registry),
                "prx_ci_publisher_fence_overhead_seconds",
            ),
        );
    }
    let (fence_p99, observed) = quantile_bucket(&hist, 0.99);
    let total = E2E_PARAMETERS * E2E_PUSHES;
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "end to end, {label}, {replicas} replica(s) x concurrency 8: {total} completions ({E2E_PARAMETERS} parameters x {E2E_PUSHES} pushes, shuffled) in {elapsed:.2?} = {rate:.0}/s; {writes} writes read back in push order, every parameter on its newest push; service fence overhead p99 in ({:.1}, {:.1}] ms over {observed} publications",
        fence_p99.0 * 1e3,
        fence_p99.1 * 1e3,
    );
    EndToEnd {
        rate,
        writes,
        fence_p99,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bench = BenchRun::start("publish");
    runtime.block_on(async {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        fence_overhead(&nats, &rt, &mut bench).await;
        let ssm = SsmParameterStore::new(&moto.sdk_config());
        let ssm_client = aws_sdk_ssm::Client::new(&moto.sdk_config());
        ssm.put("/warm-up", "x").await.unwrap();
        let total = E2E_PARAMETERS * E2E_PUSHES;
        let workload = format!(
            "{total} build completions ({E2E_PARAMETERS} parameters × {E2E_PUSHES} pushes, stored in shuffled push order), concurrency 8 per replica"
        );
        for replicas in [1, 2] {
            let e2e = end_to_end(
                &nats,
                "SSM in moto",
                Arc::new(ssm.clone()),
                Check::Ssm(&ssm_client),
                replicas,
                replicas as u64,
            )
            .await;
            bench.row(
                Row::new(
                    format!(
                        "end to end, SSM in moto, {replicas} replica(s): {workload}; first store → publisher durable drained; every parameter's SSM history read back"
                    ),
                    "-",
                )
                .measured(format!(
                    "{:.0} completions/s; {} writes, all in push order, every parameter on its newest push; the service's fence overhead p99 in ({:.1}, {:.1}] ms (its histogram's buckets)",
                    e2e.rate,
                    e2e.writes,
                    e2e.fence_p99.0 * 1e3,
                    e2e.fence_p99.1 * 1e3,
                ))
                .details(PAGE),
            );
        }
        let kv = KvParameterStore::new(&rt.js).await.unwrap();
        let e2e = end_to_end(
            &nats,
            "KV store (local mode)",
            Arc::new(kv.clone()),
            Check::Kv(&kv),
            1,
            3,
        )
        .await;
        bench.row(
            Row::new(
                format!(
                    "end to end, NATS KV store (local mode), 1 replica: {workload}; every parameter's final value read back"
                ),
                "-",
            )
            .measured(format!(
                "{:.0} completions/s; every parameter on its newest push; the service's fence overhead p99 in ({:.1}, {:.1}] ms",
                e2e.rate,
                e2e.fence_p99.0 * 1e3,
                e2e.fence_p99.1 * 1e3,
            ))
            .details(PAGE),
        );
    });
    bench.finish().unwrap();
}
