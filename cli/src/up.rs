//! `prx-ci up`: the whole system in one process, on embedded defaults: a local nats-server,
//! the local build runner, the NATS KV parameter store, no artifact checks, and Slack messages
//! and commit statuses as log lines (unless tokens are configured).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_dispatcher::{Dispatcher, DispatcherConfig, LocalGitBuildspecSource};
use prx_ci_ingress::{Ingress, IngressConfig};
use prx_ci_local_runner::{LocalRunner, LocalRunnerConfig};
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_publisher::{KvParameterStore, NoArtifactCheck, Publisher, PublisherConfig};
use prx_ci_shared::config::{self, NatsConfig, Validate as _};
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::telemetry::TelemetryConfig;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::local_nats::LocalNats;

/// Arguments of `prx-ci up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the local nats-server, build runner and logs keep their state.
    #[arg(long, default_value = "./.prx-ci")]
    data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "PRX_CI_NATS__URL")]
    nats_url: Option<String>,
    /// Port of the nats-server started locally.
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// Address the webhook endpoint (and /healthz, /readyz, /metrics) listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the ops gRPC API (`prx-ci history`, `builds`, ...).
    #[arg(long, default_value = "127.0.0.1:50051")]
    ops_listen: SocketAddr,
}

/// Everything `up` reads from the configuration file and environment.
struct UpConfig {
    telemetry: TelemetryConfig,
    nats: NatsConfig,
    github: GitHubConfig,
    ingress: IngressConfig,
    dispatcher: DispatcherConfig,
    runner: LocalRunnerConfig,
    build_watcher: prx_ci_build_watcher::BuildWatcherConfig,
    publisher: PublisherConfig,
    notifier: prx_ci_notifier::NotifierConfig,
    ops: OpsConfig,
}

impl UpConfig {
    fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            telemetry: config::load(file, "telemetry")?,
            nats: config::load(file, "nats")?,
            github: config::load(file, "github")?,
            ingress: IngressConfig::load_unvalidated(file)?,
            dispatcher: config::load(file, "dispatcher")?,
            runner: config::load(file, "runner")?,
            build_watcher: config::load(file, "build_watcher")?,
            publisher: config::load(file, "publisher")?,
            notifier: config::load(file, "notifier")?,
            // Validated once `up` has filled in a generated token.
            ops: config::load_unvalidated(file, "ops")?,
        })
    }
}

/// A random secret for local mode, printed once.
fn generate_secret() -> SecretString {
    SecretString::from(hex::encode(rand::random::<[u8; 16]>()))
}

