//! The ingress under a slow-upload flood: memory stays bounded and legitimate webhooks keep
//! being stored.
//!
//! `cargo bench -p prx-ci-ingress --bench ingress-hostile` (or `scripts/bench ingress-hostile`)
//!
//! 1. starts a nats-server (the test harness) and the release `prx-ci-ingress` binary as its
//!    own process with its default limits (so its peak RSS is its own `VmHWM`);
//! 2. attack: `PRX_BENCH_ATTACKERS` (default 200) connections each announce a 25 MiB body
//!    with a well-formed wrong signature and send it slowly, 1 MiB every 0.5 s; an attacker
//!    whose request is answered (or cut off) reconnects at the same pace, for
//!    `PRX_BENCH_ATTACK_SECS` (default 25 s); with `PRX_BENCH_ATTACK_FRAMING=chunked` the
//!    bodies are chunked (no `Content-Length`, 1 MiB chunks) instead;
//! 3. meanwhile signed deliveries of the recorded push (compact, 8.5 KB) arrive at
//!    `PRX_BENCH_LEGIT_PER_SECOND` (default 20), each on a fresh connection as GitHub sends
//!    them;
//! 4. prints the legitimate deliveries' status codes and latency p50/p99/max, what the attack
//!    got, the ingress's rejection counters, and its peak RSS; asserts every legitimate
//!    delivery was answered 202 and stored once.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use prx_ci_ingress::{WEBHOOK_PATH, signature_256};
use prx_ci_shared::Runtime;
use prx_ci_shared::testing::bench::{BenchRun, Row, percentile};
use prx_ci_shared::testing::{NatsServer, workspace_root};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, MissedTickBehavior};

use common::{Connection, IngressProcess, SECRET, env_usize, stored_count};

/// GitHub's largest delivery, as the attackers announce it (= the default `max_body_bytes`).
const ATTACK_BODY_BYTES: usize = 25 * 1024 * 1024;
/// What an attacker sends per step, and how often.
const ATTACK_CHUNK_BYTES: usize = 1024 * 1024;
const ATTACK_PACE: Duration = Duration::from_millis(500);
/// How often the ingress's RSS is sampled (the peak is also read from `VmHWM`).
const RSS_SAMPLE: Duration = Duration::from_millis(250);
/// The RSS target of the issue.
const RSS_TARGET_MIB: f64 = 200.0;
const WRONG_SIGNATURE: &str =
    "sha256=0000000000000000000000000000000000000000000000000000000000000000";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

/// What the attackers saw: answers by status, connections the ingress closed without an
/// answer, requests still unanswered when the attack ended.
#[derive(Debug, Default, Clone)]
struct AttackStats {
    requests: usize,
    statuses: BTreeMap<u16, usize>,
    closed_without_answer: usize,
    unanswered_at_end: usize,
    body_bytes_sent: usize,
}

