//! The event bus: the NATS connection and provisioning ([`nats`]), subjects ([`subject`]),
//! building envelopes ([`envelope`]), publishing ([`publish`]), the consumer loop
//! ([`consume`]) and replays ([`replay`]). [`run_consumer`] runs a durable consumer with its
//! replays beside it, the one way a service consumes.

pub mod consume;
pub mod envelope;
pub mod nats;
pub mod publish;
pub mod replay;
pub mod subject;

use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::ConsumerMetrics;
use consume::{ConsumerSettings, Handler, run_consumer_only};
use publish::EventPublisher;
use replay::{REPLAY_POLL_INTERVAL, ReplayRunner};

/// Runs a consumer loop until `shutdown` is cancelled; then stops pulling, lets in-flight
/// handlers finish, and returns. Next to it runs a [`ReplayRunner`] that feeds replays meant
/// for this consumer (`prx-ci replay --into <durable>`) to the same handler.
pub async fn run_consumer<H: Handler>(
    js: jetstream::Context,
    publisher: EventPublisher,
    settings: ConsumerSettings,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let replays = ReplayRunner::new(
        js.clone(),
        publisher.clone(),
        metrics.clone(),
        &settings.stream,
        &settings.durable,
        REPLAY_POLL_INTERVAL,
    );
    let replays = tokio::spawn(replays.run(handler.clone(), shutdown.clone()));
    let result = run_consumer_only(js, publisher, settings, handler, metrics, shutdown).await;
    if let Err(err) = replays.await {
        tracing::error!(error = %err, "replay runner panicked");
    }
    result
}
