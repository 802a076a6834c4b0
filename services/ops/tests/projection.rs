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

/// History reads stored messages by sequence with direct gets, which any replica may answer; a
/// direct get that fails (a lagging replica, or, here, a stream that stopped allowing them
/// after its handle was taken) is asked again of the leader, so no stored event goes missing.
#[tokio::test]
async fn a_read_by_sequence_the_direct_get_cannot_answer_is_asked_of_the_leader() {
    use prx_ci_ops::event_log::get_each;
    use prx_ci_shared::bus::subject::webhook_subject;

    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let subject = webhook_subject("push", "PRX/app");
    let mut stored = Vec::new();
    for i in 0..5u8 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("delivery-{i}").as_str());
        let ack = rt
            .js
            .publish_with_headers(subject.clone(), headers, vec![i; 16].into())
            .await
            .unwrap()
            .await
            .unwrap();
        stored.push(ack.sequence);
    }
    let check = |read: Vec<prx_ci_ops::event_log::StoredMessage>| {
        let sequences: Vec<u64> = read.iter().map(|m| m.sequence).collect();
        assert_eq!(sequences, vec![stored[3], stored[1], stored[4]]);
        for message in &read {
            let index = usize::try_from(message.sequence - stored[0]).unwrap();
            assert_eq!(message.subject, subject);
            assert_eq!(
                &message.payload[..],
                &[u8::try_from(index).unwrap(); 16][..]
            );
            // The headers are the stored ones, without what the server adds to a direct get.
            let headers = message.headers.as_ref().expect("stored with headers");
            let names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
            assert_eq!(names, vec!["Nats-Msg-Id".to_owned()], "{names:?}");
        }
    };

    let stream = rt.js.get_stream(WEBHOOKS_STREAM).await.unwrap();
    assert!(
        stream.cached_info().config.allow_direct,
        "deploy/nats allows direct gets"
    );
    // Direct gets, and a sequence that holds nothing is left out.
    check(
        get_each(&stream, vec![stored[3], stored[1], 9_999, stored[4]])
            .await
            .unwrap(),
    );

    // The stream stops answering direct gets; the handle still believes it does.
    let mut config = stream.cached_info().config.clone();
    config.allow_direct = false;
    rt.js.update_stream(config).await.unwrap();
    check(
        get_each(&stream, vec![stored[3], stored[1], 9_999, stored[4]])
            .await
            .unwrap(),
    );
}

/// Messages the streams no longer hold (expired by `max_age`, here purged) leave the history
/// index too, so it does not grow with the log's whole past; what is still stored is answered
/// as before.
#[tokio::test]
async fn the_index_forgets_what_the_streams_no_longer_hold() {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let live = LiveProjection::new(10);
    let shutdown = CancellationToken::new();
    let follower = tokio::spawn(projection_runner::run(
        rt.js.clone(),
        live.clone(),
        shutdown.clone(),
    ));
    let mut last = (0, 0);
    for n in 0..10 {
        let webhook = push(&format!("d{n}"), "PRX/app", "main", &format!("{n:040x}"));
        let seq = rt.publisher.publish(&webhook).await.unwrap().sequence;
        for e in &build_story(&webhook, seq, "main", Some(v1::BuildStatus::Succeeded)) {
            last.0 = rt.publisher.publish(e).await.unwrap().sequence;
        }
        last.1 = seq;
    }
    assert!(live.caught_up(last.0, last.1, WAIT).await);
    let main = HistoryFilter::Branch("main".into());
    let before = live.read().await.history.select("PRX.app", &main);
    assert_eq!(
        live.forget_expired(&rt.js).await.unwrap(),
        0,
        "nothing expired"
    );

    // The first 4 pushes' webhooks and the events before the 6th push's story go.
    let webhooks_first = 5;
    let events_first = before
        .iter()
        .filter(|r| r.source == Source::Events)
        .nth(before.iter().filter(|r| r.source == Source::Events).count() / 2)
        .unwrap()
        .sequence;
    for (stream, first) in [
        (WEBHOOKS_STREAM, webhooks_first),
        (EVENTS_STREAM, events_first),
    ] {
        rt.js
            .get_stream(stream)
            .await
            .unwrap()
            .purge()
            .sequence(first)
            .await
            .unwrap();
    }
    let held = |r: &prx_ci_ops::history_index::EventRef| match r.source {
        Source::Webhooks => r.sequence >= webhooks_first,
        Source::Events => r.sequence >= events_first,
    };
    let expected: Vec<_> = before.iter().copied().filter(held).collect();
    assert!(expected.len() < before.len() && !expected.is_empty());
    let dropped = live.forget_expired(&rt.js).await.unwrap();
    assert_eq!(dropped as usize, before.len() - expected.len());
    let after = live.read().await;
    assert_eq!(after.history.select("PRX.app", &main), expected);
    assert_eq!(after.history.len() as usize, expected.len());
    drop(after);
    // The live read goes on from where it was.
    let webhook = push("d10", "PRX/app", "main", &format!("{:040x}", 10));
    let seq = rt.publisher.publish(&webhook).await.unwrap().sequence;
    assert!(live.caught_up(last.0, seq, WAIT).await);
    assert_eq!(
        live.read().await.history.select("PRX.app", &main).len(),
        expected.len() + 1
    );
    shutdown.cancel();
    follower.await.unwrap();
}
