//! The publisher and consumer loop against a real nats-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::consume::{ConsumerSettings, Delivery, Handler, HandlerError};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::nats::ConsumerDefinition;
use prx_ci_shared::bus::subject::{self, EventKind};
use prx_ci_shared::run_consumer;
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(20);

fn skipped(repository: &str, detail: &str) -> v1::Envelope {
    Chain::starting("delivery").envelope(
        new_event_id(),
        Payload::BuildSkipped(v1::BuildSkipped {
            repository: repository.into(),
            detail: detail.into(),
            ..Default::default()
        }),
    )
}

async fn runtime(server: &NatsServer) -> Runtime {
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    rt
}

/// Records what it handled; fails every message whose detail is "fail".
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<String>>,
    attempts: AtomicU32,
}

impl Handler for Recorder {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let Some(Payload::BuildSkipped(skip)) = delivery.envelope.payload else {
            return Err(HandlerError::permanent(anyhow::anyhow!("unexpected kind")));
        };
        match skip.detail.as_str() {
            "fail" => Err(HandlerError::transient(anyhow::anyhow!("peer is down"))),
            "bad" => Err(HandlerError::permanent(anyhow::anyhow!("bad input"))),
            "panic" => panic!("a bug in the handler"),
            "slow" => {
                // Work that takes longer than the server's ack wait (not a wait for async
                // work: the handler is busy this long).
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                self.handled.lock().await.push("slow".to_owned());
                Ok(())
            }
            other => {
                self.handled.lock().await.push(other.to_owned());
                Ok(())
            }
        }
    }
}

