//! `prx-ci-dispatcher`: the dispatcher as its own process (GitHub contents API + CodeBuild).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_dispatcher::{CodeBuildBackend, Dispatcher, DispatcherConfig, GitHubBuildspecSource};
use prx_ci_shared::config::{self, AwsConfig, NatsConfig};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::subject::ALL_STREAMS;
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime, ops_http};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "PRX CI dispatcher: decides build or skip for every webhook and starts builds"
)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [aws], [dispatcher]).
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match try_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prx-ci-dispatcher: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.as_deref();
    let nats: NatsConfig = config::load(file, "nats")?;
    let telemetry_config: TelemetryConfig = config::load(file, "telemetry")?;
    let github: GitHubConfig = config::load(file, "github")?;
    let aws: AwsConfig = config::load(file, "aws")?;
    let dispatcher: DispatcherConfig = config::load(file, "dispatcher")?;
    let _telemetry = telemetry::init("prx-ci-dispatcher", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "dispatcher", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision NATS streams, consumers and buckets")?;
    let buildspecs = GitHubBuildspecSource::new(
        GitHubClient::new(github).context("cannot build the GitHub client")?,
    );
    let backend = CodeBuildBackend::new(&aws.sdk_config().await, dispatcher.codebuild.clone());
    let ops_listen = dispatcher.ops_listen;
    let service = Dispatcher::new(
        rt.clone(),
        dispatcher,
        Arc::new(buildspecs),
        Arc::new(backend),
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
    tracing::info!(%ops_listen, "dispatcher running");
    let result = service.run(shutdown.clone()).await;
    shutdown.cancel();
    ops.await
        .context("ops server task failed")?
        .context("ops server failed")?;
    result
}
