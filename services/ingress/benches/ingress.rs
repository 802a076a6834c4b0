//! Ingress throughput, latency, CPU and memory, against the raw JetStream ceiling measured in
//! the same run, at the default log level and at a quieter one.
//!
//! `cargo bench -p prx-ci-ingress --bench ingress`
//!
//! 1. starts a nats-server (the test harness: JetStream, file store in a temp dir);
//! 2. ceiling: publishes the same `WebhookReceived` envelope the ingress would store (the
//!    recorded push payload, compact JSON) with a unique `Nats-Msg-Id` each, at the same
//!    concurrency, each publish waiting for its ack;
//! 3. ingress, four times: runs the release `prx-ci-ingress` binary as its own process with the
//!    default log level (no `log_filter`, as shipped) and with `PRX_BENCH_LOG` (default
//!    `warn`), in the order default, warn, warn, default with half the deliveries each (so
//!    neither level always runs first; each level's figures are its two halves together),
//!    and drives each with signed deliveries of that payload (unique
//!    `X-GitHub-Delivery` each) over 64 keep-alive HTTP/1.1 connections from a minimal
//!    in-process client (like `wrk`, so the generator takes little of the 2 cores);
//! 4. runs the ceiling again; prints requests/s, p50/p99/max latency, CPU per request of each
//!    process, the ingress's peak RSS (`VmHWM`), and the ratio to the better ceiling, and
//!    records the headline rows (`docs/benchmarks/results/ingress.json`).
//!
//! Environment: `PRX_BENCH_COUNT` (requests per ceiling run and per ingress log level, default
//! 100000), `PRX_BENCH_CONCURRENCY` (default 64), `PRX_BENCH_LOG` (the quieter level's log
//! filter, default `warn`), `PRX_BENCH_INGRESS_THREADS` (the ingress's tokio worker threads,
//! default one per core).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_ingress::{WEBHOOK_PATH, signature_256};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::{WEBHOOKS_STREAM, webhook_subject};
use prx_ci_shared::testing::bench::{BenchRun, Row, percentile};
use prx_ci_shared::testing::{NatsServer, workspace_root};

use common::{Connection, IngressProcess, SECRET, env_usize, stored_count};

const WARMUP: usize = 5_000;

#[derive(Debug)]
struct Run {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile(&sorted, p)
    }

    fn report(&self, name: &str) {
        println!(
            "{name:<28} {:>9.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   ({} in {:.2} s, {} errors)",
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
            self.count,
            self.elapsed.as_secs_f64(),
            self.errors,
        );
    }
}

/// Runs `count` operations with `concurrency` workers; `op(i)` returns whether it succeeded.
async fn drive<F, Fut>(count: usize, concurrency: usize, op: F) -> Run
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = Arc::clone(&op);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count / concurrency + 1);
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let t = Instant::now();
                    if !op(worker, i).await {
                        errors += 1;
                    }
                    latencies.push(t.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.expect("worker");
        latencies.extend(l);
        errors += e;
    }
    Run {
        count,
        elapsed: started.elapsed(),
        latencies,
        errors,
    }
}

