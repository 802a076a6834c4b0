//! One chaos run, start to end: repositories, cluster, emulator, fakes, fault proxy and the
//! supervised services up; the load sent while faults are applied one after another; then the
//! system left to quiesce, what it left collected, and the invariants checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prx_ci_shared::bus::subject::EVENTS_STREAM;
use prx_ci_shared::testing::{MotoServer, free_port};

use crate::checks::{self, Outcome};
use crate::cluster::{self, Cluster};
use crate::collect;
use crate::fakes::{self, FakeSlack};
use crate::faults::Fronts;
use crate::history::{Decision, History, ParameterExpectation};
use crate::load::{self, LoadSettings, LoadStats};
use crate::plan::{Fault, LaneKind, Plan, PlanConfig, REPLICAS, SERVICES};
use crate::report::Figures;
use crate::repos;
use crate::service_config::{self, Endpoints, STORE_TIMEOUT_MS};
use crate::supervisor::{Process, Supervisor, binary};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub pushes: usize,
    /// How long the load is spread over.
    pub duration: Duration,
    /// Time between two faults.
    pub fault_interval: Duration,
    /// Apply faults (kills, restarts, outage, injected HTTP faults); off for a baseline run.
    pub faults: bool,
    /// How long the system may take to quiesce after the load.
    pub quiesce_timeout: Duration,
    /// Where the service binaries are (`target/debug`).
    pub bin_dir: PathBuf,
    /// Configs, logs, stores, repositories and the runner's data go here.
    pub run_dir: PathBuf,
}

