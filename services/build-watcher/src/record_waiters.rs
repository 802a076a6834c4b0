//! Waiting, in-process, for a build's record to appear: the registry of waiting reports and
//! the wait itself, no I/O of their own.
//!
//! A runner report can beat its build's `BuildRequested` (the dispatcher publishes the request
//! after the backend answered; the local runner reports at once). Each such report used to open
//! its own KV watch, an ordered consumer created on the server and deleted after the wait: one
//! consumer per report, nearly every report with an instant backend, and most of nats-server's
//! CPU per push (docs/benchmarks/e2e.md). Now one watch of the builds bucket per process
//! ([`crate::builds_watch`]) calls [`RecordWaiters::wake`] with every key written, and a wait
//! costs a map entry and a oneshot channel.
//!
//! Correctness never depends on that watch: [`wait_for_record`] registers its waiter before it
//! reads the record, so a write landing after the read still wakes it, and when nothing wakes
//! it the record is read once more at the deadline. A watch that is down only makes the wait
//! last its whole timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prx_ci_shared::kv::Versioned;
use tokio::sync::oneshot;

/// The waiters of one process, by KV key (cheap to clone: clones share the registry).
#[derive(Debug, Clone, Default)]
pub struct RecordWaiters {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Id of the next waiter (ids tell a waiter's own entry from a newer one of its key).
    next_id: u64,
    /// Waiters by key, each by id. A key without waiters has no entry.
    by_key: HashMap<String, HashMap<u64, oneshot::Sender<()>>>,
}

impl RecordWaiters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a waiter for `key`, woken by the next [`Self::wake`] of that key or
    /// [`Self::wake_all`]; it leaves the registry when woken or dropped.
    pub fn register(&self, key: &str) -> Waiter {
        let (sender, woken) = oneshot::channel();
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id = registry.next_id.wrapping_add(1);
        registry
            .by_key
            .entry(key.to_owned())
            .or_default()
            .insert(id, sender);
        Waiter {
            key: key.to_owned(),
            id,
            woken,
            waiters: self.clone(),
        }
    }

    /// Wakes every waiter of `key` (the key was written); returns how many there were.
    pub fn wake(&self, key: &str) -> usize {
        let woken = self.lock().by_key.remove(key);
        woken.map_or(0, |senders| send_all(senders.into_values()))
    }

    /// Wakes every waiter (the watch was (re)opened and may have missed writes meanwhile: each
    /// reads its record again); returns how many there were.
    pub fn wake_all(&self) -> usize {
        let woken = std::mem::take(&mut self.lock().by_key);
        send_all(woken.into_values().flat_map(HashMap::into_values))
    }

    /// Waiters registered and not yet woken or dropped.
    pub fn len(&self) -> usize {
        self.lock().by_key.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().by_key.is_empty()
    }

    /// Forgets waiter `id` of `key` if it is still registered (a woken one is not).
    fn remove(&self, key: &str, id: u64) {
        let mut registry = self.lock();
        if let Some(waiters) = registry.by_key.get_mut(key) {
            waiters.remove(&id);
            if waiters.is_empty() {
                registry.by_key.remove(key);
            }
        }
    }

    /// The registry. Nothing that holds the lock can panic half-way through a change, so a
    /// poisoned lock (a panic elsewhere in the holder's thread) still guards a consistent map.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends to every waiter (outside the registry's lock); a waiter dropped meanwhile is counted
/// all the same.
fn send_all(senders: impl Iterator<Item = oneshot::Sender<()>>) -> usize {
    senders
        .map(|sender| {
            // Err: the waiter was dropped after being taken out of the registry; nobody waits.
            let _ = sender.send(());
        })
        .count()
}

/// One registered wait for a key; unregisters itself when dropped.
#[derive(Debug)]
pub struct Waiter {
    key: String,
    id: u64,
    woken: oneshot::Receiver<()>,
    waiters: RecordWaiters,
}

impl Waiter {
    /// Resolves once the waiter was woken, even if that happened before this is awaited.
    pub async fn woken(&mut self) {
        // Err: the sender was dropped without sending, which only the registry's owner could
        // do; it is a reason to read again all the same.
        let _ = (&mut self.woken).await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.remove(&self.key, self.id);
    }
}

/// Where [`wait_for_record`] asks to read the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Any replica of the bucket (a direct get): the first read, the common case.
    AnyReplica,
    /// The stream's leader. The watch is fed by the leader, and a direct get may be answered
    /// by a replica that has not applied the write that woke the waiter yet: reads after a
    /// wake, and the last one at the deadline (the one that decides), ask the leader.
    Leader,
}

