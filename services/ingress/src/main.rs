//! `prx-ci-ingress`: the webhook ingress as its own process. `/healthz`, `/readyz` and
//! `/metrics` are served on the webhook listener (`[ingress] listen`), or `/metrics` on
//! `[ingress] metrics_listen` when that is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prx_ci_ingress::recovery::Reconciler;
use prx_ci_ingress::{Ingress, IngressConfig};
use prx_ci_shared::CancellationToken;
use prx_ci_shared::config::Sections;
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

// Each delivery allocates a few buffers of the payload's size; glibc malloc spent ~15% of the
// ingress's CPU on them under load (see docs/benchmarks/ingress.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives GitHub webhooks and stores them in JetStream.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-ingress", version)]
struct Args {
    /// Configuration file (TOML, sections [nats], [telemetry], [ingress], and [github] for
    /// `[ingress.self_healing]`);
    /// `PRX_CI_<SECTION>__<FIELD>` variables override it, `PRX_CI_WEBHOOK_SECRET`
    /// (comma-separated) adds webhook secrets.
    #[arg(long, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Listen address; overrides `[ingress] listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Load and validate the configuration, print the sections read, and exit (connects to
    /// nothing).
    #[arg(long)]
    check_config: bool,
}

/// Every section this binary loads.
struct Config {
    ingress: IngressConfig,
    /// Read only with `[ingress.self_healing] enabled`.
    github: Option<GitHubConfig>,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    sections.note(prx_ci_ingress::config::SECTION);
    sections.note_variable(prx_ci_ingress::config::WEBHOOK_SECRET_ENV);
    let ingress = IngressConfig::load(sections.file())?;
    let github = if ingress.self_healing.enabled {
        let github: GitHubConfig = sections.load("github")?;
        ingress
            .self_healing
            .check_credentials(&github)
            .map_err(|reason| anyhow::anyhow!("invalid configuration [ingress]: {reason}"))?;
        Some(github)
    } else {
        None
    };
    Ok(Config {
        ingress,
        github,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-ingress", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-ingress", &sections, loaded);
    }
    let Config {
        ingress: mut config,
        github,
        process,
    } = loaded?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let mut process = ServiceProcess::start("prx-ci-ingress", process).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let reconciler = match github {
        Some(github) => Some(Reconciler::new(
            &process.rt,
            &config,
            GitHubClient::new(github).context("cannot build the GitHub client")?,
            &mut process.registry,
        )),
        None => None,
    };
    let mut ingress = Ingress::new(process.rt.clone(), config, &mut process.registry)?;
    if let Some(reconciler) = reconciler {
        ingress = ingress.with_reconciler(reconciler);
    }
    // The ops endpoints share the webhook listener, so the ingress serves the registry itself
    // (`process` stays alive for its telemetry guard).
    let registry = Arc::new(std::mem::take(&mut process.registry));

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            prx_ci_shared::service::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    let result = ingress.run(listener, registry, shutdown).await;
    drop(process);
    result
}
