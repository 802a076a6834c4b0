//! `prx-ci-notifier`: the notifier as its own process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use prx_ci_notifier::{Notifier, NotifierConfig};
use prx_ci_shared::config::{self, NatsConfig};
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::telemetry::{self, TelemetryConfig};
use prx_ci_shared::{CancellationToken, Runtime, ops_http, subject};

/// Slack messages and GitHub commit statuses for PRX CI builds.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-notifier", version)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [notifier]).
    #[arg(long, env = "PRX_CI_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match try_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prx-ci-notifier: {err:#}");
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
    let notifier_config: NotifierConfig = config::load(file, "notifier")?;
    let _telemetry = telemetry::init("prx-ci-notifier", &telemetry_config)?;

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats, "notifier", &mut registry).await?;
    rt.provision(nats.replicas)
        .await
        .context("cannot provision NATS streams, consumers and buckets")?;

    let chat = prx_ci_notifier::chat_sink(&notifier_config.slack)?;
    let statuses = prx_ci_notifier::status_sink(&github, &notifier_config.statuses)?;
    let commits = prx_ci_notifier::commit_source(&github)?;
    if notifier_config.slack.token.is_none() {
        tracing::warn!("no [notifier.slack] token: build messages go to the log");
    }
    if github.token.is_none() {
        tracing::warn!("no [github] token: commit statuses go to the log, no commit lists");
    }
    let ops_listen = notifier_config.ops_listen;
    let notifier = Notifier::new(
        rt.clone(),
        notifier_config,
        chat,
        statuses,
        commits,
        &mut registry,
    )?;

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(ops_listen)
        .await
        .with_context(|| format!("cannot listen on {ops_listen}"))?;
    let readiness = ops_http::nats_readiness(
        rt.client.clone(),
        rt.js.clone(),
        vec![subject::EVENTS_STREAM],
    );
    let router = ops_http::ops_router(Arc::new(registry), readiness);
    let ops = tokio::spawn(ops_http::serve(listener, router, shutdown.clone()));
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            prx_ci_shared::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    tracing::info!(%ops_listen, "notifier running");
    let result = notifier.run(shutdown.clone()).await;
    shutdown.cancel();
    ops.await
        .context("ops server task failed")?
        .context("ops server failed")?;
    result
}
