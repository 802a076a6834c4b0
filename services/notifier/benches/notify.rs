//! Notifier benchmark (`cargo bench -p prx-ci-notifier --bench notify`).
//!
//! 1. Rendering alone: messages rendered per second (pure function).
//! 2. Throughput: build events folded, rendered and delivered per second through a real
//!    nats-server into instant fake Slack and GitHub servers (GitHub: the shared stateful fake,
//!    holding every build's push), pace off (many channels).
//! 3. Burst: 100 builds of one channel finishing at once (4 events each, handed to NATS as fast
//!    as they are acknowledged) at the per-channel pace of 1 message/s (`NOTIFY_BENCH_PACE_MS`
//!    changes it): the time until every event is folded and acknowledged (the notifier durable
//!    drained), chat calls made vs updates requested, the smallest gap between two calls
//!    (asserted not under the pace), and the time until every message shows its build's final
//!    state (asserted).
//!
//! Headline rows go to `docs/benchmarks/results/notify.json`; the method is in
//! docs/benchmarks/notifier.md.

#[path = "../tests/fakes/mod.rs"]
mod fakes;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fakes::{FakeSlack, SLACK_TOKEN};
use prometheus_client::registry::Registry;
use prx_ci_notifier::commits::GitHubCommitSource;
use prx_ci_notifier::{GitHubStatusSink, Notifier, NotifierConfig, SlackClient};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::notice::console_links::LinkConfig;
use prx_ci_shared::notice::render::{self, CommitSummary, CommitsCache};
use prx_ci_shared::notice::view::BuildView;
use prx_ci_shared::testing::bench::{BenchRun, Row};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub};
use prx_ci_shared::testing::{NatsServer, durable_drained, wait_until};
use prx_ci_shared::{CancellationToken, Chain, Runtime};
use secrecy::SecretString;

const SHA: &str = "165df6a5fd675dcf67a1b2c3d4e5f60718293a4b";
const BEFORE: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const PAGE: &str = "benchmarks/notifier.md";
/// The fake GitHub's token.
const GITHUB_TOKEN: &str = "ghp_bench";
/// Builds whose commits the fake GitHub holds (the burst's builds are `0, 10, ..., 990`).
const SEEDED_BUILDS: usize = 1000;

/// Build `n`'s commit (distinct per build, so statuses do not coalesce across builds).
fn sha(n: usize) -> String {
    format!("{n:08x}{}", &SHA[8..])
}

fn build_ref(n: usize) -> v1::BuildRef {
    v1::BuildRef {
        build_id: format!("infrastructure-ci-Runner2:bench-{n}"),
        build_request_id: format!("req-{n}"),
        repository: format!("PRX/app-{}", n % 10),
        commit: sha(n),
        architecture: v1::Architecture::X8664 as i32,
        backend: "codebuild".into(),
        project: "infrastructure-ci-Runner2".into(),
        region: "us-east-1".into(),
        log_url: "https://logs.example.test/b".into(),
        retry_of: String::new(),
        shadowed: false,
    }
}

fn envelope(n: usize, name: &str, payload: Payload) -> v1::Envelope {
    let chain = Chain {
        correlation_id: format!("delivery-{n}"),
        causation_id: format!("webhook-{n}"),
        ..Chain::default()
    };
    chain.envelope(chain.derive_id(&[name]), payload)
}

fn requested(n: usize) -> v1::Envelope {
    let repo = build_ref(n).repository;
    let commit = sha(n);
    let environment: HashMap<String, String> = [
        ("PRX_REPO", repo.as_str()),
        ("PRX_COMMIT", commit.as_str()),
        ("PRX_BRANCH", "main"),
        ("PRX_GITHUB_BEFORE", BEFORE),
        ("PRX_GITHUB_AFTER", commit.as_str()),
        ("PRX_AWS_ACCOUNT_ID", "123456789012"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    envelope(
        n,
        "requested",
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(build_ref(n)),
            environment,
            ..Default::default()
        }),
    )
}

fn started(n: usize) -> v1::Envelope {
    envelope(
        n,
        "started",
        Payload::BuildStarted(v1::BuildStarted {
            build: Some(build_ref(n)),
            ..Default::default()
        }),
    )
}

