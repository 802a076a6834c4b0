//! Wiring only: the `dispatcher` consumer on `PRX_WEBHOOKS` and the `dispatcher-reruns`
//! consumer on `PRX_EVENTS`, their store, metrics and handlers.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::bus::nats::Definitions;
use prx_ci_shared::codebuild::backend::BuildBackend;
use prx_ci_shared::config::Validate as _;
use prx_ci_shared::run_consumer;
use prx_ci_shared::{CancellationToken, Runtime};

use crate::buildspec::BuildspecSource;
use crate::config::DispatcherConfig;
use crate::dispatch_store::DispatchStore;
use crate::fault::FaultPoint;
use crate::handler::DispatchHandler;
use crate::metrics::DispatcherMetrics;
use crate::rerun_handler::RerunHandler;
use crate::start::{ShadowScope, Starter};

/// Durable consumer name (`deploy/nats/consumers/dispatcher.json`).
pub const CONSUMER: &str = "dispatcher";
/// Durable consumer of finished builds, for re-runs (`deploy/nats/consumers/dispatcher-reruns.json`).
pub const RERUNS_CONSUMER: &str = "dispatcher-reruns";

/// The dispatcher service.
#[derive(Debug)]
pub struct Dispatcher {
    rt: Runtime,
    config: DispatcherConfig,
    buildspecs: Arc<dyn BuildspecSource>,
    backend: Arc<dyn BuildBackend>,
    settings: ConsumerSettings,
    rerun_settings: ConsumerSettings,
    metrics: DispatcherMetrics,
    fault: FaultPoint,
}

impl Dispatcher {
    /// Validates the configuration and registers the metrics. Streams, the consumer and the KV
    /// buckets must be provisioned (`Runtime::provision`) before [`Dispatcher::run`].
    pub fn new(
        rt: Runtime,
        config: DispatcherConfig,
        buildspecs: Arc<dyn BuildspecSource>,
        backend: Arc<dyn BuildBackend>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [dispatcher]: {reason}"))?;
        let definitions = Definitions::embedded()?;
        let settings = ConsumerSettings::from_definition(definitions.consumer(CONSUMER)?)
            .with_concurrency(config.concurrency);
        let rerun_settings =
            ConsumerSettings::from_definition(definitions.consumer(RERUNS_CONSUMER)?);
        Ok(Self {
            rt,
            config,
            buildspecs,
            backend,
            settings,
            rerun_settings,
            metrics: DispatcherMetrics::register(registry),
            fault: FaultPoint::Off,
        })
    }

    /// Overrides the consumer settings (tests shorten the redelivery backoff).
    pub fn with_consumer_settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Aborts the process at `fault` (test-only, see [`crate::fault`]).
    pub fn with_fault_point(mut self, fault: FaultPoint) -> Self {
        self.fault = fault;
        self
    }

    /// Consumes webhooks and finished builds until `shutdown` is cancelled; in-flight messages
    /// finish first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = DispatchStore::open(&self.rt.js).await?;
        let scope = ShadowScope::new(self.config.mode, &self.config.live_repositories);
        let starter = Starter::new(self.backend, store.clone(), self.fault, scope);
        let webhooks = DispatchHandler::new(
            self.config.clone(),
            self.buildspecs,
            starter.clone(),
            self.rt.publisher.clone(),
            store.clone(),
            self.metrics.clone(),
        );
        let reruns = RerunHandler::new(
            self.config.reruns,
            starter,
            self.rt.publisher.clone(),
            store,
            self.metrics,
        );
        let webhooks = run_consumer(
            self.rt.js.clone(),
            self.rt.publisher.clone(),
            self.settings,
            Arc::new(webhooks),
            self.rt.consumer_metrics.clone(),
            shutdown.clone(),
        );
        let reruns = run_consumer(
            self.rt.js.clone(),
            self.rt.publisher.clone(),
            self.rerun_settings,
            Arc::new(reruns),
            self.rt.consumer_metrics.clone(),
            shutdown,
        );
        // Either loop failing fails the service (a dispatcher without re-runs must not run on
        // quietly).
        tokio::try_join!(
            async { webhooks.await.context("dispatcher consumer failed") },
            async { reruns.await.context("dispatcher-reruns consumer failed") },
        )?;
        Ok(())
    }
}
