//! `prx-ci-build-watcher`: the build-watcher as its own process (SQS source and reconciler
//! against AWS, consumers against the NATS cluster).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_shared::config::{self, AwsConfig, NatsConfig};
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime, ops_http, subject};

/// Turns CodeBuild state changes into build events.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-build-watcher", version)]
struct Args {
    /// Configuration file (TOML); `PRX_CI_<SECTION>__<FIELD>` variables override it.
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("prx-ci-build-watcher: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(try_main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prx-ci-build-watcher: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: Args) -> anyhow::Result<()> {
    let file = args.config.as_deref();
    let nats: NatsConfig = config::load(file, "nats")?;
    let telemetry_config: TelemetryConfig = config::load(file, "telemetry")?;
    let aws: AwsConfig = config::load(file, "aws")?;
    let watcher_config: BuildWatcherConfig = config::load(file, "build_watcher")?;
    let _telemetry = telemetry::init("prx-ci-build-watcher", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "build-watcher", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision streams, consumers and KV buckets")?;

    let sdk = aws.sdk_config().await;
    let codebuild = aws_sdk_codebuild::Client::new(&sdk);
    let sqs = watcher_config
        .queue_url
        .is_some()
        .then(|| aws_sdk_sqs::Client::new(&sdk));
    if sqs.is_none() {
        tracing::warn!(
            "no [build_watcher] queue_url: CodeBuild events arrive only through the reconciler"
        );
    }
    let ops_listen = watcher_config.ops_listen;
    let watcher = BuildWatcher::new(
        rt.clone(),
        watcher_config,
        Some(codebuild),
        sqs,
        &mut registry,
    )?;

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(ops_listen)
        .await
        .with_context(|| format!("cannot listen on {ops_listen}"))?;
    let router = ops_http::ops_router(
        Arc::new(registry),
        ops_http::nats_readiness(
            rt.client.clone(),
            rt.js.clone(),
            vec![subject::EVENTS_STREAM],
        ),
    );
    let ops = tokio::spawn(ops_http::serve(listener, router, shutdown.clone()));
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            prx_ci_shared::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    tracing::info!(%ops_listen, "build-watcher running");
    let result = watcher.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = ops.await;
    result
}
