//! `prx-ci up`: the whole system in one process, on embedded defaults: a local nats-server,
//! the local build runner, the NATS KV parameter store, no artifact checks, and Slack messages
//! and commit statuses as log lines (unless tokens are configured).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prx_ci_local_runner::LocalRunnerConfig;
use prx_ci_shared::config::Validate as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

use crate::local_nats::LocalNats;
use prx_ci::system::{LocalSystem, SystemConfig};

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

/// A random secret for local mode, printed once.
fn generate_secret() -> SecretString {
    SecretString::from(hex::encode(rand::random::<[u8; 16]>()))
}

pub async fn run(config_file: Option<&Path>, args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = SystemConfig::load(config_file)?;
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

    let webhook_listener = TcpListener::bind(cfg.ingress.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ingress.listen))?;
    let ops_listener = TcpListener::bind(cfg.ops.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ops.listen))?;
    let nats_url = cfg.nats.url.clone();
    let mut system = LocalSystem::start(cfg, webhook_listener, ops_listener).await?;

    print_banner(&nats_url, &args, generated_secret.as_ref(), &token_file);

    // Run until Ctrl-C / SIGTERM, or until a service fails.
    let failure = tokio::select! {
        () = prx_ci_shared::shutdown_signal() => None,
        err = system.failed() => Some(err),
    };
    println!("prx-ci: stopping...");
    let stopped = system.stop().await;
    if let Some(nats) = local_nats {
        nats.stop().await;
    }
    match failure {
        Some(err) => Err(err),
        None => stopped,
    }
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
