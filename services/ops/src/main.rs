//! `prx-ci-ops`: the ops service binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_shared::config::{self, NatsConfig};
use prx_ci_shared::subject::ALL_STREAMS;
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime, ops_http};

/// The PRX CI ops service: the operators' gRPC API.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-ops", version, about)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [ops]).
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(try_main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: Args) -> anyhow::Result<()> {
    let file = args.config.as_deref();
    let nats: NatsConfig = config::load(file, "nats")?;
    let telemetry_config: TelemetryConfig = config::load(file, "telemetry")?;
    let ops: OpsConfig = config::load(file, "ops")?;
    let _telemetry = telemetry::init("prx-ci-ops", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "ops", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision streams")?;
    prx_ci_ops::parked::ensure_bucket(&rt.js, nats.replicas).await?;

    let grpc = tokio::net::TcpListener::bind(ops.listen)
        .await
        .with_context(|| format!("cannot listen on {}", ops.listen))?;
    let http = tokio::net::TcpListener::bind(ops.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", ops.ops_listen))?;
    let readiness =
        ops_http::nats_readiness(rt.client.clone(), rt.js.clone(), ALL_STREAMS.to_vec());
    let service = OpsService::new(rt, ops, &mut registry)?;
    let router = ops_http::ops_router(Arc::new(registry), readiness);

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        prx_ci_shared::shutdown_signal().await;
        signal.cancel();
    });
    let http_task = tokio::spawn(ops_http::serve(http, router, shutdown.clone()));
    let result = service.run(grpc, shutdown.clone()).await;
    shutdown.cancel();
    http_task
        .await
        .context("the ops HTTP task failed")?
        .context("the ops HTTP server failed")?;
    result
}
