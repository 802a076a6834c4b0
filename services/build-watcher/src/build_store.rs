//! The build-watcher's storage port: its three KV buckets, build records, the in-flight index
//! and the index of requests by repository, commit and architecture (console retries).
//!
//! Records are written with compare-and-set on the key's revision: the two consumers (build
//! requests and reports) and several replicas may touch one build at once, and a lost update
//! could forget an emitted transition. Keys are [`kv::key_token`]s of the normalized build id
//! (of the repository, commit and architecture in the request index).
//!
//! A report that beats its build's request waits for the record with [`BuildStore::wait_for`],
//! in-process: one watch of the builds bucket per process ([`BuildStore::watch_builds`],
//! [`crate::builds_watch`]) wakes it, never a consumer per wait ([`crate::record_waiters`]).

use std::time::Duration;

use async_nats::jetstream;
use prx_ci_shared::CancellationToken;
use prx_ci_shared::kv::{self, KvError, Modify, Records, Versioned};

use crate::builds_watch;
use crate::console_retry::{RequestIndexRecord, RequestedBuild, index_key};
use crate::record_waiters::{self, ReadFrom, RecordWaiters};
use crate::watched_build::{InFlightRecord, WatchedBuildRecord};

/// Bucket of build records (`deploy/nats/kv/prx_ci_builds.json`).
pub const BUILDS_BUCKET: &str = "prx_ci_builds";
/// Bucket of builds in flight (`deploy/nats/kv/prx_ci_builds_in_flight.json`).
pub const IN_FLIGHT_BUCKET: &str = "prx_ci_builds_in_flight";
/// Bucket of requests per repository, commit and architecture
/// (`deploy/nats/kv/prx_ci_build_requests.json`).
pub const REQUESTS_BUCKET: &str = "prx_ci_build_requests";

/// The KV key of a (normalized) build id, in both buckets.
pub fn build_key(build_id: &str) -> String {
    kv::key_token(build_id)
}

/// The three buckets, and the reports waiting for a build's record (clones share them).
#[derive(Debug, Clone)]
pub struct BuildStore {
    builds: Records<WatchedBuildRecord>,
    in_flight: Records<InFlightRecord>,
    requests: Records<RequestIndexRecord>,
    /// For the watch's inbox.
    client: async_nats::Client,
    waiters: RecordWaiters,
}

impl BuildStore {
    /// Opens the buckets (provisioned from `deploy/nats/kv/`).
    pub async fn open(js: &jetstream::Context) -> Result<Self, KvError> {
        Ok(Self {
            builds: Records::open(js, BUILDS_BUCKET).await?,
            in_flight: Records::open(js, IN_FLIGHT_BUCKET).await?,
            requests: Records::open(js, REQUESTS_BUCKET).await?,
            client: js.client(),
            waiters: RecordWaiters::new(),
        })
    }

    /// Adds a request to the index of its repository, commit and architecture (compare-and-set;
    /// nothing is written when it is already there). False when nothing was written: already
    /// indexed, or its reference lacks one of the three.
    pub async fn index_request(&self, entry: &RequestedBuild) -> Result<bool, KvError> {
        let Some(key) = entry.index_key() else {
            return Ok(false);
        };
        let (written, _) = self
            .requests
            .modify(&key, |index| {
                if index.record(entry.clone()) {
                    Modify::Write(true)
                } else {
                    Modify::Keep(false)
                }
            })
            .await?;
        Ok(written)
    }

    /// The indexed requests of a repository, commit and architecture (none when one of them
    /// is unknown).
    pub async fn requests_of(
        &self,
        repository: &str,
        commit: &str,
        architecture: i32,
    ) -> Result<Vec<RequestedBuild>, KvError> {
        let Some(key) = index_key(repository, commit, architecture) else {
            return Ok(Vec::new());
        };
        Ok(self
            .requests
            .get(&key)
            .await?
            .record
            .map(|index| index.requests)
            .unwrap_or_default())
    }

    /// Reads a build's record.
    pub async fn get(&self, build_id: &str) -> Result<Versioned<WatchedBuildRecord>, KvError> {
        self.builds.get(&build_key(build_id)).await
    }

