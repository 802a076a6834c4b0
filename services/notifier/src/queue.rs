//! A keyed FIFO queue that coalesces: pushing a key that is already waiting merges into the
//! waiting entry instead of queueing again, so a burst of updates for one build (or one
//! commit status) goes out once, with the newest content.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use prx_ci_shared::CancellationToken;
use tokio::sync::Notify;

#[derive(Debug)]
struct State<K, V> {
    order: VecDeque<K>,
    pending: HashMap<K, V>,
}

/// See the module docs.
#[derive(Debug)]
pub struct CoalescingQueue<K, V> {
    state: Mutex<State<K, V>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash, V> Default for CoalescingQueue<K, V> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                order: VecDeque::new(),
                pending: HashMap::new(),
            }),
            notify: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash, V> CoalescingQueue<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `value` under `key`, or merges it into the waiting entry (`merge(waiting, new)`).
    /// Returns `false` when it was merged (coalesced).
    pub fn push(&self, key: K, value: V, merge: impl FnOnce(&mut V, V)) -> bool {
        let mut state = self.lock();
        let fresh = match state.pending.get_mut(&key) {
            Some(waiting) => {
                merge(waiting, value);
                false
            }
            None => {
                state.pending.insert(key.clone(), value);
                state.order.push_back(key);
                true
            }
        };
        drop(state);
        self.notify.notify_one();
        fresh
    }

    /// Puts an entry back at the front (a retry keeps its place), merging like [`Self::push`].
    pub fn push_front(&self, key: K, value: V, merge: impl FnOnce(&mut V, V)) {
        let mut state = self.lock();
        match state.pending.get_mut(&key) {
            Some(waiting) => merge(waiting, value),
            None => {
                state.pending.insert(key.clone(), value);
                state.order.push_front(key);
            }
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Takes the oldest entry without waiting.
    pub fn try_pop(&self) -> Option<(K, V)> {
        let mut state = self.lock();
        while let Some(key) = state.order.pop_front() {
            if let Some(value) = state.pending.remove(&key) {
                return Some((key, value));
            }
        }
        None
    }

    /// Waits for the oldest entry; `None` once `shutdown` is cancelled.
    pub async fn pop(&self, shutdown: &CancellationToken) -> Option<(K, V)> {
        loop {
            let notified = self.notify.notified();
            if let Some(entry) = self.try_pop() {
                return Some(entry);
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = notified => {}
            }
        }
    }

    /// Whether an entry waits under `key` and `check` holds for it.
    pub fn waiting(&self, key: &K, check: impl FnOnce(&V) -> bool) -> bool {
        self.lock().pending.get(key).is_some_and(check)
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pushes_of_a_waiting_key_coalesce_in_place() {
        let q = CoalescingQueue::<&str, u32>::default();
        assert!(q.push("a", 1, |w, n| *w = n));
        assert!(q.push("b", 1, |w, n| *w = n));
        assert!(!q.push("a", 2, |w, n| *w = n));
        assert_eq!(q.len(), 2);
        assert!(q.waiting(&"a", |v| *v == 2));
        assert!(!q.waiting(&"a", |v| *v == 1));
        assert!(!q.waiting(&"z", |_| true));
        let shutdown = CancellationToken::new();
        assert_eq!(q.pop(&shutdown).await, Some(("a", 2)));
        q.push_front("c", 7, |w, n| *w = n);
        assert_eq!(q.try_pop(), Some(("c", 7)));
        assert_eq!(q.try_pop(), Some(("b", 1)));
        assert_eq!(q.try_pop(), None);
        shutdown.cancel();
        assert_eq!(q.pop(&shutdown).await, None);
    }
}