async fn bench() {
    let attackers = env_usize("PRX_BENCH_ATTACKERS", 200);
    let attack = Duration::from_secs(env_usize("PRX_BENCH_ATTACK_SECS", 25) as u64);
    let legit_per_second = env_usize("PRX_BENCH_LEGIT_PER_SECOND", 20).max(1);
    let log_filter = std::env::var("PRX_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned());
    let chunked = std::env::var("PRX_BENCH_ATTACK_FRAMING").is_ok_and(|v| v == "chunked");

    let recorded = std::fs::read(workspace_root().join("tests/data/github/push.json"))
        .expect("tests/data/github/push.json");
    let value: serde_json::Value = serde_json::from_slice(&recorded).expect("push.json");
    let body = Bytes::from(serde_json::to_vec(&value).expect("compact JSON"));

    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.expect("provision");
    let js = rt.js.clone();

    // The default limits: what is measured is what ships.
    let ingress = IngressProcess::start(&server.url(), Some(&log_filter), "").await;
    let pid = ingress.child.id();
    let (_, rss_idle) = ingress.memory_kib();
    println!(
        "{attackers} attackers x {} MiB {} bodies at {} MiB per {:?}, wrong signature, for {attack:?}; \
         {legit_per_second} signed deliveries/s of {} bytes; ingress defaults, log filter {log_filter:?}",
        ATTACK_BODY_BYTES >> 20,
        if chunked { "chunked" } else { "Content-Length" },
        ATTACK_CHUNK_BYTES >> 20,
        ATTACK_PACE,
        body.len()
    );

    let started = Instant::now();
    let until = started + attack;
    let stats = Arc::new(Mutex::new(AttackStats::default()));
    let chunk = Bytes::from(vec![b' '; ATTACK_CHUNK_BYTES]);
    let attack_tasks: Vec<_> = (0..attackers)
        .map(|_| {
            tokio::spawn(attacker(
                ingress.addr.clone(),
                chunked,
                chunk.clone(),
                until,
                Arc::clone(&stats),
            ))
        })
        .collect();
    let sampler = tokio::spawn(sample_rss(pid, until));
    let legit = legit_deliveries(&ingress.addr, body, legit_per_second, until).await;
    for task in attack_tasks {
        task.await.expect("attacker");
    }
    let rss_samples = sampler.await.expect("sampler");
    let (hwm, rss_after) = ingress.memory_kib();
    let metrics = reqwest::get(format!("http://{}/metrics", ingress.addr))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics text");
    let stored = stored_count(&js).await;
    drop(ingress);

    // Legitimate deliveries.
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, _) in &legit {
        *by_status.entry(*status).or_default() += 1;
    }
    let mut latencies: Vec<Duration> = legit.iter().map(|(_, l)| *l).collect();
    latencies.sort_unstable();
    let percentile_ms = |p: f64| percentile(&latencies, p).as_secs_f64() * 1e3;
    println!(
        "legitimate deliveries: {} sent, statuses {by_status:?}, stored {stored}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        legit.len(),
        percentile_ms(0.50),
        percentile_ms(0.99),
        percentile_ms(1.0),
    );

    let stats = stats.lock().expect("stats").clone();
    println!(
        "attack: {} requests, statuses {:?}, closed without answer {}, unanswered at the end {}, {:.0} MiB of body sent",
        stats.requests,
        stats.statuses,
        stats.closed_without_answer,
        stats.unanswered_at_end,
        stats.body_bytes_sent as f64 / (1024.0 * 1024.0)
    );
    println!("ingress counters:");
    for line in metrics.lines().filter(|l| {
        (l.starts_with("prx_ci_ingress_requests_total") && !l.ends_with(" 0"))
            || l.starts_with("prx_ci_ingress_header_timeouts_total")
            || l.starts_with("prx_ci_ingress_body_bytes_in_flight ")
    }) {
        println!("  {line}");
    }
    let peak_mib = hwm as f64 / 1024.0;
    println!(
        "ingress RSS: idle {:.1} MiB, peak (VmHWM) {peak_mib:.1} MiB, after {:.1} MiB; sampled every {RSS_SAMPLE:?} (MiB): {}",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_samples
            .iter()
            .map(|(t, kib)| format!("{t:.0}s {:.0}", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "targets: every legitimate delivery 202: {}; peak RSS < {RSS_TARGET_MIB} MiB: {}",
        if by_status.keys().all(|s| *s == 202) {
            "met"
        } else {
            "MISSED"
        },
        if peak_mib < RSS_TARGET_MIB {
            "met"
        } else {
            "MISSED"
        },
    );
    assert_eq!(
        by_status.get(&202).copied().unwrap_or(0),
        legit.len(),
        "every legitimate delivery answered 202"
    );
    assert_eq!(
        stored,
        legit.len() as u64,
        "every legitimate delivery stored once"
    );

    let setup = format!(
        "{attackers} slow {} MiB wrong-signature uploads ({}) for {attack:?} while {legit_per_second} signed webhooks/s arrive, ingress defaults",
        ATTACK_BODY_BYTES >> 20,
        if chunked { "chunked" } else { "Content-Length" },
    );
    let mut run = BenchRun::start("ingress-hostile");
    run.row(
        Row::new(
            format!("legitimate deliveries answered 202 and stored, {setup}"),
            "all",
        )
        .measured(format!(
            "{} of {}; p50 {:.2} / p99 {:.2} / max {:.2} ms",
            stored,
            legit.len(),
            percentile_ms(0.50),
            percentile_ms(0.99),
            percentile_ms(1.0)
        ))
        .met(true)
        .details("benchmarks/ingress.md"),
    );
    run.row(
        Row::new(
            "ingress peak RSS (VmHWM) under that attack",
            format!("< {RSS_TARGET_MIB} MiB"),
        )
        .measured(format!("{peak_mib:.1} MiB"))
        .met(peak_mib < RSS_TARGET_MIB)
        .details("benchmarks/ingress.md"),
    );
    run.finish().expect("record the run");
}

/// One hostile client: announces a 25 MiB body (or a chunked one) with a wrong signature
/// and sends it at 1 MiB per 0.5 s until answered; then reconnects at the same pace, until
/// `until`.
async fn attacker(
    addr: String,
    chunked: bool,
    chunk: Bytes,
    until: Instant,
    stats: Arc<Mutex<AttackStats>>,
) {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {ATTACK_BODY_BYTES}")
    };
    let head = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hostile\r\n\
         Content-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: hostile\r\nX-Hub-Signature-256: {WRONG_SIGNATURE}\r\n\
         {framing}\r\n\r\n"
    );
    while Instant::now() < until {
        let attempt_started = Instant::now();
        let Ok(stream) = TcpStream::connect(&addr).await else {
            tokio::time::sleep_until(attempt_started + ATTACK_PACE).await;
            continue;
        };
        let (mut reader, mut writer) = stream.into_split();
        stats.lock().expect("stats").requests += 1;
        let sender = tokio::spawn({
            let head = head.clone();
            let chunk = chunk.clone();
            let stats = Arc::clone(&stats);
            async move {
                if writer.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut ticks = tokio::time::interval(ATTACK_PACE);
                let mut sent = 0;
                while sent < ATTACK_BODY_BYTES {
                    ticks.tick().await;
                    let n = chunk.len().min(ATTACK_BODY_BYTES - sent);
                    let written = if chunked {
                        write_chunk(&mut writer, &chunk[..n]).await
                    } else {
                        writer.write_all(&chunk[..n]).await
                    };
                    if written.is_err() {
                        return;
                    }
                    sent += n;
                    stats.lock().expect("stats").body_bytes_sent += n;
                }
                // Keep the connection open until the answer comes.
                std::future::pending::<()>().await;
            }
        });
        let answer = tokio::time::timeout_at(until, read_status(&mut reader)).await;
        sender.abort();
        {
            let mut stats = stats.lock().expect("stats");
            match answer {
                Ok(Some(status)) => *stats.statuses.entry(status).or_default() += 1,
                Ok(None) => stats.closed_without_answer += 1,
                Err(_) => stats.unanswered_at_end += 1,
            }
        }
        // Pacing of the attack model (one attempt per 0.5 s at most), not a wait for the
        // system under test.
        tokio::time::sleep_until(attempt_started + ATTACK_PACE).await;
    }
}