/// The raw ceiling: publish-with-ack of the envelope the ingress would store.
async fn raw_jetstream(
    js: &jetstream::Context,
    payload: &[u8],
    count: usize,
    concurrency: usize,
    tag: &str,
) -> Run {
    let js = js.clone();
    let payload = Bytes::copy_from_slice(payload);
    let tag = tag.to_owned();
    drive(count, concurrency, move |_, i| {
        let js = js.clone();
        let id = format!("{tag}-{i:08}");
        let envelope = Chain::starting(&id).envelope(
            id.clone(),
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: id.clone(),
                event_name: "push".into(),
                payload: payload.clone(),
                hook_id: "512345678".into(),
                repository: "PRX/example-app".into(),
                origin: v1::Origin::Github.into(),
                requested_by: String::new(),
            }),
        );
        async move {
            let message = PublishMessage::build()
                .message_id(&id)
                .payload(envelope.encode_to_vec().into());
            match js
                .send_publish(webhook_subject("push", "PRX/example-app"), message)
                .await
            {
                Ok(ack) => ack.await.is_ok_and(|a| !a.duplicate),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Drives the ingress at `addr` with signed deliveries of `body`.
async fn ingress_load(addr: &str, body: Bytes, count: usize, concurrency: usize, tag: &str) -> Run {
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(tokio::sync::Mutex::new(
            Connection::open(addr)
                .await
                .expect("connect to the ingress"),
        ));
    }
    let connections = Arc::new(connections);
    let signature = signature_256(SECRET, &body);
    let addr = addr.to_owned();
    let tag = tag.to_owned();
    drive(count, concurrency, move |worker, i| {
        let connections = Arc::clone(&connections);
        let body = body.clone();
        let head = format!(
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: GitHub-Hookshot/bench\r\n\
             Content-Type: application/json\r\nX-GitHub-Event: push\r\n\
             X-GitHub-Delivery: {tag}-{i:08}\r\nX-GitHub-Hook-ID: 512345678\r\n\
             X-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        async move {
            let mut connection = connections[worker].lock().await;
            matches!(connection.request(head.as_bytes(), &body).await, Ok(202))
        }
    })
    .await
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of the nats-server listening on `port`.
fn nats_server_pid(port: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first()?.ends_with(b"nats-server");
        let on_port = args
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        (is_nats && on_port).then_some(pid)
    })
}

/// CPU used per request by each process during a phase, in microseconds.
struct CpuSample {
    pids: Vec<(&'static str, u32)>,
    start: Vec<f64>,
}

impl CpuSample {
    fn start(pids: Vec<(&'static str, u32)>) -> Self {
        let start = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
        Self { pids, start }
    }

    /// Prints each process's CPU per request and share of a core; returns the CPU per
    /// request in microseconds, in the order of `pids`.
    fn report(&self, requests: usize, elapsed: Duration) -> Vec<f64> {
        let used: Vec<f64> = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((_, pid), start)| cpu_seconds(*pid) - start)
            .collect();
        let parts: Vec<String> = self
            .pids
            .iter()
            .zip(&used)
            .map(|((name, _), used)| {
                format!(
                    "{name} {:.0} us/req ({:.0}% of a core)",
                    used * 1e6 / requests as f64,
                    used * 100.0 / elapsed.as_secs_f64()
                )
            })
            .collect();
        println!("{:<28} {}", "  cpu", parts.join(", "));
        used.iter().map(|u| u * 1e6 / requests as f64).collect()
    }
}

async fn purge(js: &jetstream::Context) {
    js.get_stream(WEBHOOKS_STREAM)
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

/// One ingress process driven with `count` deliveries.
struct IngressPhase {
    run: Run,
    /// Ingress CPU per delivery, microseconds.
    cpu_us: f64,
    /// Peak RSS (`VmHWM`), KiB.
    hwm_kib: u64,
    stored: u64,
}

impl IngressPhase {
    /// Two phases of one level as one: their deliveries, time, latencies and CPU together.
    fn together(a: Self, b: Self) -> Self {
        let count = a.run.count + b.run.count;
        let cpu_us = (a.cpu_us * a.run.count as f64 + b.cpu_us * b.run.count as f64) / count as f64;
        let mut latencies = a.run.latencies;
        latencies.extend(b.run.latencies);
        Self {
            run: Run {
                count,
                elapsed: a.run.elapsed + b.run.elapsed,
                latencies,
                errors: a.run.errors + b.run.errors,
            },
            cpu_us,
            hwm_kib: a.hwm_kib.max(b.hwm_kib),
            stored: a.stored + b.stored,
        }
    }
}

/// Starts the ingress with `log_filter` (`None`: the default), warms it, drives it with
/// `count` deliveries and reads back what was stored.
async fn ingress_phase(
    server: &NatsServer,
    js: &jetstream::Context,
    body: &Bytes,
    log_filter: Option<&str>,
    count: usize,
    concurrency: usize,
    nats_pid: u32,
) -> IngressPhase {
    let level = log_filter.unwrap_or("default");
    // Each phase its own delivery ids (warm-up included): a level runs twice, and ids seen
    // before are duplicates JetStream does not store again, even after a purge.
    static PHASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let phase = PHASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ingress = IngressProcess::start(&server.url(), log_filter, "").await;
    let (_, rss_idle) = ingress.memory_kib();
    let warm = format!("warm-{phase}");
    ingress_load(&ingress.addr, body.clone(), WARMUP, concurrency, &warm).await;
    purge(js).await;
    let cpu = CpuSample::start(vec![
        ("load generator", std::process::id()),
        ("ingress", ingress.child.id()),
        ("nats-server", nats_pid),
    ]);
    let tag = format!("delivery-{level}-{phase}");
    let run = ingress_load(&ingress.addr, body.clone(), count, concurrency, &tag).await;
    run.report(&format!("ingress webhooks ({level})"));
    let cpu_us = cpu.report(count, run.elapsed)[1];
    let (hwm_kib, rss) = ingress.memory_kib();
    let stored = stored_count(js).await;
    drop(ingress);
    println!(
        "{:<28} stored {stored}/{count}, peak RSS (VmHWM) {:.1} MiB, RSS idle {:.1} MiB, after {:.1} MiB",
        "",
        hwm_kib as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    purge(js).await;
    IngressPhase {
        run,
        cpu_us,
        hwm_kib,
        stored,
    }
}

async fn bench() {
    let mut record = BenchRun::start("ingress");
    let count = env_usize("PRX_BENCH_COUNT", 100_000);
    let concurrency = env_usize("PRX_BENCH_CONCURRENCY", 64);
    let quiet_filter = std::env::var("PRX_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned());

    // GitHub sends compact JSON; the recorded file is pretty-printed for reading.
    let recorded = std::fs::read(workspace_root().join("tests/data/github/push.json"))
        .expect("tests/data/github/push.json");
    let value: serde_json::Value = serde_json::from_slice(&recorded).expect("push.json");
    let body = Bytes::from(serde_json::to_vec(&value).expect("compact JSON"));

    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.expect("provision");
    let js = rt.js.clone();

    println!(
        "payload {} bytes (compact push.json), concurrency {concurrency}, {count} requests per ceiling run and per log level (ingress: default, {quiet_filter:?}, {quiet_filter:?}, default, half each)",
        body.len()
    );

    let port = server
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let nats_pid = nats_server_pid(&port).expect("the nats-server process");
    let own_pid = std::process::id();

    raw_jetstream(&js, &body, WARMUP, concurrency, "warm-raw").await;
    purge(&js).await;
    let cpu = CpuSample::start(vec![("bench", own_pid), ("nats-server", nats_pid)]);
    let raw = raw_jetstream(&js, &body, count, concurrency, "raw").await;
    raw.report("jetstream publish+ack");
    cpu.report(count, raw.elapsed);
    assert_eq!(
        stored_count(&js).await,
        count as u64,
        "every raw publish stored"
    );
    purge(&js).await;

    // The two levels in the order default, warn, warn, default, half the deliveries each, so
    // neither level always runs first (a warmer machine, a fuller store) and each level's
    // figures are the two halves together.
    let half = count / 2;
    let other = count - half;
    let default_first = ingress_phase(&server, &js, &body, None, half, concurrency, nats_pid).await;
    let quiet_first = ingress_phase(
        &server,
        &js,
        &body,
        Some(&quiet_filter),
        half,
        concurrency,
        nats_pid,
    )
    .await;
    let quiet_second = ingress_phase(
        &server,
        &js,
        &body,
        Some(&quiet_filter),
        other,
        concurrency,
        nats_pid,
    )
    .await;
    let default_second =
        ingress_phase(&server, &js, &body, None, other, concurrency, nats_pid).await;
    let default = IngressPhase::together(default_first, default_second);
    let quiet = IngressPhase::together(quiet_first, quiet_second);
    default
        .run
        .report("ingress webhooks (default), both halves");
    quiet
        .run
        .report(&format!("ingress webhooks ({quiet_filter}), both halves"));

    let cpu = CpuSample::start(vec![("bench", own_pid), ("nats-server", nats_pid)]);
    let raw_after = raw_jetstream(&js, &body, count, concurrency, "raw-after").await;
    raw_after.report("jetstream publish+ack again");
    cpu.report(count, raw_after.elapsed);

    let ceiling = raw.per_second().max(raw_after.per_second());
    let ratio = default.run.per_second() / ceiling;
    let level_ratio = default.run.per_second() / quiet.run.per_second();
    let p99 = default.run.percentile(0.99);
    let hwm = default.hwm_kib.max(quiet.hwm_kib);
    println!(
        "default level: {ratio:.2} of the better raw ceiling (target >= 0.7), {level_ratio:.2} of {quiet_filter} (target >= 0.95), {:.0} us ingress CPU per delivery (target <= 25)",
        default.cpu_us
    );

    let page = "benchmarks/ingress.md";
    let per_second = |run: &Run| format!("{:.0} /s", run.per_second());
    record
        .row(
            Row::new(
                "raw JetStream publish+ack of the same envelope, 64 in flight (better of 2 runs)",
                "-",
            )
            .measured(format!("{ceiling:.0} /s"))
            .details(page),
        )
        .row(
            Row::new(
                "ingress throughput, default log level, 64 connections, 8.5 KB signed push",
                "≥ 15,000 /s",
            )
            .measured(per_second(&default.run))
            .met(default.run.per_second() >= 15_000.0)
            .details(page),
        )
        .row(
            Row::new(
                format!("ingress throughput, log level {quiet_filter}, same run"),
                "-",
            )
            .measured(per_second(&quiet.run))
            .details(page),
        )
        .row(
            Row::new(
                format!("ingress throughput at the default log level / at {quiet_filter}"),
                "≥ 0.95",
            )
            .measured(format!("{level_ratio:.2}"))
            .met(level_ratio >= 0.95)
            .details(page),
        )
        .row(
            Row::new(
                "ingress throughput (default log level) / raw JetStream ceiling, same run",
                "≥ 0.7",
            )
            .measured(format!("{ratio:.2}"))
            .met(ratio >= 0.7)
            .details(page),
        )
        .row(
            Row::new("ingress latency p99, default log level", "< 10 ms")
                .measured(format!("{:.2} ms", p99.as_secs_f64() * 1e3))
                .met(p99 < Duration::from_millis(10))
                .details(page),
        )
        .row(
            Row::new("ingress peak RSS (VmHWM), both phases", "< 50 MiB")
                .measured(format!("{:.1} MiB", hwm as f64 / 1024.0))
                .met(hwm < 50 * 1024)
                .details(page),
        )
        .row(
            Row::new(
                "ingress CPU per delivery (user+system), default log level",
                "≤ 25 µs",
            )
            .measured(format!("{:.0} µs", default.cpu_us))
            .met(default.cpu_us <= 25.0)
            .details(page),
        );
    for phase in [&default, &quiet] {
        assert_eq!(phase.run.errors, 0, "every delivery answered 202");
        assert_eq!(phase.stored, count as u64, "every delivery stored once");
    }
    record.finish().expect("record the run");
}
