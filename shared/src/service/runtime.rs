//! What a running service is handed: the NATS connection, JetStream, the publisher and the
//! process-wide consumer metrics.

use async_nats::jetstream;
use prometheus_client::registry::Registry;

use crate::bus::nats;
use crate::bus::publish::EventPublisher;
use crate::config::NatsConfig;
use crate::telemetry::metrics::ConsumerMetrics;

/// Shared handles every service gets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub publisher: EventPublisher,
    pub consumer_metrics: ConsumerMetrics,
}

impl Runtime {
    /// Connects to NATS and registers the shared metrics in `registry`.
    pub async fn connect(
        config: &NatsConfig,
        role: &str,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let client = nats::connect(config, role).await?;
        Ok(Self::from_client(client, registry))
    }

    /// Wraps an existing connection (tests, `prx-ci up`).
    pub fn from_client(client: async_nats::Client, registry: &mut Registry) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            publisher: EventPublisher::new(js.clone()),
            consumer_metrics: ConsumerMetrics::register(registry),
            client,
            js,
        }
    }

    /// Provisions every stream, consumer and KV bucket of `deploy/nats/`.
    pub async fn provision(&self, replicas: usize) -> anyhow::Result<nats::Definitions> {
        let definitions = nats::Definitions::embedded()?;
        nats::provision(&self.js, &definitions, replicas).await?;
        Ok(definitions)
    }
}