fn phase(n: usize, completed: &str, current: &str) -> v1::Envelope {
    envelope(
        n,
        &format!("phase-{completed}"),
        Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(build_ref(n)),
            completed_phase: completed.into(),
            completed_phase_status: "SUCCEEDED".into(),
            current_phase: current.into(),
            ..Default::default()
        }),
    )
}

fn completed(n: usize) -> v1::Envelope {
    envelope(
        n,
        "completed",
        Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(build_ref(n)),
            status: v1::BuildStatus::Succeeded as i32,
            duration_ms: 60_000,
            ..Default::default()
        }),
    )
}

fn published(n: usize, parameter: &str) -> v1::Envelope {
    envelope(
        n,
        &format!("publish-{parameter}"),
        Payload::PublishApplied(v1::PublishApplied {
            parameter: parameter.into(),
            value: format!("github/prx/app:{SHA}-x86_64"),
            build: Some(build_ref(n)),
            ..Default::default()
        }),
    )
}

/// The fake GitHub holding every build's push `BEFORE..sha(n)` (3 commits) in its
/// repository, so statuses land and compares answer 3 commits.
async fn seeded_github() -> FakeGitHub {
    let github = FakeGitHub::start(FakeAuth::Token(GITHUB_TOKEN.into())).await;
    for n in 0..SEEDED_BUILDS {
        let repository = build_ref(n).repository;
        github.add_commit(&repository, FakeCommit::new(BEFORE));
        let mut parent = BEFORE.to_owned();
        for i in 0..3 {
            let commit = if i == 2 {
                sha(n)
            } else {
                format!("{n:08x}{i:02x}{}", &SHA[10..])
            };
            let login = (i != 1).then_some("octocat");
            github.add_commit(
                &repository,
                FakeCommit::new(commit.clone())
                    .parent(parent)
                    .message(format!("Commit {i}\n\nbody"))
                    .author("Git Author", login),
            );
            parent = commit;
        }
    }
    github
}

struct Peers {
    nats: NatsServer,
    rt: Runtime,
    slack: FakeSlack,
    github: FakeGitHub,
}

impl Peers {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
        rt.provision(1).await.expect("provision");
        Self {
            nats,
            rt,
            slack: FakeSlack::start().await,
            github: seeded_github().await,
        }
    }

    async fn notifier(&self, config: NotifierConfig) -> (Notifier, CancellationToken) {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(self.nats.connect().await, &mut registry);
        let github = GitHubClient::new(GitHubConfig {
            api_url: self.github.url(),
            token: Some(SecretString::from(GITHUB_TOKEN)),
            ..GitHubConfig::default()
        })
        .expect("github client");
        let notifier = Notifier::new(
            rt,
            config.clone(),
            Arc::new(SlackClient::new(&config.slack).expect("slack client")),
            // The budget is not what this measures: make it roomy.
            Arc::new(GitHubStatusSink::new(github.clone(), 1_000_000, 1_000_000)),
            Some(Arc::new(GitHubCommitSource::new(github))),
            &mut registry,
        )
        .expect("notifier");
        (notifier, CancellationToken::new())
    }

    fn config(&self, channels: usize, interval: Duration) -> NotifierConfig {
        let mut config = NotifierConfig::default();
        config.slack.api_url = self.slack.url.clone();
        config.slack.token = Some(SecretString::from(SLACK_TOKEN));
        config.slack.min_interval = interval;
        config.concurrency = 32;
        for repo in 0..channels.min(10) {
            config
                .channel_overrides
                .insert(format!("PRX/app-{repo}"), format!("#ci-{repo}"));
        }
        config
    }
}