/// Waits up to `timeout` for the record at `key` to exist: registers a waiter, then reads
/// (`read`), and while there is no record waits for the waiter and reads again; at the
/// deadline it reads a last time, which decides. A wake without a record (a delete, or the
/// watch reopening) only starts another round with a fresh waiter.
pub async fn wait_for_record<T, E, F, Fut>(
    waiters: &RecordWaiters,
    key: &str,
    timeout: Duration,
    mut read: F,
) -> Result<Versioned<T>, E>
where
    F: FnMut(ReadFrom) -> Fut,
    Fut: Future<Output = Result<Versioned<T>, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut from = ReadFrom::AnyReplica;
    loop {
        // First the waiter, then the read: a write between the two is seen by the read, one
        // after it wakes the waiter.
        let mut waiter = waiters.register(key);
        let current = read(from).await?;
        if current.record.is_some() {
            return Ok(current);
        }
        if tokio::time::timeout_at(deadline, waiter.woken())
            .await
            .is_err()
        {
            drop(waiter);
            return read(ReadFrom::Leader).await;
        }
        from = ReadFrom::Leader;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::convert::Infallible;

    use super::*;

    fn absent() -> Versioned<&'static str> {
        Versioned {
            record: None,
            revision: 0,
        }
    }

    fn present(revision: u64) -> Versioned<&'static str> {
        Versioned {
            record: Some("record"),
            revision,
        }
    }

    #[tokio::test]
    async fn a_wake_before_the_waiter_is_awaited_is_not_lost() {
        let waiters = RecordWaiters::new();
        let mut waiter = waiters.register("a");
        assert_eq!(waiters.wake("a"), 1);
        assert!(waiters.is_empty(), "a woken waiter leaves the registry");
        tokio::time::timeout(Duration::from_secs(5), waiter.woken())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn a_wake_reaches_only_the_waiters_of_its_key() {
        let waiters = RecordWaiters::new();
        let mut a1 = waiters.register("a");
        let mut a2 = waiters.register("a");
        let _b = waiters.register("b");
        assert_eq!(waiters.len(), 3);
        assert_eq!(waiters.wake("a"), 2);
        assert_eq!(waiters.wake("a"), 0);
        assert_eq!(waiters.len(), 1);
        a1.woken().await;
        a2.woken().await;
        assert_eq!(waiters.wake_all(), 1);
        assert!(waiters.is_empty());
    }

    #[test]
    fn a_dropped_waiter_leaves_nothing_behind_and_spares_the_others() {
        let waiters = RecordWaiters::new();
        let first = waiters.register("a");
        let second = waiters.register("a");
        drop(first);
        assert_eq!(waiters.len(), 1);
        drop(second);
        assert!(waiters.is_empty());
        assert!(waiters.registry.lock().unwrap().by_key.is_empty());
        // Dropping a waiter already woken (taken out) changes nothing.
        let woken = waiters.register("b");
        let newer = waiters.register("b");
        assert_eq!(waiters.wake("b"), 2);
        let newest = waiters.register("b");
        drop((woken, newer));
        assert_eq!(waiters.len(), 1, "the newer registration of the key stays");
        drop(newest);
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_already_there_is_returned_without_waiting() {
        let waiters = RecordWaiters::new();
        let start = tokio::time::Instant::now();
        let got = wait_for_record(&waiters, "a", Duration::from_secs(60), |_| async {
            Ok::<_, Infallible>(present(3))
        })
        .await;
        assert_eq!(got, Ok(present(3)));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_right_after_the_read_wakes_the_wait_at_once() {
        // The race the order "register, then read" exists for: the watch sees the write after
        // the read found nothing, before the wait is awaited.
        let waiters = RecordWaiters::new();
        let start = tokio::time::Instant::now();
        let reads_from = RefCell::new(Vec::new());
        let got = wait_for_record(&waiters, "a", Duration::from_secs(3600), |from| {
            reads_from.borrow_mut().push(from);
            let first = reads_from.borrow().len() == 1;
            let waiters = waiters.clone();
            async move {
                if first {
                    waiters.wake("a");
                    Ok::<_, Infallible>(absent())
                } else {
                    Ok(present(1))
                }
            }
        })
        .await;
        assert_eq!(got, Ok(present(1)));
        assert_eq!(start.elapsed(), Duration::ZERO, "woken, not timed out");
        assert_eq!(
            reads_from.into_inner(),
            [ReadFrom::AnyReplica, ReadFrom::Leader],
            "the read after the wake asks the leader, which fed the watch"
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_while_waiting_wakes_the_wait() {
        let waiters = RecordWaiters::new();
        let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (waiters, written) = (waiters.clone(), written.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                written.store(true, std::sync::atomic::Ordering::SeqCst);
                waiters.wake("a")
            })
        };
        let start = tokio::time::Instant::now();
        let got = wait_for_record(&waiters, "a", Duration::from_secs(3600), |_| {
            let written = written.load(std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, Infallible>(if written { present(2) } else { absent() }) }
        })
        .await;
        assert_eq!(got, Ok(present(2)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(writer.await.unwrap(), 1);
        assert!(waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_without_a_record_waits_on_until_the_deadline_then_reads_once_more() {
        let waiters = RecordWaiters::new();
        let reads = Cell::new(0);
        let spurious = {
            let waiters = waiters.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                waiters.wake_all()
            })
        };
        let start = tokio::time::Instant::now();
        let got = wait_for_record(&waiters, "a", Duration::from_secs(10), |_| {
            reads.set(reads.get() + 1);
            async { Ok::<_, Infallible>(absent()) }
        })
        .await;
        assert_eq!(got, Ok(absent()));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // First read, the read after the spurious wake, the last read at the deadline.
        assert_eq!(reads.get(), 3);
        assert_eq!(spurious.await.unwrap(), 1);
        assert!(waiters.is_empty(), "the timed-out waiter left the registry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_written_at_the_deadline_is_found_by_the_last_read() {
        let waiters = RecordWaiters::new();
        let reads_from = RefCell::new(Vec::new());
        let got = wait_for_record(&waiters, "a", Duration::from_secs(1), |from| {
            reads_from.borrow_mut().push(from);
            let first = reads_from.borrow().len() == 1;
            async move { Ok::<_, Infallible>(if first { absent() } else { present(5) }) }
        })
        .await;
        assert_eq!(got, Ok(present(5)));
        assert_eq!(
            reads_from.into_inner(),
            [ReadFrom::AnyReplica, ReadFrom::Leader]
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_failed_read_ends_the_wait_and_unregisters() {
        let waiters = RecordWaiters::new();
        let got: Result<Versioned<&str>, &str> =
            wait_for_record(&waiters, "a", Duration::from_secs(60), |_| async {
                Err("broker down")
            })
            .await;
        assert_eq!(got, Err("broker down"));
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_wait_unregisters() {
        let waiters = RecordWaiters::new();
        let mut wait = Box::pin(wait_for_record(
            &waiters,
            "a",
            Duration::from_secs(3600),
            |_| async { Ok::<_, Infallible>(absent()) },
        ));
        // Polled until it waits, then dropped (the handler's future cancelled at shutdown).
        assert!(futures::poll!(wait.as_mut()).is_pending());
        assert_eq!(waiters.len(), 1);
        drop(wait);
        assert!(waiters.is_empty());
    }
}
