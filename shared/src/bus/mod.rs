//! The event bus: the NATS connection and provisioning ([`nats`]), subjects ([`subject`]),
//! building envelopes ([`envelope`]), publishing ([`publish`]), the consumer loop
//! ([`consume`]), replays ([`replay`]) and the consumer's backlog ([`lag`]). [`run_consumer`]
//! runs a durable consumer with its replays and backlog poll beside it, the one way a service
//! consumes.

pub mod consume;
pub mod envelope;
pub mod lag;
pub mod nats;
pub mod publish;
pub mod replay;
pub mod subject;

use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::ConsumerMetrics;
use consume::{ConsumerSettings, Handler, run_consumer_only};
use lag::{LAG_POLL_INTERVAL, poll_backlog};
use publish::EventPublisher;
use replay::{REPLAY_POLL_INTERVAL, ReplayRunner};

/// Runs a consumer loop until `shutdown` is cancelled; then stops pulling, lets in-flight
/// handlers finish, and returns. Next to it runs a [`ReplayRunner`] that feeds replays meant
/// for this consumer (`prx-ci replay --into <durable>`) to the same handler, and a poll of its
/// backlog into the consumer metrics, whose series of this consumer exist from the start.
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
        settings.backoff.clone(),
    );
    let replays = tokio::spawn(replays.run(handler.clone(), shutdown.clone()));
    metrics.start_consumer(&settings.durable);
    let stop_polling = shutdown.child_token();
    let backlog = tokio::spawn(poll_backlog(
        js.clone(),
        settings.stream.clone(),
        settings.durable.clone(),
        metrics.clone(),
        LAG_POLL_INTERVAL,
        stop_polling.clone(),
    ));
    let result = run_consumer_only(js, publisher, settings, handler, metrics, shutdown).await;
    stop_polling.cancel();
    for (task, done) in [
        ("replay runner", replays.await),
        ("backlog poll", backlog.await),
    ] {
        if let Err(err) = done {
            tracing::error!(error = %err, "{task} panicked");
        }
    }
    result
}