/// One chunk of a chunked body.
async fn write_chunk(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    data: &[u8],
) -> std::io::Result<()> {
    writer
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    writer.write_all(data).await?;
    writer.write_all(b"\r\n").await
}

/// The status of the response on `reader`, or `None` if the connection ends before one.
async fn read_status(reader: &mut OwnedReadHalf) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buffer.len() >= 12 {
            return std::str::from_utf8(&buffer[9..12]).ok()?.parse().ok();
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Signed deliveries at `per_second`, each on a fresh connection, until `until`: their
/// statuses (0 = no answer) and latencies (connect to answer).
async fn legit_deliveries(
    addr: &str,
    body: Bytes,
    per_second: usize,
    until: Instant,
) -> Vec<(u16, Duration)> {
    let signature = signature_256(SECRET, &body);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second as u32);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deliveries = Vec::new();
    let mut i = 0;
    while Instant::now() < until {
        ticks.tick().await;
        i += 1;
        let head = format!(
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: GitHub-Hookshot/bench\r\n\
             Content-Type: application/json\r\nX-GitHub-Event: push\r\n\
             X-GitHub-Delivery: legit-{i:08}\r\nX-GitHub-Hook-ID: 512345678\r\n\
             X-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let addr = addr.to_owned();
        let body = body.clone();
        deliveries.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = match Connection::open(&addr).await {
                Ok(mut connection) => connection
                    .request(head.as_bytes(), &body)
                    .await
                    .unwrap_or(0),
                Err(_) => 0,
            };
            (status, started.elapsed())
        }));
    }
    let mut out = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        out.push(delivery.await.expect("delivery task"));
    }
    out
}

/// `VmRSS` of `pid` every `RSS_SAMPLE` until `until`: (seconds since start, KiB), one sample
/// per second kept for the report.
async fn sample_rss(pid: u32, until: Instant) -> Vec<(f64, u64)> {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(RSS_SAMPLE);
    let mut kept = Vec::new();
    let mut next_report = Duration::ZERO;
    while Instant::now() < until {
        ticks.tick().await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        if started.elapsed() >= next_report {
            kept.push((started.elapsed().as_secs_f64(), rss));
            next_report += Duration::from_secs(5);
        }
    }
    kept
}
