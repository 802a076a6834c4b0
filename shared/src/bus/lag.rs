//! Polls a durable consumer's backlog (the server's `num_pending` and `num_ack_pending`) into
//! the consumer gauges, so a consumer that falls behind, or stops, shows on `/metrics`.

use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::ConsumerMetrics;

/// How often the backlog is read (one JetStream API request per consumer and process).
pub const LAG_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// Reads the backlog of `durable` on `stream` at once and then every `interval` until
/// `shutdown` (which also abandons a read in progress). A failed read is logged and leaves the
/// gauges at their last value.
pub async fn poll_backlog(
    js: jetstream::Context,
    stream: String,
    durable: String,
    metrics: ConsumerMetrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = backlog(&js, &stream, &durable) => read,
        };
        match read {
            Ok((pending, ack_pending)) => metrics.backlog(&durable, pending, ack_pending),
            Err(err) => {
                tracing::debug!(consumer = %durable, error = format!("{err:#}"), "cannot read the consumer's backlog");
            }
        }
    }
}

async fn backlog(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> anyhow::Result<(u64, usize)> {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await?
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = consumer.info().await?;
    Ok((info.num_pending, info.num_ack_pending))
}