pub async fn run(config_file: Option<&Path>, args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = UpConfig::load(config_file)?;
    let _telemetry = prx_ci_shared::telemetry::init("prx-ci", &cfg.telemetry)?;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let local_nats = match &args.nats_url {
        Some(url) => {
            cfg.nats.url.clone_from(url);
            None
        }
        None => {
            let addr = SocketAddr::from(([127, 0, 0, 1], args.nats_port));
            let nats = LocalNats::start(
                addr,
                &args.data_dir.join("nats"),
                &args.data_dir.join("nats-server.log"),
            )
            .await?;
            cfg.nats.url.clone_from(&nats.url);
            Some(nats)
        }
    };

    // Local-mode defaults the flags decide.
    cfg.ingress.listen = args.listen;
    cfg.ops.listen = args.ops_listen;
    if cfg.runner.data_dir == LocalRunnerConfig::default().data_dir {
        cfg.runner.data_dir = args.data_dir.join("runner");
    }
    let generated_secret = cfg.ingress.secrets.is_empty().then(generate_secret);
    if let Some(secret) = &generated_secret {
        cfg.ingress.secrets.push(secret.clone());
    }
    let ops_token = match &cfg.ops.token {
        Some(token) => token.clone(),
        None => {
            let token = generate_secret();
            cfg.ops.token = Some(token.clone());
            token
        }
    };
    cfg.ops
        .validate()
        .map_err(|reason| anyhow::anyhow!("invalid configuration [ops]: {reason}"))?;
    let token_file = args.data_dir.join("ops-token");
    write_private(&token_file, ops_token.expose_secret())?;
    if let Some(secret) = &generated_secret {
        write_private(
            &args.data_dir.join("webhook-secret"),
            secret.expose_secret(),
        )?;
    }

    let mut registry = Registry::default();
    let rt = Runtime::connect(&cfg.nats, "up", &mut registry).await?;
    rt.provision(cfg.nats.replicas)
        .await
        .context("cannot provision streams, consumers and KV buckets")?;

    let runner = LocalRunner::new(rt.clone(), cfg.runner.clone())?;
    let ingress = Ingress::new(rt.clone(), cfg.ingress.clone(), &mut registry)?;
    let dispatcher = Dispatcher::new(
        rt.clone(),
        cfg.dispatcher,
        Arc::new(LocalGitBuildspecSource::new()),
        runner.clone(),
        &mut registry,
    )?;
    let watcher = prx_ci_build_watcher::BuildWatcher::new(
        rt.clone(),
        cfg.build_watcher,
        None,
        None,
        &mut registry,
    )?;
    let publisher = Publisher::new(
        rt.clone(),
        cfg.publisher,
        Arc::new(KvParameterStore::new(&rt.js).await?),
        Arc::new(NoArtifactCheck),
        &mut registry,
    )?;
    let notifier = prx_ci_notifier::Notifier::new(
        rt.clone(),
        cfg.notifier.clone(),
        prx_ci_notifier::chat_sink(&cfg.notifier.slack)?,
        prx_ci_notifier::status_sink(&cfg.github, &cfg.notifier.statuses)?,
        prx_ci_notifier::commit_source(&cfg.github)?,
        &mut registry,
    )?;
    let ops = OpsService::new(rt.clone(), cfg.ops.clone(), &mut registry)?;
    let registry = Arc::new(registry);

    let webhook_listener = TcpListener::bind(cfg.ingress.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ingress.listen))?;
    let ops_listener = TcpListener::bind(cfg.ops.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ops.listen))?;

    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    services.spawn(named(
        "ingress",
        ingress.run(webhook_listener, registry.clone(), shutdown.clone()),
    ));
    services.spawn(named("dispatcher", dispatcher.run(shutdown.clone())));
    services.spawn(named("build-watcher", watcher.run(shutdown.clone())));
    services.spawn(named("publisher", publisher.run(shutdown.clone())));
    services.spawn(named("notifier", notifier.run(shutdown.clone())));
    services.spawn(named("ops", ops.run(ops_listener, shutdown.clone())));

    print_banner(&cfg.nats.url, &args, generated_secret.as_ref(), &token_file);

    // Run until Ctrl-C / SIGTERM, or until a service fails.
    let mut failure = None;
    tokio::select! {
        () = prx_ci_shared::shutdown_signal() => {}
        Some(done) = services.join_next() => {
            failure = Some(match done {
                Ok(Ok(name)) => anyhow::anyhow!("{name} stopped unexpectedly"),
                Ok(Err(err)) => err,
                Err(err) => anyhow::anyhow!("a service panicked: {err}"),
            });
        }
    }
    println!("prx-ci: stopping...");
    shutdown.cancel();
    runner.shutdown().await;
    while let Some(done) = services.join_next().await {
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => eprintln!("prx-ci: {err:#}"),
            Err(err) => eprintln!("prx-ci: a service panicked: {err}"),
        }
    }
    if let Some(nats) = local_nats {
        nats.stop().await;
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

async fn named(
    name: &'static str,
    service: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<&'static str> {
    service
        .await
        .with_context(|| format!("{name} failed"))
        .map(|()| name)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_banner(nats_url: &str, args: &UpArgs, secret: Option<&SecretString>, token_file: &Path) {
    println!();
    println!("prx-ci is up.");
    println!("  webhook URL : http://{}/webhooks/github", args.listen);
    println!(
        "  health      : http://{}/readyz   metrics: /metrics",
        args.listen
    );
    println!("  NATS        : {nats_url}   (prx-ci events --nats-url {nats_url})");
    println!(
        "  ops API     : http://{}   (token in {})",
        args.ops_listen,
        token_file.display()
    );
    match secret {
        Some(secret) => {
            println!(
                "  webhook secret (generated for this run; set PRX_CI_WEBHOOK_SECRET to choose one):"
            );
            println!("      {}", secret.expose_secret());
        }
        None => println!("  webhook secret: from PRX_CI_WEBHOOK_SECRET / [ingress] secrets"),
    }
    println!("  try         : ./prx-ci demo     (two pushes whose builds finish in reverse order)");
    println!("Press Ctrl-C to stop.");
    println!();
}
