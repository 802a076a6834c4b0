//! Keeps the [`DashboardProjection`] current and tells open pages what changed: a live ordered
//! read of each stream (`PRX_EVENTS` and `PRX_WEBHOOKS`, everything but the parked messages'
//! own stream) from the projection's position, restarted after any failure; every applied
//! event's topics go to a broadcast channel that `/events` streams as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
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
            // The parked stream's last sequence read (its messages are not folded).
            let mut parked_seen = 0;
            while !shutdown.is_cancelled() {
                let from = match source {
                    Some(source) => projection.read().await.position(source) + 1,
                    None => parked_seen + 1,
                };
                let result = follow(
                    &js,
                    stream,
                    source,
                    from,
                    &mut parked_seen,
                    &projection,
                    &changes,
                    &shutdown,
                )
                .await;
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

/// Reads `stream` from `from`, applying (or, for the parked stream, signalling) each message
/// and noting its sequence in `seen`, until `shutdown` (or an error).
#[expect(
    clippy::too_many_arguments,
    reason = "one reader's inputs; a struct would only rename them"
)]
async fn follow(
    js: &jetstream::Context,
    stream: &str,
    source: Option<Source>,
    from: u64,
    seen: &mut u64,
    projection: &RwLock<DashboardProjection>,
    changes: &broadcast::Sender<Arc<str>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut from = from;
    if source.is_none() && *seen == 0 {
        // Parked messages already there are read per request; only later ones are signalled,
        // from here on also across restarts of this read.
        *seen = js
            .get_stream(stream)
            .await?
            .info()
            .await?
            .state
            .last_sequence;
        from = *seen + 1;
    }
    let mut messages = crate::event_log::follow(js, stream, Vec::new(), from, shutdown).await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let (sequence, payload) = (message.sequence, message.payload);
        *seen = sequence;
        let topics = match source {
            None => vec!["parked".to_owned()],
            Some(source) => match Envelope::decode(payload) {
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
    Ok(())
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
    // Ends when the service stops, so an open page does not hold up its shutdown.
    let stream = stream.take_until(web.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Sent to a listener that missed changes: every page refreshes.
const ALL_TOPICS: &str = "*";
