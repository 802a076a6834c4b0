//! `prx-ci up`: the whole system in one process, on embedded defaults: a local nats-server,
//! the local build runner, the NATS KV parameter store, no artifact checks, and Slack messages
//! and commit statuses as log lines (unless tokens are configured).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prx_ci::local_nats::LocalNats;
use prx_ci::system::{LocalSystem, SystemConfig};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

/// Arguments of `prx-ci up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the local nats-server, build runner and logs keep their state.
    #[arg(long, default_value = "./.prx-ci")]
    data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    #[arg(long, env = prx_ci_shared::config::NATS_URL_ENV)]
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
    /// Address of the web dashboard (sign in with the ops token).
    #[arg(long, default_value = "127.0.0.1:8081")]
    dashboard_listen: SocketAddr,
}

pub async fn run(config_file: Option<&Path>, args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = SystemConfig::load(config_file)?;
    let _telemetry = prx_ci_shared::telemetry::init("prx-ci", &cfg.telemetry)?;

    // Secrets first: the data dir is created private, and hidden from builds.
    cfg.ingress.listen = args.listen;
    cfg.ops.listen = args.ops_listen;
    let secrets = cfg.prepare_local(&args.data_dir)?;
    let local_nats = match &args.nats_url {
        Some(url) => {
            cfg.nats.url.clone_from(url);
            None
        }
        None => {
            let addr = SocketAddr::from(([127, 0, 0, 1], args.nats_port));
            let nats = LocalNats::start(addr, &args.data_dir).await?;
            nats.apply(&mut cfg.nats);
            Some(nats)
        }
    };

    let webhook_listener = TcpListener::bind(cfg.ingress.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ingress.listen))?;
    let ops_listener = TcpListener::bind(cfg.ops.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.ops.listen))?;
    let dashboard_listener = TcpListener::bind(args.dashboard_listen)
        .await
        .with_context(|| format!("cannot listen on {} (dashboard)", args.dashboard_listen))?;
    let nats_url = cfg.nats.url.clone();
    let mut system = LocalSystem::start(
        cfg,
        webhook_listener,
        ops_listener,
        Some(dashboard_listener),
    )
    .await?;

    print_banner(
        &nats_url,
        &args,
        secrets.generated_webhook_secret.as_ref(),
        &secrets.ops_token_file,
        local_nats.is_some(),
    );

    // Run until Ctrl-C / SIGTERM, or until a service fails.
    let failure = tokio::select! {
        () = prx_ci_shared::service::shutdown_signal() => None,
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

fn print_banner(
    nats_url: &str,
    args: &UpArgs,
    secret: Option<&SecretString>,
    token_file: &Path,
    local_nats: bool,
) {
    println!();
    println!("prx-ci is up.");
    println!("  webhook URL : http://{}/webhooks/github", args.listen);
    println!(
        "  health      : http://{}/readyz   metrics: /metrics",
        args.listen
    );
    if local_nats {
        println!(
            "  NATS        : {nats_url}   (user/password in {}; prx-ci events uses them)",
            args.data_dir
                .join(prx_ci::local_nats::CREDENTIALS_FILE)
                .display()
        );
    } else {
        println!("  NATS        : {nats_url}   (prx-ci events --nats-url {nats_url})");
    }
    println!(
        "  dashboard   : http://{}/   (sign in with the ops token)",
        args.dashboard_listen
    );
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
