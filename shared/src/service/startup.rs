//! The start-up and shutdown every service binary shares: load `[nats]` and `[telemetry]`
//! ([`ProcessConfig`]), set up tracing, connect and provision, then serve `/healthz`,
//! `/readyz` and `/metrics` next to the service until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::bus::subject::ALL_STREAMS;
use crate::config::{ConfigError, NatsConfig, Sections};
use crate::service::ops_http;
use crate::service::runtime::Runtime;
use crate::telemetry::{self, TelemetryConfig, TelemetryGuard};

/// The sections every service process loads besides its own: `[nats]` and `[telemetry]`.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub nats: NatsConfig,
    pub telemetry: TelemetryConfig,
}

impl ProcessConfig {
    /// Loads and validates `[nats]` and `[telemetry]`, recording them in `sections`.
    pub fn load(sections: &mut Sections<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            nats: sections.load("nats")?,
            telemetry: sections.load("telemetry")?,
        })
    }
}

/// A service process after start-up: construct the service with `rt` and `&mut registry`,
/// then hand it to [`ServiceProcess::run`].
#[derive(Debug)]
pub struct ServiceProcess {
    name: &'static str,
    pub rt: Runtime,
    pub registry: Registry,
    pub nats: NatsConfig,
    _telemetry: TelemetryGuard,
}

impl ServiceProcess {
    /// Initialises telemetry as `name` (`prx-ci-dispatcher`), connects to NATS and provisions
    /// streams, consumers and buckets.
    pub async fn start(name: &'static str, config: ProcessConfig) -> anyhow::Result<Self> {
        let ProcessConfig { nats, telemetry } = config;
        let guard = telemetry::init(name, &telemetry)?;
        let mut registry = Registry::default();
        let role = name.trim_start_matches("prx-ci-");
        let rt = Runtime::connect(&nats, role, &mut registry).await?;
        rt.provision(nats.replicas)
            .await
            .context("cannot provision NATS streams, consumers and buckets")?;
        Ok(Self {
            name,
            rt,
            registry,
            nats,
            _telemetry: guard,
        })
    }

    /// Serves the ops endpoints on `ops_listen` and runs `service` until Ctrl-C / SIGTERM
    /// cancels the token it gets; then stops the ops server and returns the service's result.
    pub async fn run<F>(
        self,
        ops_listen: SocketAddr,
        service: impl FnOnce(CancellationToken) -> F,
    ) -> anyhow::Result<()>
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(ops_listen)
            .await
            .with_context(|| format!("cannot listen on {ops_listen}"))?;
        let router = ops_http::ops_router(
            Arc::new(self.registry),
            ops_http::nats_readiness(
                self.rt.client.clone(),
                self.rt.js.clone(),
                ALL_STREAMS.to_vec(),
            ),
        );
        let ops = tokio::spawn(ops_http::serve(listener, router, shutdown.clone()));
        let signal = shutdown.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            tracing::info!("shutting down");
            signal.cancel();
        });
        tracing::info!(service = self.name, %ops_listen, "running");
        let result = service(shutdown.clone()).await;
        shutdown.cancel();
        ops.await
            .context("ops server task failed")?
            .context("ops server failed")?;
        result
    }
}

/// The exit code of a binary's `try_main`, printing the error chain on failure.
pub fn exit_code(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a binary's `--check-config` does with the result of loading its configuration: print
/// the sections it read (see [`Sections::check_report`]) or return the error, connecting to
/// nothing.
pub fn check_config<T>(
    name: &str,
    sections: &Sections<'_>,
    loaded: anyhow::Result<T>,
) -> anyhow::Result<()> {
    let report = sections.check_report(loaded)?;
    print!("{name}: configuration ok\n{report}");
    Ok(())
}
