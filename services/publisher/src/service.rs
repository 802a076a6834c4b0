//! Wiring: validates the config, registers metrics, opens the stores and runs the consumer.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::ownership::{ConfigOwners, OwnerStore};
use prx_ci_shared::run_consumer;
use prx_ci_shared::{CancellationToken, Runtime};

use crate::apps::AppRules;
use crate::artifacts::ArtifactChecker;
use crate::config::PublisherConfig;
use crate::fence_store::{KvFence, SHADOW_FENCE_BUCKET};
use crate::handler::PublishHandler;
use crate::metrics::PublisherMetrics;
use crate::parameter_store::{KvParameterStore, ParameterStore, SHADOW_PARAMETERS_BUCKET};
use crate::skip_store::SkipStore;

/// The durable consumer (`deploy/nats/consumers/publisher.json`).
pub const DURABLE: &str = "publisher";

/// The publisher service.
#[derive(Debug)]
pub struct Publisher {
    rt: Runtime,
    config: PublisherConfig,
    store: Arc<dyn ParameterStore>,
    artifacts: Arc<dyn ArtifactChecker>,
    config_owners: ConfigOwners,
    apps: AppRules,
    metrics: PublisherMetrics,
}

impl Publisher {
    /// Wires the service; nothing runs until [`Publisher::run`].
    pub fn new(
        rt: Runtime,
        config: PublisherConfig,
        store: Arc<dyn ParameterStore>,
        artifacts: Arc<dyn ArtifactChecker>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        use prx_ci_shared::config::Validate as _;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [publisher]: {reason}"))?;
        let config_owners = config
            .config_owners()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [publisher]: {reason}"))?;
        let apps = config
            .app_rules()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [publisher]: {reason}"))?;
        let metrics = PublisherMetrics::register(registry);
        Ok(Self {
            rt,
            config,
            store,
            artifacts,
            config_owners,
            apps,
            metrics,
        })
    }

    /// Consumes build completions until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let fence = KvFence::open(
            &self.rt.js,
            self.config.fence_settings(),
            self.metrics.fence.clone(),
        )
        .await?;
        // A shadow build's fence and would-be values (see `PublishHandler::handle_build_completed`).
        let shadow_fence = KvFence::open_bucket(
            &self.rt.js,
            SHADOW_FENCE_BUCKET,
            self.config.fence_settings(),
            self.metrics.fence.clone(),
        )
        .await?;
        let shadow_store: Arc<dyn ParameterStore> =
            Arc::new(KvParameterStore::open(&self.rt.js, SHADOW_PARAMETERS_BUCKET).await?);
        if self.config.mode.is_shadow() {
            tracing::info!(
                bucket = SHADOW_PARAMETERS_BUCKET,
                "shadow mode: parameters go to the shadow bucket, never to the parameter store"
            );
        }
        let skips = SkipStore::open(&self.rt.js).await?;
        let owners = OwnerStore::open(&self.rt.js).await?;
        let definitions = prx_ci_shared::bus::nats::Definitions::embedded()?;
        let mut settings = ConsumerSettings::from_definition(definitions.consumer(DURABLE)?)
            .with_concurrency(self.config.concurrency);
        if !self.config.retry_backoff.is_empty() {
            settings.backoff = self.config.retry_backoff.clone();
        }
        let handler = Arc::new(PublishHandler {
            rt: self.rt.clone(),
            config: self.config,
            store: self.store,
            shadow_store,
            shadow_fence,
            artifacts: self.artifacts,
            fence,
            skips,
            owners,
            config_owners: self.config_owners,
            apps: self.apps,
            metrics: self.metrics,
        });
        run_consumer(
            self.rt.js.clone(),
            self.rt.publisher.clone(),
            settings,
            handler,
            self.rt.consumer_metrics.clone(),
            shutdown,
        )
        .await
        .context("publisher consumer failed")
    }
}
