//! The builds projection kept incrementally while events arrive equals the projection rebuilt
//! from the stream from scratch.

mod common;

use std::sync::Arc;

use common::*;
use prometheus_client::registry::Registry;
use prx_ci_ops::builds_projection::BuildsProjection;
use prx_ci_ops::projection_runner;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::EVENTS_STREAM;
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use tokio::sync::RwLock;

#[tokio::test]
async fn the_live_builds_projection_equals_a_rebuild_from_scratch() {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let keep = 25;
    let live = Arc::new(RwLock::new(BuildsProjection::new(keep)));
    let shutdown = CancellationToken::new();
    let follower = tokio::spawn(projection_runner::run(
        rt.js.clone(),
        live.clone(),
        shutdown.clone(),
    ));

    let statuses = [
        Some(v1::BuildStatus::Succeeded),
        Some(v1::BuildStatus::Failed),
        None,
        Some(v1::BuildStatus::TimedOut),
    ];
    // Waves of pushes while the projection follows; some builds cancelled, some never finish,
    // more finished builds than the projection keeps (pruning must match too).
    for wave in 0..4 {
        for i in 0..10 {
            let n = wave * 10 + i;
            let repo = if n % 3 == 0 { "PRX/other" } else { "PRX/app" };
            let webhook = push(&format!("d{n}"), repo, "main", &format!("{n:040x}"));
            let seq = rt.publisher.publish(&webhook).await.unwrap().sequence;
            let story = build_story(&webhook, seq, "main", statuses[n % 4]);
            for e in &story {
                rt.publisher.publish(e).await.unwrap();
            }
            if n % 7 == 0 {
                let cancelled = Chain::caused_by(&story[0]).envelope(
                    format!("cancel-{n}"),
                    Payload::BuildCancelled(v1::BuildCancelled {
                        build: story[0].payload.as_ref().and_then(|p| match p {
                            Payload::BuildRequested(r) => r.build.clone(),
                            _ => None,
                        }),
                        ..Default::default()
                    }),
                );
                rt.publisher.publish(&cancelled).await.unwrap();
            }
            // Not a build event: the projection must skip it the same way both times.
            rt.publisher
                .publish(&Chain::caused_by(&webhook).envelope(
                    format!("skip-{n}"),
                    Payload::BuildSkipped(v1::BuildSkipped {
                        repository: repo.into(),
                        ..Default::default()
                    }),
                ))
                .await
                .unwrap();
        }
    }
    let last = rt
        .js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    wait_until(
        WAIT,
        "the live projection to reach the last build event",
        || {
            let live = live.clone();
            async move {
                let position = live.read().await.position();
                (position >= last - 1).then_some(())
            }
        },
    )
    .await;
    shutdown.cancel();
    follower.await.unwrap();

    let rebuilt = projection_runner::rebuild(&rt.js, keep).await.unwrap();
    let live = live.read().await.clone();
    assert!(
        live.len() > 10,
        "a meaningful projection ({} builds)",
        live.len()
    );
    assert!(!live.in_flight("").is_empty());
    assert_eq!(
        live.recent(usize::MAX, "").len(),
        keep,
        "pruned to what it keeps"
    );
    assert_eq!(rebuilt, live);
}