    /// Writes a record if its key is still at `revision` (0: still absent). `None` when another
    /// writer got there first (read again and retry).
    pub async fn save(
        &self,
        record: &WatchedBuildRecord,
        revision: u64,
    ) -> Result<Option<u64>, KvError> {
        self.builds
            .compare_and_set(&build_key(&record.build_id), record, revision)
            .await
    }

    /// Changes a build's record with compare-and-set (the empty record when absent: see
    /// [`WatchedBuildRecord::is_new`]); returns `step`'s result and the record as stored.
    pub async fn modify<R>(
        &self,
        build_id: &str,
        step: impl FnMut(&mut WatchedBuildRecord) -> Modify<R>,
    ) -> Result<(R, WatchedBuildRecord), KvError> {
        self.builds.modify(&build_key(build_id), step).await
    }

    /// Marks a build in flight (or refreshes when it was last heard of).
    pub async fn put_in_flight(&self, entry: &InFlightRecord) -> Result<(), KvError> {
        self.in_flight
            .put(&build_key(&entry.build_id), entry)
            .await
            .map(|_| ())
    }

    /// Refreshes `last_heard_ms` only if the build is still in flight at the revision read (so
    /// a build that just finished is not put back). False when the entry changed meanwhile.
    pub async fn touch_in_flight(
        &self,
        entry: &InFlightRecord,
        revision: u64,
    ) -> Result<bool, KvError> {
        Ok(self
            .in_flight
            .compare_and_set(&build_key(&entry.build_id), entry, revision)
            .await?
            .is_some())
    }

    /// Removes a finished build from the in-flight index.
    pub async fn remove_in_flight(&self, build_id: &str) -> Result<(), KvError> {
        self.in_flight.purge(&build_key(build_id)).await
    }

    /// Every build in flight, with the revision of its entry (unreadable entries are skipped).
    pub async fn in_flight(&self) -> Result<Vec<(InFlightRecord, u64)>, KvError> {
        let keys = self.in_flight.keys().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.in_flight.get(&key).await {
                Ok(Versioned {
                    record: Some(entry),
                    revision,
                }) => out.push((entry, revision)),
                Ok(_) => {}
                Err(e @ KvError::Corrupt { .. }) => {
                    tracing::warn!(%key, error = %e, "ignoring unreadable in-flight entry");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` for a build's record to appear (a report racing its
    /// BuildRequested), woken by [`Self::watch_builds`]; a record already there is returned at
    /// once. Without a record at the deadline, the answer has none (`record: None`).
    ///
    /// Without the watch running (or while it is down) this waits the whole `timeout`, then
    /// reads once more: as correct, only slower.
    pub async fn wait_for(
        &self,
        build_id: &str,
        timeout: Duration,
    ) -> Result<Versioned<WatchedBuildRecord>, KvError> {
        let key = build_key(build_id);
        record_waiters::wait_for_record(&self.waiters, &key, timeout, |from| {
            let (builds, key) = (&self.builds, &key);
            async move {
                match from {
                    ReadFrom::AnyReplica => builds.get(key).await,
                    ReadFrom::Leader => builds.get_from_leader(key).await,
                }
            }
        })
        .await
    }

    /// Keeps the one watch of the builds bucket that wakes [`Self::wait_for`] until `stop`,
    /// reopening it (with backoff) whenever it fails or ends. One per process (the store's
    /// clones share its waiters), beside the consumers.
    pub async fn watch_builds(&self, stop: CancellationToken) {
        let (client, bucket) = (self.client.clone(), self.builds.store().clone());
        builds_watch::run(
            move || builds_watch::open(client.clone(), bucket.clone()),
            self.waiters.clone(),
            builds_watch::REOPEN_BACKOFF,
            stop,
        )
        .await;
    }

    /// The reports waiting for a build's record (how many: [`RecordWaiters::len`]).
    pub fn waiters(&self) -> &RecordWaiters {
        &self.waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_keys_are_valid_kv_keys_and_distinct() {
        let valid = |k: &str| {
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        for id in [
            "prx-Runner2:8745a7a9-c340",
            "local:1",
            "a b/c.d",
            "x~y",
            "x=7Ey",
        ] {
            let key = build_key(id);
            assert!(valid(&key), "{key}");
            assert!(!key.starts_with('.') && !key.ends_with('.'));
        }
        assert_ne!(build_key("x~y"), build_key("x=7Ey"));
        assert_eq!(build_key("local:1"), "local=3A1");
    }
}
