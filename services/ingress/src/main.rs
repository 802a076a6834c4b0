//! `prx-ci-ingress`: the webhook ingress as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_ingress::{Ingress, IngressConfig};
use prx_ci_shared::config::{self, NatsConfig};
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime};

// Each delivery allocates a few buffers of the payload's size; glibc malloc spent ~15% of the
// ingress's CPU on them under load (see docs/benchmarks/ingress.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives GitHub webhooks and stores them in JetStream.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-ingress", version)]
struct Args {
    /// Configuration file (sections [nats], [telemetry], [ingress]).
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address; overrides `[ingress] listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prx-ci-ingress: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.as_deref();
    let nats: NatsConfig = config::load(file, "nats")?;
    let telemetry_config: TelemetryConfig = config::load(file, "telemetry")?;
    let mut ingress_config = IngressConfig::load(file)?;
    if let Some(listen) = args.listen {
        ingress_config.listen = listen;
    }
    let _telemetry = telemetry::init("prx-ci-ingress", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "ingress", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision NATS streams")?;
    let listener = tokio::net::TcpListener::bind(ingress_config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", ingress_config.listen))?;
    let ingress = Ingress::new(rt, ingress_config, &mut registry)?;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            prx_ci_shared::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    ingress.run(listener, Arc::new(registry), shutdown).await
}
