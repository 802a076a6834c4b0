//! Runs the builds projection: rebuilt from scratch ([`rebuild`]), or kept current ([`run`]) by a
//! live ordered read of the build events from its position onwards, restarted after any failure.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::Envelope;
use prx_ci_shared::CancellationToken;
use prx_ci_shared::bus::subject::EVENTS_STREAM;
use tokio::sync::RwLock;

use crate::builds_projection::{self, BuildsProjection};
use crate::event_log::{End, Start, follow as follow_stream, scan};

/// Delay before re-reading after the live read failed (stream missing, connection lost).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Builds a projection from scratch by reading `PRX_EVENTS` up to now.
pub async fn rebuild(
    js: &jetstream::Context,
    keep_finished: usize,
) -> Result<BuildsProjection, crate::event_log::EventLogError> {
    let mut projection = BuildsProjection::new(keep_finished);
    scan(
        js,
        EVENTS_STREAM,
        &builds_projection::filters(),
        Start::First,
        End::Now,
        |m| {
            if let Ok(envelope) = Envelope::decode(m.payload) {
                projection.apply(m.sequence, &envelope);
            }
        },
    )
    .await?;
    Ok(projection)
}

/// Applies every build event to `projection` as it is stored, until `shutdown`.
pub async fn run(
    js: jetstream::Context,
    projection: Arc<RwLock<BuildsProjection>>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let from = projection.read().await.position() + 1;
        if let Err(err) = follow(&js, &projection, from, &shutdown).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "builds projection: live read failed; restarting"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(RESTART_DELAY) => {}
            }
        }
    }
}

async fn follow(
    js: &jetstream::Context,
    projection: &RwLock<BuildsProjection>,
    from: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let filters = builds_projection::filters();
    let mut messages = follow_stream(js, EVENTS_STREAM, filters, from, shutdown).await?;
    while let Some(message) = messages.next().await {
        let (sequence, payload) = message?;
        match Envelope::decode(payload) {
            Ok(envelope) => projection.write().await.apply(sequence, &envelope),
            Err(err) => {
                tracing::debug!(sequence, error = %err, "builds projection: undecodable event skipped");
            }
        }
    }
    Ok(())
}
