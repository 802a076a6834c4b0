//! The ops projection (builds and the history index) kept incrementally while events arrive
//! equals the projection rebuilt from the streams from scratch.

mod common;

use common::*;
use prometheus_client::registry::Registry;
use prx_ci_ops::dashboard_projection::Source;
use prx_ci_ops::history::HistoryFilter;
use prx_ci_ops::projection_runner::{self, LiveProjection};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};

#[tokio::test]
async fn the_live_projection_equals_a_rebuild_from_scratch() {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let keep = 25;
    let live = LiveProjection::new(keep);
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
    let last = |stream: &'static str| {
        let js = rt.js.clone();
        async move {
            js.get_stream(stream)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .last_sequence
        }
    };
    let (events_end, webhooks_end) = (last(EVENTS_STREAM).await, last(WEBHOOKS_STREAM).await);
    wait_until(
        WAIT,
        "the live projection to reach the last messages",
        || {
            let live = live.clone();
            async move {
                let p = live.read().await;
                (p.position(Source::Events) == events_end
                    && p.position(Source::Webhooks) == webhooks_end)
                    .then_some(())
            }
        },
    )
    .await;
    shutdown.cancel();
    follower.await.unwrap();

    let rebuilt = projection_runner::rebuild(&rt.js, keep).await.unwrap();
    let live = live.read().await.clone();
    assert!(
        live.builds.len() > 10,
        "a meaningful projection ({} builds)",
        live.builds.len()
    );
    assert!(!live.builds.in_flight("").is_empty());
    assert_eq!(
        live.builds.recent(usize::MAX, "").len(),
        keep,
        "pruned to what it keeps"
    );
    // 40 pushes of PRX/app and PRX/other: webhook, build story and skip of each, in its
    // repository's history; 26 of them to PRX/app's main.
    assert_eq!(
        live.history.len(),
        events_end + webhooks_end,
        "every message is in its repository's history"
    );
    let main = live
        .history
        .select("PRX.app", &HistoryFilter::Branch("main".into()));
    assert_eq!(
        main.iter().filter(|r| r.source == Source::Webhooks).count(),
        26
    );
    assert_eq!(rebuilt.builds, live.builds);
    // The index's tables depend on how the streams interleaved; its answers do not.
    assert_eq!(rebuilt.history.len(), live.history.len());
    for source in [Source::Events, Source::Webhooks] {
        assert_eq!(rebuilt.position(source), live.position(source));
    }
    for repository in ["PRX.app", "PRX.other"] {
        for filter in [
            HistoryFilter::All,
            HistoryFilter::Branch("main".into()),
            HistoryFilter::Commit(format!("{:040x}", 7)),
            HistoryFilter::Commit("0000000".into()),
        ] {
            assert_eq!(
                rebuilt.history.select(repository, &filter),
                live.history.select(repository, &filter),
                "{repository} {filter:?}"
            );
        }
    }
}
