//! The one watch of the builds bucket per process: every key written wakes the reports waiting
//! for that build's record ([`crate::record_waiters`]).
//!
//! One ordered consumer of the bucket's stream for the whole process, created at start and
//! again only when it fails or ends, instead of one per waiting report. It delivers new writes
//! only (no history: a record already there is found by the waiter's own read) and headers
//! only (the key is all a waiter needs; it reads the record itself, and records carry the whole
//! request). It sees every writer's writes: this process's request handler, its report
//! handler, and other replicas'.
//!
//! Whenever it is (re)opened, every waiter is woken to read again, since writes made while no
//! watch was open were seen by nobody. While it is down, waits last their whole timeout and
//! their last read decides (slower, never wrong).
//!
//! A cost to know of: when async-nats recreates the ordered consumer before it has delivered
//! anything (a reconnect, or a sequence gap on its first message), it starts from the
//! beginning of the bucket's stream, so the watch replays one headers-only message per build
//! record kept. Waking is idempotent, so this is work, not a wrong answer.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push::OrderedConfig};
use async_nats::jetstream::kv;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use prx_ci_shared::CancellationToken;
use prx_ci_shared::retry::Backoff;

use crate::record_waiters::RecordWaiters;

/// Keys written, as a watch delivers them; an error or the end means the watch is gone.
pub type KeyStream = BoxStream<'static, anyhow::Result<String>>;

/// Delays between attempts to (re)open the watch: 100 ms doubling to 10 s, without end (the
/// watch is always worth having back; `max_attempts` is not used).
pub const REOPEN_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
    max_attempts: u32::MAX,
};

/// A watch that lasted this long was healthy: the next failure starts the backoff afresh. One
/// that fails sooner keeps the backoff growing, so a watch that opens and dies at once is not
/// recreated (a consumer on the server each time) in a tight loop.
pub const HEALTHY_WATCH: Duration = Duration::from_secs(60);

/// Opens a watch of every key of `bucket`: an ordered push consumer of its stream, new writes,
/// headers only.
pub async fn open(client: async_nats::Client, bucket: kv::Store) -> anyhow::Result<KeyStream> {
    let prefix = bucket.prefix.clone();
    let messages = bucket
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some(
                "build-watcher: wakes the reports waiting for their build's record".into(),
            ),
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::New,
            replay_policy: ReplayPolicy::Instant,
            headers_only: true,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the watch consumer of {}: {e}", bucket.name))?
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to the watch of {}: {e}", bucket.name))?;
    Ok(
        messages
            .map_err(|e| anyhow::anyhow!("the watch failed: {e}"))
            .and_then(move |message| {
                let key = message
                    .subject
                    .strip_prefix(prefix.as_str())
                    .map(str::to_owned);
                let subject = message.subject.to_string();
                async move {
                    key.ok_or_else(|| anyhow::anyhow!("the watch delivered {subject}, not a key"))
                }
            })
            .boxed(),
    )
}

