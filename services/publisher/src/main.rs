//! `prx-ci-publisher`: the publisher as its own process (AWS SSM + ECR/S3 artifact checks).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_publisher::{AwsArtifactChecker, Publisher, PublisherConfig, SsmParameterStore};
use prx_ci_shared::config::{self, AwsConfig, NatsConfig};
use prx_ci_shared::subject::ALL_STREAMS;
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime, ops_http};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "PRX CI publisher: writes SSM parameters for successful publishable builds, in push order"
)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [aws], [publisher]).
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match try_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prx-ci-publisher: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.as_deref();
    let nats: NatsConfig = config::load(file, "nats")?;
    let telemetry_config: TelemetryConfig = config::load(file, "telemetry")?;
    let aws: AwsConfig = config::load(file, "aws")?;
    let publisher: PublisherConfig = config::load(file, "publisher")?;
    if publisher.application_code_bucket.is_empty() {
        anyhow::bail!(
            "invalid configuration [publisher]: application_code_bucket is required (S3 artifact checks)"
        );
    }
    let _telemetry = telemetry::init("prx-ci-publisher", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "publisher", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision NATS streams, consumers and buckets")?;
    let sdk_config = aws.sdk_config().await;
    let store = SsmParameterStore::new(&sdk_config);
    let artifacts = AwsArtifactChecker::with_path_style(
        &sdk_config,
        publisher.application_code_bucket.clone(),
        publisher.s3_force_path_style,
    );
    let ops_listen = publisher.ops_listen;
    let service = Publisher::new(
        rt.clone(),
        publisher,
        Arc::new(store),
        Arc::new(artifacts),
        &mut registry,
    )?;

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(ops_listen)
        .await
        .with_context(|| format!("cannot listen on {ops_listen}"))?;
    let router = ops_http::ops_router(
        Arc::new(registry),
        ops_http::nats_readiness(rt.client.clone(), rt.js.clone(), ALL_STREAMS.to_vec()),
    );
    let ops = tokio::spawn(ops_http::serve(listener, router, shutdown.clone()));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        prx_ci_shared::shutdown_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    tracing::info!(%ops_listen, "publisher running");
    let result = service.run(shutdown.clone()).await;
    shutdown.cancel();
    ops.await
        .context("ops server task failed")?
        .context("ops server failed")?;
    result
}