impl RunConfig {
    /// The CI short form: a few dozen pushes over 25 s, a fault every 2 s.
    pub fn short(seed: u64, bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            seed,
            pushes: 40,
            duration: Duration::from_secs(25),
            fault_interval: Duration::from_secs(2),
            faults: true,
            quiesce_timeout: Duration::from_secs(90),
            bin_dir,
            run_dir,
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct RunResult {
    pub figures: Figures,
    pub outcomes: Vec<Outcome>,
}

/// The webhook secret of the run.
const SECRET: &str = "chaos-webhook-secret";
/// Bytes published on purpose so the dispatcher parks them.
const POISON: &[u8] = b"chaos: deliberately poisoned, not an envelope";
/// How long a restarted node stays down.
const NODE_DOWN: Duration = Duration::from_secs(2);

/// Runs the chaos run of `config`.
pub async fn run(config: &RunConfig) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    println!(
        "chaos run: seed {} ({} pushes over {:?}), run dir {}",
        config.seed,
        config.pushes,
        config.duration,
        config.run_dir.display()
    );
    let binaries: Vec<PathBuf> = SERVICES
        .iter()
        .map(|s| binary(&config.bin_dir, s))
        .collect::<anyhow::Result<_>>()?;
    let plan = Plan::new(PlanConfig::new(config.seed, config.pushes));
    for sub in ["nats", "services", "repos", "runner", "work"] {
        std::fs::create_dir_all(config.run_dir.join(sub))?;
    }
    let run_dir = config.run_dir.canonicalize()?;
    let repos = repos::create(&run_dir.join("repos"), &plan)?;

    let mut cluster = Cluster::start(&run_dir.join("nats"))?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(
            cluster
                .urls()
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?,
        )
        .await
        .context("cannot connect to the cluster")?;
    let js = async_nats::jetstream::new(client.clone());
    prx_ci_shared::testing::wait_until(
        Duration::from_secs(60),
        "the NATS cluster to elect a JetStream meta leader",
        || {
            let js = js.clone();
            async move { js.query_account().await.ok().map(|_| ()) }
        },
    )
    .await;

    // Provisioned once here (R3), so the ten processes starting at once find everything and
    // their own idempotent provisioning is quick.
    let definitions = prx_ci_shared::bus::nats::Definitions::embedded()?;
    prx_ci_shared::bus::nats::provision(&js, &definitions, 3)
        .await
        .context("cannot provision the cluster")?;

    let moto = MotoServer::start().await;
    let buildspecs: HashMap<(String, String), String> = plan
        .pushes
        .iter()
        .map(|p| {
            (
                (plan.repos[p.repo].name.clone(), repos.commits[p.id].clone()),
                repos::buildspec(&plan.repos[p.repo], p),
            )
        })
        .collect();
    let github = fakes::github(service_config::GITHUB_TOKEN, &buildspecs).await;
    let slack = FakeSlack::start().await?;
    let fronts = Fronts::start(
        &moto.endpoint(),
        &github.url(),
        &slack.url,
        config.seed,
        config.faults,
    )
    .await?;

    let endpoints = Endpoints {
        nats: cluster.urls(),
        aws: fronts.aws.clone(),
        github: fronts.github.clone(),
        slack: fronts.slack.clone(),
        webhook_secret: SECRET.to_owned(),
        runner_data_dir: run_dir.join("runner").display().to_string(),
        runner_work_dir: run_dir.join("work").display().to_string(),
        build_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned()),
    };
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ];
    let mut supervisor = Supervisor::default();
    let mut ingress_urls = Vec::new();
    for (service, path) in SERVICES.iter().zip(&binaries) {
        for replica in 0..REPLICAS {
            let port = free_port();
            let files = service_config::files(&run_dir.join("services"), service, replica);
            std::fs::write(
                &files.0,
                service_config::render(service, replica, port, &endpoints),
            )?;
            if *service == "prx-ci-ingress" {
                ingress_urls.push(format!("http://127.0.0.1:{port}/webhooks/github"));
            }
            supervisor.processes.push(Process::new(
                service,
                replica,
                path.clone(),
                files,
                port,
                env.clone(),
            ));
        }
    }
    supervisor.start_all()?;
    supervisor.wait_ready(Duration::from_secs(60)).await?;
    println!("{} service processes ready", supervisor.processes.len());

    // Deliberate poison: parked by the dispatcher, the only thing allowed on PRX_PARKED.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("chaos-poison-{}", config.seed).as_str(),
    );
    js.publish_with_headers("prx.webhook.push.chaos.poison", headers, POISON.into())
        .await?
        .await
        .context("cannot store the poisoned message")?;

    let base = time::OffsetDateTime::now_utc().unix_timestamp();
    let webhooks = load::webhooks(&plan, &repos, base);
    let deliveries = webhooks.len();
    let settings = LoadSettings {
        ingress_urls,
        secret: SECRET.to_owned(),
        pace: config.duration / u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX),
        redeliver_after: Duration::from_secs(1),
        give_up_after: Duration::from_secs(120),
    };
    let stats = Arc::new(LoadStats::default());
    let load = tokio::spawn({
        let stats = stats.clone();
        async move { load::send_all(webhooks, &settings, stats).await }
    });

    let mut figures = Figures {
        seed: config.seed,
        pushes: plan.pushes.len(),
        pull_request_updates: plan
            .pushes
            .iter()
            .filter(|p| matches!(p.lane, LaneKind::PullRequest(_)))
            .count(),
        deliveries,
        duplicate_deliveries: plan.deliveries.iter().filter(|d| d.duplicate).count(),
        ..Figures::default()
    };
    let mut faults = plan.faults.iter().cycle();
    let mut next_fault = tokio::time::Instant::now() + config.fault_interval;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !load.is_finished() {
        tick.tick().await;
        for name in supervisor.restart_exited()? {
            println!("restarted {name} (it exited)");
        }
        if !config.faults || tokio::time::Instant::now() < next_fault {
            continue;
        }
        let fault = *faults.next().context("no faults planned")?;
        apply(fault, &mut supervisor, &mut cluster, &js, &mut figures).await?;
        next_fault = tokio::time::Instant::now() + config.fault_interval;
    }
    let sent = load.await??;
    println!("load sent; waiting for the system to quiesce");

    let quiesced = quiesce(&js, &mut supervisor, config.quiesce_timeout, || {
        (slack.calls().len(), github.statuses().len())
    })
    .await?;
    figures.quiesced = quiesced;

    let (webhook_envelopes, events, parked) = collect::streams(&js).await?;
    let (decisions, completions) = collect::decisions_and_completions(&events);
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config());
    let mut history = History {
        sent,
        stored_webhooks: collect::stored_webhooks(&webhook_envelopes),
        decisions,
        completions,
        runner_builds: collect::runner_builds(&run_dir.join("runner"))?,
        slack: slack.calls(),
        statuses: fakes::status_writes(&github),
        parked: collect::parked(&parked),
        poisoned: vec![POISON.to_vec()],
        ..History::default()
    };
    for (i, repo) in plan.repos.iter().enumerate() {
        let values_in_push_order = plan
            .lane(i, &LaneKind::Main)
            .iter()
            .map(|p| repos::published_value(&repos.commits[p.id]))
            .collect();
        let final_value = plan
            .expected_final(i)
            .map(|p| repos::published_value(&repos.commits[p.id]));
        history.expectations.insert(
            repo.parameter.clone(),
            ParameterExpectation {
                values_in_push_order,
                final_value,
            },
        );
    }
    for name in collect::parameter_names(&ssm, "/prx/stag/Spire/").await? {
        let values = collect::parameter_history(&ssm, &name).await?;
        history.ssm.insert(name, values);
    }

    figures.sends = stats.sends.load(Ordering::Relaxed);
    figures.accepted = stats.accepted.load(Ordering::Relaxed);
    figures.unavailable = stats.unavailable.load(Ordering::Relaxed);
    figures.other_status = stats.other_status.load(Ordering::Relaxed);
    figures.no_answer = stats.no_answer.load(Ordering::Relaxed);
    figures.builds = history
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::Requested { .. }))
        .count();
    figures.reruns = history
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::Requested { retry_of, .. } if !retry_of.is_empty()))
        .count();
    let faulted: std::collections::HashSet<&str> = history
        .completions
        .iter()
        .filter(|c| c.result == crate::history::BuildResult::Fault)
        .map(|c| c.build_id.as_str())
        .collect();
    figures.lost_builds = history
        .decisions
        .iter()
        .filter(|d| {
            matches!(d, Decision::Requested { build_id, retry_of, .. }
                if retry_of.is_empty() && faulted.contains(build_id.as_str()))
        })
        .count();
    figures.own_failures = plan.pushes.iter().filter(|p| p.fails).count();
    figures.service_kills = supervisor.kills;
    figures.service_exits = supervisor.exits();
    figures.injected = fronts.injected();
    let outcomes = checks::check_all(&history);
    figures.seconds = started.elapsed().as_secs_f64();

    supervisor.stop().await;
    cluster.stop().await;
    drop(moto);
    let _ = std::fs::write(run_dir.join("history.txt"), format!("{history:#?}"));
    Ok(RunResult { figures, outcomes })
}