async fn test_consumer(rt: &Runtime) -> ConsumerSettings {
    let definition: ConsumerDefinition = ConsumerDefinition {
        stream: subject::EVENTS_STREAM.into(),
        config: consumer::pull::Config {
            durable_name: Some("test".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: EventKind::BuildSkipped.filter(),
            max_deliver: 3,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        },
    };
    rt.js
        .create_consumer_on_stream(definition.config.clone(), subject::EVENTS_STREAM)
        .await
        .unwrap();
    let mut settings = ConsumerSettings::from_definition(&definition);
    settings.backoff = vec![Duration::from_millis(20)];
    settings
}

/// A consumer loop running `handler` on `rt` until [`Running::stop`].
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start<H: Handler>(rt: &Runtime, settings: ConsumerSettings, handler: Arc<H>) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_consumer(
            rt.js.clone(),
            rt.publisher.clone(),
            settings,
            handler,
            rt.consumer_metrics.clone(),
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    /// Stops the loop and checks it ended cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn parked(rt: &Runtime) -> Vec<v1::MessageParked> {
    let Ok(stream) = rt.js.get_stream(subject::PARKED_STREAM).await else {
        return vec![];
    };
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = vec![];
    for seq in 1..=last {
        if let Ok(raw) = stream.get_raw_message(seq).await {
            let env = v1::Envelope::decode(raw.payload).unwrap();
            if let Some(Payload::MessageParked(p)) = env.payload {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn publishing_the_same_event_twice_stores_it_once() {
    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let event = skipped("PRX/app", "x");
    let first = rt.publisher.publish(&event).await.unwrap();
    let second = rt.publisher.publish(&event).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let info = rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    let msg = info.get_raw_message(first.sequence).await.unwrap();
    assert_eq!(msg.subject.as_str(), "prx.build.skipped.PRX.app");
    assert_eq!(v1::Envelope::decode(msg.payload).unwrap(), event);
}

#[tokio::test]
async fn a_failing_message_is_parked_and_the_loop_goes_on() {
    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let settings = test_consumer(&rt).await;
    for detail in ["one", "fail", "bad", "two"] {
        rt.publisher
            .publish(&skipped("PRX/app", detail))
            .await
            .unwrap();
    }
    // A poison message: not an envelope at all.
    rt.js
        .publish(
            "prx.build.skipped.PRX.app",
            "not protobuf \u{0}\u{1}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    rt.publisher
        .publish(&skipped("PRX/app", "three"))
        .await
        .unwrap();

    let handler = Arc::new(Recorder::default());
    let running = Running::start(&rt, settings, handler.clone());

    let parked = wait_until(WAIT, "three parked messages", || {
        let rt = rt.clone();
        async move {
            let parked = parked(&rt).await;
            (parked.len() == 3).then_some(parked)
        }
    })
    .await;
    wait_until(WAIT, "the good messages", || {
        let handler = handler.clone();
        async move { (handler.handled.lock().await.len() == 3).then_some(()) }
    })
    .await;
    assert_eq!(*handler.handled.lock().await, ["one", "two", "three"]);

    let transient = parked
        .iter()
        .find(|p| p.error.contains("peer is down"))
        .unwrap();
    assert_eq!(transient.deliveries, 3, "parked after max_deliver");
    assert_eq!(transient.consumer, "test");
    let permanent = parked
        .iter()
        .find(|p| p.error.contains("bad input"))
        .unwrap();
    assert_eq!(
        permanent.deliveries, 1,
        "a permanent error is parked at once"
    );
    let poison = parked
        .iter()
        .find(|p| p.error.contains("cannot decode envelope"))
        .unwrap();
    assert_eq!(poison.data, b"not protobuf \x00\x01");

    running.stop().await;
    // Everything was acknowledged or terminated: nothing is pending.
    let info = rt
        .js
        .get_stream(subject::EVENTS_STREAM)
        .await
        .unwrap()
        .consumer_info("test")
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn every_consumer_loop_serves_replays_meant_for_it() {
    use prx_ci_shared::bus::replay::{replay_config, replay_prefix};

    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let settings = test_consumer(&rt).await;
    let mut sequences = Vec::new();
    for detail in ["one", "two", "three"] {
        let stored = rt
            .publisher
            .publish(&skipped("PRX/app", detail))
            .await
            .unwrap();
        sequences.push(stored.sequence);
    }

    let handler = Arc::new(Recorder::default());
    let running = Running::start(&rt, settings, handler.clone());
    wait_until(WAIT, "the live messages", || {
        let handler = handler.clone();
        async move { (handler.handled.lock().await.len() == 3).then_some(()) }
    })
    .await;

    // What `prx-ci replay --into test --from <two> --to <three>` creates.
    let stream = rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    let target = stream
        .get_consumer::<consumer::pull::Config>("test")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    let target = consumer::pull::Config {
        durable_name: target.durable_name,
        filter_subject: target.filter_subject,
        ack_policy: target.ack_policy,
        max_deliver: target.max_deliver,
        ack_wait: target.ack_wait,
        ..Default::default()
    };
    let name = format!("{}1", replay_prefix("test"));
    let replay = replay_config(
        &target,
        "test",
        &name,
        vec![EventKind::BuildSkipped.filter()],
        sequences[1],
        sequences[2],
    );
    rt.js
        .create_consumer_on_stream(replay, subject::EVENTS_STREAM)
        .await
        .unwrap();

    wait_until(WAIT, "the replayed range, then the replay removed", || {
        let handler = handler.clone();
        let stream = stream.clone();
        let name = name.clone();
        async move {
            let done = handler.handled.lock().await.len() == 5
                && stream.consumer_info(&name).await.is_err();
            done.then_some(())
        }
    })
    .await;
    assert_eq!(
        *handler.handled.lock().await,
        ["one", "two", "three", "two", "three"]
    );
    running.stop().await;
}

#[tokio::test]
async fn the_backlog_poll_exports_what_the_consumer_has_not_handled_yet() {
    use prx_ci_shared::bus::lag::poll_backlog;
    use prx_ci_shared::telemetry::metrics::ConsumerMetrics;

    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let settings = test_consumer(&rt).await;
    let mut registry = Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    for detail in ["one", "two", "three"] {
        rt.publisher
            .publish(&skipped("PRX/app", detail))
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let poll = tokio::spawn(poll_backlog(
        rt.js.clone(),
        settings.stream.clone(),
        settings.durable.clone(),
        metrics.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
    ));
    let registry = Arc::new(registry);
    let backlog_is = |series: &'static str| {
        let registry = registry.clone();
        async move {
            prx_ci_shared::testing::metrics_text(&registry)
                .contains(series)
                .then_some(())
        }
    };
    wait_until(WAIT, "a backlog of 3", || {
        backlog_is("prx_ci_consumer_pending{consumer=\"test\"} 3")
    })
    .await;

    // The loop starts with every series of its consumer at zero, then drains the backlog.
    let handler = Arc::new(Recorder::default());
    let consumer = tokio::spawn(run_consumer(
        rt.js.clone(),
        rt.publisher.clone(),
        settings,
        handler.clone(),
        metrics,
        shutdown.clone(),
    ));
    wait_until(WAIT, "three acked", || {
        backlog_is("prx_ci_consumer_messages_total{consumer=\"test\",outcome=\"acked\"} 3")
    })
    .await;
    let text = prx_ci_shared::testing::metrics_text(&registry);
    for series in [
        "prx_ci_consumer_messages_total{consumer=\"test\",outcome=\"parked\"} 0",
        "prx_ci_consumer_messages_total{consumer=\"test\",outcome=\"retried\"} 0",
        "prx_ci_consumer_handle_seconds_count{consumer=\"test\"} 3",
    ] {
        assert!(text.contains(series), "{series}: {text}");
    }
    wait_until(WAIT, "an empty backlog", || {
        backlog_is("prx_ci_consumer_pending{consumer=\"test\"} 0")
    })
    .await;
    wait_until(WAIT, "nothing waiting for an ack", || {
        backlog_is("prx_ci_consumer_ack_pending{consumer=\"test\"} 0")
    })
    .await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    poll.await.unwrap();
}

/// Handles messages of `PRX/slow` and other repositories; the first `PRX/slow` message is held
/// until every message of the `PRX/fast-<n>` repository has been handled.
struct OneSubjectHeld {
    fast_total: usize,
    fast_done: Mutex<usize>,
    fast_all_done: tokio::sync::Notify,
    /// Per repository: the details in the order handled, and how many were in progress at once.
    handled: Mutex<std::collections::HashMap<String, Vec<String>>>,
    in_progress: Mutex<std::collections::HashMap<String, usize>>,
    overlaps: AtomicU32,
}

impl Handler for OneSubjectHeld {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let Some(Payload::BuildSkipped(skip)) = delivery.envelope.payload else {
            return Err(HandlerError::permanent(anyhow::anyhow!("unexpected kind")));
        };
        let repository = skip.repository.clone();
        {
            let mut in_progress = self.in_progress.lock().await;
            let now = in_progress.entry(repository.clone()).or_default();
            *now += 1;
            if *now > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        if repository == "PRX/slow" && skip.detail == "0" {
            // Only another strand can let this one go on.
            let all_done = self.fast_all_done.notified();
            if *self.fast_done.lock().await < self.fast_total {
                tokio::time::timeout(WAIT, all_done)
                    .await
                    .expect("the other subject's messages were handled meanwhile");
            }
        }
        *self.in_progress.lock().await.get_mut(&repository).unwrap() -= 1;
        self.handled
            .lock()
            .await
            .entry(repository.clone())
            .or_default()
            .push(skip.detail);
        if repository.starts_with("PRX/fast") {
            let mut done = self.fast_done.lock().await;
            *done += 1;
            if *done == self.fast_total {
                self.fast_all_done.notify_waiters();
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn per_subject_order_handles_each_subject_in_turn_and_subjects_at_once() {
    use prx_ci_shared::bus::consume::strand_of;

    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let concurrency = 4;
    let settings = test_consumer(&rt)
        .await
        .with_concurrency(concurrency)
        .one_at_a_time_per_subject();
    let subject_of = |repository: &str| subject::event_subject(EventKind::BuildSkipped, repository);
    // The test needs the held repository and the fast one in different strands (the strand is a
    // pure function of the subject).
    let slow_strand = strand_of(&subject_of("PRX/slow"), concurrency);
    let other_strand = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|r| strand_of(&subject_of(r), concurrency) != slow_strand)
            .unwrap()
    };
    let (fast, other) = (other_strand("PRX/fast"), other_strand("PRX/other"));
    // The held repository's later messages fit in its strand's queue (a full queue holds the
    // loop, as it must to keep them in order).
    let (per_repository, held) = (20, 5);
    for i in 0..per_repository {
        for repository in ["PRX/slow", fast.as_str(), other.as_str()] {
            if repository == "PRX/slow" && i >= held {
                continue;
            }
            rt.publisher
                .publish(&skipped(repository, &i.to_string()))
                .await
                .unwrap();
        }
    }
    let handler = Arc::new(OneSubjectHeld {
        fast_total: per_repository,
        fast_done: Mutex::new(0),
        fast_all_done: tokio::sync::Notify::new(),
        handled: Mutex::default(),
        in_progress: Mutex::default(),
        overlaps: AtomicU32::new(0),
    });
    let running = Running::start(&rt, settings, handler.clone());
    wait_until(WAIT, "every message handled", || {
        let handler = handler.clone();
        async move {
            let handled = handler.handled.lock().await;
            (handled.values().map(Vec::len).sum::<usize>() == 2 * per_repository + held)
                .then_some(())
        }
    })
    .await;
    running.stop().await;

    let in_order = |n: usize| -> Vec<String> { (0..n).map(|i| i.to_string()).collect() };
    let handled = handler.handled.lock().await;
    assert_eq!(
        handled["PRX/slow"],
        in_order(held),
        "PRX/slow: in stream order"
    );
    for repository in [fast.as_str(), other.as_str()] {
        assert_eq!(
            handled[repository],
            in_order(per_repository),
            "{repository}: in stream order"
        );
    }
    assert_eq!(
        handler.overlaps.load(Ordering::SeqCst),
        0,
        "two messages of one subject were handled at once"
    );
}

/// Provisioned consumers keep the `ack_wait` of their definition: the `backoff` is the loop's
/// retry schedule and is not given to the server, which would make its first entry the ack wait.
#[tokio::test]
async fn provisioned_consumers_keep_their_ack_wait() {
    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let stream = rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    let mut consumer: consumer::PullConsumer =
        stream.get_consumer("build-watcher-reports").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(60));
    assert!(info.config.backoff.is_empty(), "{:?}", info.config.backoff);
}

/// A handler busy for longer than the server's ack wait (a consumer created with a `backoff`,
/// whose first entry the server makes the ack wait) reports progress within it: its message is
/// delivered once.
#[tokio::test]
async fn a_message_handled_longer_than_the_servers_ack_wait_is_delivered_once() {
    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let definition = ConsumerDefinition {
        stream: subject::EVENTS_STREAM.into(),
        config: consumer::pull::Config {
            durable_name: Some("slow".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: EventKind::BuildSkipped.filter(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(2)],
            ..Default::default()
        },
    };
    rt.js
        .create_consumer_on_stream(definition.config.clone(), subject::EVENTS_STREAM)
        .await
        .unwrap();
    rt.publisher
        .publish(&skipped("PRX/app", "slow"))
        .await
        .unwrap();
    let handler = Arc::new(Recorder::default());
    let running = Running::start(
        &rt,
        ConsumerSettings::from_definition(&definition),
        handler.clone(),
    );
    wait_until(WAIT, "the slow message handled", || {
        let handler = handler.clone();
        async move { (!handler.handled.lock().await.is_empty()).then_some(()) }
    })
    .await;
    // Acknowledged: nothing pending, nothing waiting for an ack.
    wait_until(WAIT, "the consumer drained", || {
        prx_ci_shared::testing::durable_drained(&rt.js, subject::EVENTS_STREAM, "slow")
    })
    .await;
    running.stop().await;
    assert_eq!(handler.attempts.load(Ordering::SeqCst), 1, "delivered once");
    assert_eq!(*handler.handled.lock().await, ["slow"]);
}

/// A panicking handler fails its message like a transient error: retried, then parked with
/// the error; the loop goes on.
#[tokio::test]
async fn a_panicking_handler_has_its_message_parked_and_the_loop_goes_on() {
    let server = NatsServer::start().await;
    let rt = runtime(&server).await;
    let settings = test_consumer(&rt).await;
    for detail in ["one", "panic", "two"] {
        rt.publisher
            .publish(&skipped("PRX/app", detail))
            .await
            .unwrap();
    }
    let handler = Arc::new(Recorder::default());
    let running = Running::start(&rt, settings, handler.clone());
    let parked = wait_until(WAIT, "the panicking message parked", || {
        let rt = rt.clone();
        async move {
            let parked = parked(&rt).await;
            (parked.len() == 1).then_some(parked)
        }
    })
    .await;
    assert!(
        parked[0].error.contains("the handler panicked"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].deliveries, 3, "retried up to max_deliver");
    wait_until(WAIT, "the other messages", || {
        let handler = handler.clone();
        async move { (handler.handled.lock().await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(*handler.handled.lock().await, ["one", "two"]);
    running.stop().await;
}