fn bench_render(bench: &mut BenchRun) {
    let mut view = BuildView::default();
    for e in [
        requested(1),
        started(1),
        phase(1, "INSTALL", "BUILD"),
        completed(1),
    ] {
        view.apply(&e).expect("apply");
    }
    let commits = CommitsCache::Loaded {
        commits: (0..16)
            .map(|i| CommitSummary {
                sha: format!("{i:02x}{}", &SHA[2..]),
                author: "octocat".into(),
                message: format!("Commit {i}"),
            })
            .collect(),
        total: 16,
    };
    let links = LinkConfig {
        sso_start_url: Some("https://d-906713e952.awsapps.com/start".into()),
        ..LinkConfig::default()
    };
    let n = 20_000;
    let t0 = Instant::now();
    let mut chars = 0;
    for _ in 0..n {
        let message = render::render(&view, Some(&commits), &links);
        chars += message.mrkdwn().len();
        std::hint::black_box(message.digest());
    }
    let elapsed = t0.elapsed();
    let rate = f64::from(n) / elapsed.as_secs_f64();
    println!(
        "render: {n} messages (16 commits, digest included) in {elapsed:.2?} = {rate:.0} renders/s ({} bytes each)",
        chars / n as usize
    );
    bench.row(
        Row::new(
            format!("rendering alone: {n} push messages with 16 commits, console links and digest"),
            "-",
        )
        .measured(format!("{rate:.0} /s ({} bytes each)", chars / n as usize))
        .details(PAGE),
    );
}

async fn bench_throughput(bench: &mut BenchRun) {
    let peers = Peers::start().await;
    let builds = 200;
    let (notifier, shutdown) = peers.notifier(peers.config(10, Duration::ZERO)).await;
    let stats = notifier.stats();
    let task = tokio::spawn(notifier.run(shutdown.clone()));
    let t0 = Instant::now();
    let mut events = 0u64;
    for n in 0..builds {
        for e in [
            requested(n),
            started(n),
            phase(n, "INSTALL", "BUILD"),
            completed(n),
            published(n, "/prx/stag/Spire/App/pkg/docker-image-tag"),
        ] {
            peers.rt.publisher.publish(&e).await.expect("publish");
            events += 1;
        }
    }
    let published_in = t0.elapsed();
    wait_until(Duration::from_secs(300), "every build delivered", || {
        let messages = peers.slack.messages();
        async move {
            (messages.len() == builds
                && messages
                    .iter()
                    .all(|m| m.text.contains("» Built") && m.mrkdwn.contains("» Set `")))
            .then_some(())
        }
    })
    .await;
    let elapsed = t0.elapsed();
    let calls = peers.slack.all_calls().len();
    let posts = peers.slack.calls("chat.postMessage").len();
    assert_eq!(posts, builds, "one message posted per build");
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {events} events of {builds} builds (10 channels, pace off) published in {published_in:.2?}, all delivered in {elapsed:.2?} = {rate:.0} events/s; {calls} chat calls ({posts} posts), {} statuses written, {} events applied",
        stats.statuses_written.load(Ordering::Relaxed),
        stats.events_applied.load(Ordering::Relaxed),
    );
    bench.row(
        Row::new(
            format!(
                "throughput, pace off: {events} events of {builds} builds on 10 channels handed to NATS one at a time (each publish awaited, {:.2} s), first publish → every build's message showing its final state (checked every 10 ms)",
                published_in.as_secs_f64()
            ),
            "-",
        )
        .measured(format!(
            "{rate:.0} events/s ({:.2} s); {calls} chat calls ({posts} posts)",
            elapsed.as_secs_f64()
        ))
        .details(PAGE),
    );
    shutdown.cancel();
    task.await.expect("join").expect("notifier");
}

