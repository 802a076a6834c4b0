//! Runs the ops API's [`OpsProjection`]: rebuilt from scratch ([`rebuild`]), or kept current
//! ([`run`]) by a live ordered read of each stream (`PRX_EVENTS`, `PRX_WEBHOOKS`) from its
//! position onwards, restarted after any failure, forgetting what the streams no longer hold
//! every [`FORGET_INTERVAL`]. [`LiveProjection`] is what the API reads, and lets a query wait
//! until the projection holds everything stored when it began.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use prx_ci_shared::CancellationToken;
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};
use tokio::sync::{RwLock, RwLockReadGuard, watch};

use crate::dashboard_projection::Source;
use crate::event_log::{End, EventLogError, Start, follow as follow_stream, scan};
use crate::projection::OpsProjection;

/// Delay before re-reading after the live read failed (stream missing, connection lost).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The positions the projection reached: `(PRX_EVENTS, PRX_WEBHOOKS)`.
type Positions = (u64, u64);

/// The projection the API reads, shared with [`run`] that keeps it current.
#[derive(Debug, Clone)]
pub struct LiveProjection {
    state: Arc<RwLock<OpsProjection>>,
    positions: Arc<watch::Sender<Positions>>,
}

impl LiveProjection {
    /// Empty; keeps at most `keep_finished` finished builds.
    pub fn new(keep_finished: usize) -> Self {
        Self {
            state: Arc::new(RwLock::new(OpsProjection::new(keep_finished))),
            positions: Arc::new(watch::Sender::new((0, 0))),
        }
    }

    pub async fn read(&self) -> RwLockReadGuard<'_, OpsProjection> {
        self.state.read().await
    }

    /// Applies `message` of `source` and tells the waiting queries.
    async fn apply(&self, source: Source, message: &crate::event_log::StoredMessage) {
        let mut state = self.state.write().await;
        state.apply(source, message);
        let positions = (
            state.position(Source::Events),
            state.position(Source::Webhooks),
        );
        drop(state);
        self.positions.send_replace(positions);
    }

    /// Waits (at most `within`) until the projection holds `PRX_EVENTS` up to `events` and
    /// `PRX_WEBHOOKS` up to `webhooks`; returns whether it does.
    pub async fn caught_up(&self, events: u64, webhooks: u64, within: Duration) -> bool {
        let mut positions = self.positions.subscribe();
        let reached = positions.wait_for(|&(e, w)| e >= events && w >= webhooks);
        matches!(tokio::time::timeout(within, reached).await, Ok(Ok(_)))
    }

    /// The positions reached: `(PRX_EVENTS, PRX_WEBHOOKS)`.
    pub fn positions(&self) -> (u64, u64) {
        *self.positions.borrow()
    }
}

impl LiveProjection {
    /// Forgets what the streams no longer hold (expired by their `max_age`, or purged): the
    /// history index drops the messages below each stream's first sequence. Returns how many
    /// it dropped. [`run`] calls it every [`FORGET_INTERVAL`].
    pub async fn forget_expired(&self, js: &jetstream::Context) -> anyhow::Result<u64> {
        let mut dropped = 0;
        for (stream, source) in [
            (WEBHOOKS_STREAM, Source::Webhooks),
            (EVENTS_STREAM, Source::Events),
        ] {
            let state = js.get_stream(stream).await?.get_info().await?.state;
            // An empty stream's first sequence is one past its last: everything before expired.
            let first = state.first_sequence;
            let mut projection = self.state.write().await;
            dropped += projection.history.forget_before(source, first);
        }
        Ok(dropped)
    }
}

/// How often [`run`] forgets what the streams no longer hold.
pub const FORGET_INTERVAL: Duration = Duration::from_secs(600);

/// Builds a projection from scratch by reading both streams up to now (`PRX_WEBHOOKS` first,
/// then `PRX_EVENTS`: the fold does not depend on how the two interleave).
pub async fn rebuild(
    js: &jetstream::Context,
    keep_finished: usize,
) -> Result<OpsProjection, EventLogError> {
    let mut projection = OpsProjection::new(keep_finished);
    for (stream, source) in [
        (WEBHOOKS_STREAM, Source::Webhooks),
        (EVENTS_STREAM, Source::Events),
    ] {
        scan(js, stream, &[], Start::First, End::Now, |m| {
            projection.apply(source, &m);
        })
        .await?;
    }
    Ok(projection)
}

/// Applies every message of both streams to `projection` as it is stored, until `shutdown`.
pub async fn run(js: jetstream::Context, projection: LiveProjection, shutdown: CancellationToken) {
    let follow_one = |stream: &'static str, source: Source| {
        let js = js.clone();
        let projection = projection.clone();
        let shutdown = shutdown.clone();
        async move {
            while !shutdown.is_cancelled() {
                let from = projection.read().await.position(source) + 1;
                if let Err(err) = follow(&js, stream, source, &projection, from, &shutdown).await {
                    tracing::warn!(
                        stream,
                        error = format!("{err:#}"),
                        "ops projection: live read failed; restarting"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RESTART_DELAY) => {}
                    }
                }
            }
        }
    };
    let forget = async {
        let mut every = tokio::time::interval(FORGET_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            match projection.forget_expired(&js).await {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::info!(dropped, "ops projection: forgot expired messages");
                }
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "ops projection: cannot read the streams' first sequences; will try again"
                ),
            }
        }
    };
    tokio::join!(
        follow_one(EVENTS_STREAM, Source::Events),
        follow_one(WEBHOOKS_STREAM, Source::Webhooks),
        forget,
    );
}

async fn follow(
    js: &jetstream::Context,
    stream: &str,
    source: Source,
    projection: &LiveProjection,
    from: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut messages = follow_stream(js, stream, Vec::new(), from, shutdown).await?;
    while let Some(message) = messages.next().await {
        projection.apply(source, &message?).await;
    }
    Ok(())
}