/// Applies one fault.
async fn apply(
    fault: Fault,
    supervisor: &mut Supervisor,
    cluster: &mut Cluster,
    js: &async_nats::jetstream::Context,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    match fault {
        Fault::KillService { service, replica } => {
            if let Some(index) = supervisor.index_of(SERVICES[service], replica) {
                let name = supervisor.kill_and_restart(index).await?;
                println!("SIGKILL {name}, restarted");
            }
        }
        Fault::RestartNode { node } => {
            println!("restarting NATS node {}", cluster.nodes[node].name);
            cluster.restart(node, NODE_DOWN).await?;
            figures.node_restarts += 1;
        }
        Fault::RestartLeader => {
            let leader = cluster::stream_leader(js, EVENTS_STREAM).await;
            match leader.as_deref().and_then(|l| cluster.index_of(l)) {
                Some(node) => {
                    println!(
                        "restarting NATS node {} (leader of {EVENTS_STREAM})",
                        cluster.nodes[node].name
                    );
                    cluster.restart(node, NODE_DOWN).await?;
                    figures.node_restarts += 1;
                    figures.leader_restarts += 1;
                }
                None => {
                    println!("no leader of {EVENTS_STREAM} known right now; leader restart skipped")
                }
            }
        }
        Fault::ClusterOutage => {
            let down = Duration::from_millis(STORE_TIMEOUT_MS) + Duration::from_secs(3);
            println!("stopping the whole NATS cluster for {down:?}");
            let start = Instant::now();
            cluster.outage(down).await?;
            figures.outage_seconds += start.elapsed().as_secs_f64();
        }
    }
    Ok(())
}

/// Waits until every durable consumer is drained, every requested build has a terminal event
/// and nothing new reached the stream or the fakes (`outside`: counts of the fakes'
/// recordings), three checks in a row a second apart, restarting processes that exit
/// meanwhile; false when `timeout` passed first.
async fn quiesce(
    js: &async_nats::jetstream::Context,
    supervisor: &mut Supervisor,
    timeout: Duration,
    outside: impl Fn() -> (usize, usize),
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut quiet = 0;
    let mut last_state = None;
    let mut why = String::new();
    let mut checks = 0u32;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        for name in supervisor.restart_exited()? {
            println!("restarted {name} (it exited)");
        }
        match settled(js).await {
            Ok((true, state)) => {
                let state = (state, outside());
                if last_state.as_ref() == Some(&state) {
                    quiet += 1;
                } else {
                    quiet = 0;
                }
                last_state = Some(state);
            }
            Ok((false, state)) => {
                quiet = 0;
                why = state;
            }
            Err(err) => {
                quiet = 0;
                why = format!("{err:#}");
            }
        }
        if quiet >= 3 {
            return Ok(true);
        }
        checks += 1;
        if checks.is_multiple_of(15) && quiet == 0 {
            println!("still waiting: {why}");
        }
    }
    println!("not quiesced after {timeout:?}: {why}");
    Ok(false)
}

/// Whether consumers are drained and every requested build finished, and a description of
/// the state (what is still busy, or the events stream's size).
async fn settled(js: &async_nats::jetstream::Context) -> anyhow::Result<(bool, String)> {
    let busy = collect::busy_consumers(js).await?;
    if !busy.is_empty() {
        return Ok((false, busy.join("; ")));
    }
    let events = collect::envelopes(js, EVENTS_STREAM).await?;
    let (decisions, completions) = collect::decisions_and_completions(&events);
    let done: std::collections::HashSet<&str> =
        completions.iter().map(|c| c.build_id.as_str()).collect();
    let running = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Requested { build_id, .. } if !done.contains(build_id.as_str())))
        .count();
    if running > 0 {
        return Ok((false, format!("{running} builds without a terminal event")));
    }
    Ok((true, format!("{} events", events.len())))
}