async fn bench_burst(interval: Duration, bench: &mut BenchRun) {
    let peers = Peers::start().await;
    let builds = 100;
    // Setup: 100 builds of one channel already have their message (pace off).
    let mut config = peers.config(0, Duration::ZERO);
    config.statuses.enabled = false;
    let (notifier, shutdown) = peers.notifier(config.clone()).await;
    let task = tokio::spawn(notifier.run(shutdown.clone()));
    for n in 0..builds {
        for e in [requested(n * 10), started(n * 10)] {
            peers.rt.publisher.publish(&e).await.expect("publish");
        }
    }
    wait_until(Duration::from_secs(120), "100 messages posted", || {
        let posted = peers.slack.messages().len();
        async move { (posted == builds).then_some(()) }
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("notifier");
    let setup_calls = peers.slack.all_calls().len();

    // The burst: every build finishes at once (4 events each), pace on.
    config.slack.min_interval = interval;
    let (notifier, shutdown) = peers.notifier(config).await;
    let stats = notifier.stats();
    let task = tokio::spawn(notifier.run(shutdown.clone()));
    let t0 = Instant::now();
    for n in 0..builds {
        for e in [
            phase(n * 10, "BUILD", "POST_BUILD"),
            completed(n * 10),
            published(n * 10, "/prx/stag/Spire/App/pkg/docker-image-tag"),
            published(n * 10, "/prx/stag/Spire/App/pkg/s3-object-key"),
        ] {
            peers.rt.publisher.publish(&e).await.expect("publish");
        }
    }
    let published_in = t0.elapsed();
    let events = builds * 4;
    // Kept up: every event folded into its build's record and acknowledged.
    wait_until(
        Duration::from_secs(120),
        "every burst event folded and acknowledged",
        || durable_drained(&peers.rt.js, "PRX_EVENTS", "notifier"),
    )
    .await;
    let folded = t0.elapsed();
    let applied = stats.events_applied.load(Ordering::Relaxed);
    assert_eq!(applied, events as u64, "every burst event folded");
    wait_until(
        Duration::from_secs(600),
        "every build to show its final state",
        || {
            let messages = peers.slack.messages();
            async move {
                messages
                    .iter()
                    .all(|m| m.text.contains("» Built") && m.mrkdwn.contains("s3-object-key"))
                    .then_some(())
            }
        },
    )
    .await;
    let drained = t0.elapsed();
    assert_eq!(
        peers.slack.messages().len(),
        builds,
        "one message per build"
    );
    let calls = peers.slack.all_calls();
    let burst_calls = &calls[setup_calls..];
    let posts = burst_calls
        .iter()
        .filter(|c| c.method == "chat.postMessage")
        .count();
    assert_eq!(posts, 0, "the burst only updates the builds' messages");
    let min_gap = burst_calls
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .min()
        .unwrap_or_default();
    // Gaps are taken where the fake receives the calls: allow 2 % of loopback jitter.
    assert!(
        min_gap >= interval.mul_f64(0.98),
        "two chat calls {min_gap:?} apart, under the pace {interval:?}"
    );
    let requested = stats.chat_requested.load(Ordering::Relaxed);
    println!(
        "burst: {builds} builds x 4 events on one channel, pace {interval:?}: published in {published_in:.2?}, folded and acknowledged in {folded:.2?}, every message final in {drained:.2?}; {requested} updates requested, {} chat calls made ({posts} posts), smallest gap between calls {min_gap:.2?}",
        burst_calls.len(),
    );
    // Kept up: folded within a second of the last publish, calls never closer than the pace.
    let lag = folded.saturating_sub(published_in);
    bench.row(
        Row::new(
            format!(
                "burst: {builds} builds of one channel finishing at once ({events} events handed to NATS in {:.2} s), pace {:.1} s per channel: first publish → every event folded and acknowledged (notifier durable drained, checked every 10 ms); chat calls; smallest gap between calls; first publish → every message final",
                published_in.as_secs_f64(),
                interval.as_secs_f64()
            ),
            "keep up with 100 builds finishing in 1 s at ≤ 1 message/s/channel",
        )
        .measured(format!(
            "folded in {:.2} s ({:.2} s after the last publish); {} chat calls for {requested} updates requested; smallest gap {:.3} s; all final in {:.1} s",
            folded.as_secs_f64(),
            lag.as_secs_f64(),
            burst_calls.len(),
            min_gap.as_secs_f64(),
            drained.as_secs_f64(),
        ))
        .met(lag < Duration::from_secs(1) && interval >= Duration::from_secs(1))
        .details(PAGE),
    );
    shutdown.cancel();
    task.await.expect("join").expect("notifier");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut bench = BenchRun::start("notify");
    bench_render(&mut bench);
    runtime.block_on(bench_throughput(&mut bench));
    let interval = std::env::var("NOTIFY_BENCH_PACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    runtime.block_on(bench_burst(interval, &mut bench));
    bench.finish().expect("record");
}
