//! Keeps the [`DashboardProjection`] current and tells open pages what changed: a live ordered
//! read of each stream (`PRX_EVENTS` and `PRX_WEBHOOKS`, everything but the parked messages'
//! own stream) from the projection's position, restarted after any failure; every applied
//! event's topics go to a broadcast channel that `/events` streams as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use prx_ci_proto::v1::Envelope;
use prx_ci_shared::CancellationToken;
use prx_ci_shared::bus::subject::{EVENTS_STREAM, PARKED_STREAM, WEBHOOKS_STREAM};
use tokio::sync::{RwLock, broadcast};

use super::{Session, Web};
use crate::dashboard_projection::{DashboardProjection, Source};

/// Delay before re-reading after a live read failed (stream missing, connection lost).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Follows the three streams into `projection` until `shutdown`, sending each change's topics
/// on `changes`. The parked stream only signals (`parked`); its entries are read per request.
pub async fn run(
    js: jetstream::Context,
    projection: Arc<RwLock<DashboardProjection>>,
    changes: broadcast::Sender<Arc<str>>,
    shutdown: CancellationToken,
) {
    let follow = |stream: &'static str, source: Option<Source>| {
        let js = js.clone();
        let projection = projection.clone();
        let changes = changes.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut parked_from = 0;
            while !shutdown.is_cancelled() {
                let from = match source {
                    Some(source) => projection.read().await.position(source) + 1,
                    None => parked_from + 1,
                };
                let result = follow(&js, stream, source, from, &projection, &changes, &shutdown)
                    .await
                    .map(|last| parked_from = parked_from.max(last));
                if let Err(err) = result {
                    tracing::warn!(
                        stream,
                        error = format!("{err:#}"),
                        "dashboard: live read failed; restarting"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RESTART_DELAY) => {}
                    }
                }
            }
        }
    };
    tokio::join!(
        follow(EVENTS_STREAM, Some(Source::Events)),
        follow(WEBHOOKS_STREAM, Some(Source::Webhooks)),
        follow(PARKED_STREAM, None),
    );
}

/// Reads `stream` from `from`, applying (or, for the parked stream, signalling) each message;
/// returns the last sequence read when `shutdown` ends it.
async fn follow(
    js: &jetstream::Context,
    stream: &str,
    source: Option<Source>,
    from: u64,
    projection: &RwLock<DashboardProjection>,
    changes: &broadcast::Sender<Arc<str>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<u64> {
    let deliver_policy = if source.is_none() && from <= 1 {
        // Parked messages already there are read per request; only new ones are signalled.
        consumer::DeliverPolicy::New
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: from,
        }
    };
    let ordered = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = ordered.messages().await?;
    let mut last = from.saturating_sub(1);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(last),
            next = messages.next() => next,
        };
        let Some(message) = next else {
            anyhow::bail!("the live read of {stream} ended");
        };
        let message = message?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        last = sequence;
        let topics = match source {
            None => vec!["parked".to_owned()],
            Some(source) => match Envelope::decode(message.payload.clone()) {
                Ok(envelope) => projection
                    .write()
                    .await
                    .apply(source, sequence, &envelope)
                    .topics(),
                Err(err) => {
                    tracing::debug!(stream, sequence, error = %err, "dashboard: undecodable event skipped");
                    Vec::new()
                }
            },
        };
        if !topics.is_empty() {
            // Nobody listening is fine.
            let _ = changes.send(topics.join(" ").into());
        }
    }
}

/// `GET /events`: the topics of every change as `change` events, for the open pages' script.
/// A listener too slow to keep up is told to refresh everything (`lagged`).
pub async fn events(
    State(web): State<Web>,
    _session: Session,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = web.changes.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(topics) => Event::default().event("change").data(topics.as_ref()),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("change").data(ALL_TOPICS)
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Sent to a listener that missed changes: every page refreshes.
const ALL_TOPICS: &str = "*";