/// Runs the watch until `stop`: opens it with `open`, wakes everyone, then wakes each key's
/// waiters as it is written; when it fails or ends, logs why, waits `backoff` and opens another.
pub async fn run<F, Fut>(
    mut open: F,
    waiters: RecordWaiters,
    backoff: Backoff,
    stop: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<KeyStream>>,
{
    // Failures since the last healthy watch (drives the backoff).
    let mut failures = 0u32;
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = open() => opened,
        };
        match opened {
            Ok(mut keys) => {
                let since = tokio::time::Instant::now();
                let woken = waiters.wake_all();
                tracing::info!(
                    woken,
                    after_failures = failures,
                    "watching the builds bucket for reports waiting for their request"
                );
                let why = loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = keys.next() => next,
                    };
                    match next {
                        Some(Ok(key)) => {
                            waiters.wake(&key);
                        }
                        Some(Err(err)) => break format!("{err:#}"),
                        None => break "it ended".to_owned(),
                    }
                };
                if since.elapsed() >= HEALTHY_WATCH {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                tracing::warn!(
                    reason = %why,
                    failures,
                    "the watch of the builds bucket stopped; reports waiting for their request wait their whole request_wait until it is back"
                );
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    error = format!("{err:#}"),
                    failures,
                    "cannot watch the builds bucket; reports waiting for their request wait their whole request_wait until it is back"
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.delay(failures)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::channel::mpsc;

    use super::*;

    /// A fake bucket: each open is answered by the next scripted outcome (`false`: fail), and
    /// a successful one hands the test the sender of its keys.
    struct FakeBucket {
        script: Mutex<Vec<bool>>,
        opened: mpsc::UnboundedSender<mpsc::UnboundedSender<anyhow::Result<String>>>,
        /// Opens attempted so far.
        attempts: tokio::sync::watch::Sender<u32>,
    }

    impl FakeBucket {
        fn open(&self) -> std::future::Ready<anyhow::Result<KeyStream>> {
            self.attempts.send_modify(|n| *n += 1);
            let succeeds = {
                let mut script = self.script.lock().unwrap();
                if script.is_empty() {
                    true
                } else {
                    script.remove(0)
                }
            };
            let outcome = if succeeds {
                let (keys, stream) = mpsc::unbounded();
                self.opened.unbounded_send(keys).unwrap();
                Ok(stream.boxed())
            } else {
                Err(anyhow::anyhow!("no responders"))
            };
            std::future::ready(outcome)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_wakes_waiters_and_comes_back_after_failing_or_ending() {
        let waiters = RecordWaiters::new();
        let (opened, mut opens) = mpsc::unbounded();
        let bucket = Arc::new(FakeBucket {
            script: Mutex::new(vec![false, false, true]),
            opened,
            attempts: tokio::sync::watch::Sender::new(0),
        });
        let stop = CancellationToken::new();
        // Registered before any watch exists: woken when the first one opens.
        let mut early = waiters.register("a");
        let task = tokio::spawn(run(
            {
                let bucket = bucket.clone();
                move || bucket.open()
            },
            waiters.clone(),
            REOPEN_BACKOFF,
            stop.clone(),
        ));

        let first = opens.next().await.unwrap();
        early.woken().await;
        assert_eq!(*bucket.attempts.borrow(), 3, "two failures, then open");

        // A written key wakes its waiters only.
        let mut a = waiters.register("a");
        let mut b = waiters.register("b");
        first.unbounded_send(Ok("a".into())).unwrap();
        a.woken().await;
        assert_eq!(waiters.len(), 1);

        // The watch ends: another is opened, and it wakes everyone (writes while none was
        // open were seen by nobody).
        drop(first);
        let second = opens.next().await.unwrap();
        b.woken().await;
        assert!(waiters.is_empty());

        // The watch fails: the same.
        let mut c = waiters.register("c");
        second
            .unbounded_send(Err(anyhow::anyhow!("consumer deleted")))
            .unwrap();
        let third = opens.next().await.unwrap();
        c.woken().await;
        assert_eq!(*bucket.attempts.borrow(), 5);

        stop.cancel();
        task.await.unwrap();
        drop(third);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_keeps_dying_is_reopened_ever_more_slowly() {
        let (opened, mut opens) = mpsc::unbounded();
        let bucket = Arc::new(FakeBucket {
            script: Mutex::new(Vec::new()),
            opened,
            attempts: tokio::sync::watch::Sender::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            {
                let bucket = bucket.clone();
                move || bucket.open()
            },
            RecordWaiters::new(),
            REOPEN_BACKOFF,
            stop.clone(),
        ));
        let mut gaps = Vec::new();
        let mut last = tokio::time::Instant::now();
        for _ in 0..8 {
            let keys = opens.next().await.unwrap();
            let now = tokio::time::Instant::now();
            gaps.push(now - last);
            last = now;
            drop(keys);
        }
        // Each gap is at least half the backoff's ceiling for that failure (full jitter).
        for (failures, gap) in gaps.iter().enumerate().skip(1) {
            let floor = REOPEN_BACKOFF.ceiling(u32::try_from(failures).unwrap()) / 2;
            assert!(
                *gap >= floor,
                "gap {failures}: {gap:?} < {floor:?} ({gaps:?})"
            );
        }
        assert!(gaps[7] >= Duration::from_secs(3), "{gaps:?}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_watch_while_it_waits_to_reopen() {
        let bucket = Arc::new(FakeBucket {
            script: Mutex::new(vec![false; 100]),
            opened: mpsc::unbounded().0,
            attempts: tokio::sync::watch::Sender::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            {
                let bucket = bucket.clone();
                move || bucket.open()
            },
            RecordWaiters::new(),
            REOPEN_BACKOFF,
            stop.clone(),
        ));
        let mut attempts = bucket.attempts.subscribe();
        attempts.wait_for(|n| *n >= 2).await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stopped")
            .unwrap();
    }
}
