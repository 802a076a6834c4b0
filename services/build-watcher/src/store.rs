//! The build projection in NATS KV: one record per build (what was requested, the chain its
//! events carry, the state machine's state, when it was last heard of), and an index of the
//! builds in flight, which is all the reconciler reads (so its work grows with builds in
//! flight, never with history).
//!
//! Records are written with compare-and-set on the key's revision: the two consumers (build
//! requests and reports) and several replicas may touch one build at once, and a lost update
//! could forget an emitted transition.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prx_ci_proto::v1;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::encode_token;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::report::PhaseInfo;
use crate::state::BuildState;

/// Bucket of build records (`deploy/nats/kv/prx_ci_builds.json`).
pub const BUILDS_BUCKET: &str = "prx_ci_builds";
/// Bucket of builds in flight (`deploy/nats/kv/prx_ci_builds_in_flight.json`).
pub const IN_FLIGHT_BUCKET: &str = "prx_ci_builds_in_flight";

/// The KV key of a build id. KV keys allow `[-/_=.a-zA-Z0-9]`, so the subject-token encoding
/// is reused with `=` in place of its `~` escape (injective: `=` never appears otherwise).
pub fn build_key(build_id: &str) -> String {
    encode_token(build_id).replace('~', "=")
}

/// A serializable [`v1::BuildRef`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildRefData {
    pub build_id: String,
    pub build_request_id: String,
    pub repository: String,
    pub commit: String,
    pub architecture: i32,
    pub backend: String,
    pub project: String,
    pub region: String,
    pub log_url: String,
}

impl From<&v1::BuildRef> for BuildRefData {
    fn from(b: &v1::BuildRef) -> Self {
        Self {
            build_id: b.build_id.clone(),
            build_request_id: b.build_request_id.clone(),
            repository: b.repository.clone(),
            commit: b.commit.clone(),
            architecture: b.architecture,
            backend: b.backend.clone(),
            project: b.project.clone(),
            region: b.region.clone(),
            log_url: b.log_url.clone(),
        }
    }
}

impl BuildRefData {
    pub fn to_proto(&self) -> v1::BuildRef {
        v1::BuildRef {
            build_id: self.build_id.clone(),
            build_request_id: self.build_request_id.clone(),
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            architecture: self.architecture,
            backend: self.backend.clone(),
            project: self.project.clone(),
            region: self.region.clone(),
            log_url: self.log_url.clone(),
        }
    }
}

/// The causal chain every event of the build carries (a serializable [`Chain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainData {
    pub correlation_id: String,
    /// The event the build's events are caused by (the BuildRequested, or for builds nobody
    /// requested, the first report).
    pub causation_id: String,
    pub repository: String,
    pub branch: Option<String>,
    pub pull_request: Option<u64>,
    pub push_sequence: u64,
}

impl ChainData {
    /// The chain of events caused by `cause` (keeps correlation, ordering key and sequence).
    pub fn caused_by(cause: &v1::Envelope) -> Self {
        let chain = Chain::caused_by(cause);
        let (repository, branch, pull_request) = match &chain.ordering_key {
            Some(key) => match &key.lane {
                Some(v1::ordering_key::Lane::Branch(b)) => {
                    (key.repository.clone(), Some(b.clone()), None)
                }
                Some(v1::ordering_key::Lane::PullRequest(n)) => {
                    (key.repository.clone(), None, Some(*n))
                }
                None => (key.repository.clone(), None, None),
            },
            None => (String::new(), None, None),
        };
        Self {
            correlation_id: chain.correlation_id,
            causation_id: chain.causation_id,
            repository,
            branch,
            pull_request,
            push_sequence: chain.push_sequence,
        }
    }

    pub fn to_chain(&self) -> Chain {
        let lane = match (&self.branch, self.pull_request) {
            (Some(b), _) => Some(v1::ordering_key::Lane::Branch(b.clone())),
            (None, Some(n)) => Some(v1::ordering_key::Lane::PullRequest(n)),
            (None, None) => None,
        };
        let ordering_key =
            (!self.repository.is_empty() || lane.is_some()).then(|| v1::OrderingKey {
                repository: self.repository.clone(),
                lane,
            });
        Chain {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            ordering_key,
            push_sequence: self.push_sequence,
        }
    }
}

/// The dispatcher's `BuildRequested` as kept for the build's events (`BuildStarted.requested`,
/// `BuildCompleted.requested`): the authority on what was built and whether it may publish.
/// The buildspec is left out (large, and nobody downstream reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestData {
    pub environment: BTreeMap<String, String>,
    pub clone_url: String,
    pub source_version: String,
    pub event_name: String,
    pub action: String,
    pub fork: bool,
    pub branch: String,
    pub pull_request: u64,
}

impl From<&v1::BuildRequested> for RequestData {
    fn from(r: &v1::BuildRequested) -> Self {
        Self {
            environment: r
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clone_url: r.clone_url.clone(),
            source_version: r.source_version.clone(),
            event_name: r.event_name.clone(),
            action: r.action.clone(),
            fork: r.fork,
            branch: r.branch.clone(),
            pull_request: r.pull_request,
        }
    }
}

impl RequestData {
    /// The request for the build's events, with `build` as its reference (buildspec omitted).
    pub fn to_proto(&self, build: v1::BuildRef) -> v1::BuildRequested {
        v1::BuildRequested {
            build: Some(build),
            environment: self
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            buildspec: String::new(),
            clone_url: self.clone_url.clone(),
            source_version: self.source_version.clone(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            fork: self.fork,
            branch: self.branch.clone(),
            pull_request: self.pull_request,
        }
    }
}

/// The superseding push of a cancelled build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CancelData {
    pub event_id: String,
    pub superseded_by_sequence: u64,
    pub superseded_by_commit: String,
}

/// Everything known about one build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildRecord {
    /// The normalized build id (the key's source).
    pub build_id: String,
    pub build: BuildRefData,
    /// Whether a BuildRequested was seen (false: a build nobody requested, so far).
    pub requested: bool,
    /// The event id of the BuildRequested.
    pub requested_event_id: String,
    /// The BuildRequested itself (`None`: nobody requested the build, or the record predates
    /// this field; its events then carry no request and never publish).
    pub request: Option<RequestData>,
    pub chain: ChainData,
    pub cancelled: Option<CancelData>,
    pub state: BuildState,
    /// Unix milliseconds of the last report (or of the request).
    pub last_heard_ms: i64,
    /// Phases as last reported.
    pub phases: Vec<PhaseInfo>,
    /// The status of the final state reported first (also in `state`), for operators.
    pub final_status: Option<String>,
}

/// One build in flight: what the reconciler needs without reading the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub build_id: String,
    pub backend: String,
    pub last_heard_ms: i64,
}

/// Unix milliseconds of a time.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A record and the revision it was read at (0 = absent).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub record: Option<BuildRecord>,
    pub revision: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the key since it was read: read again and retry.
    #[error("build record {0} changed concurrently")]
    Conflict(String),
    #[error("cannot {what} build record {key}: {source}")]
    Kv {
        what: &'static str,
        key: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("build record {key} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The two buckets.
#[derive(Debug, Clone)]
pub struct BuildStore {
    builds: kv::Store,
    in_flight: kv::Store,
}

impl BuildStore {
    /// Opens the buckets (provisioned from `deploy/nats/kv/`).
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        Ok(Self {
            builds: js
                .get_key_value(BUILDS_BUCKET)
                .await
                .with_context(|| format!("cannot open KV bucket {BUILDS_BUCKET}"))?,
            in_flight: js
                .get_key_value(IN_FLIGHT_BUCKET)
                .await
                .with_context(|| format!("cannot open KV bucket {IN_FLIGHT_BUCKET}"))?,
        })
    }

    pub fn builds(&self) -> &kv::Store {
        &self.builds
    }

    /// Reads a build's record.
    pub async fn get(&self, build_id: &str) -> Result<Versioned, StoreError> {
        let key = build_key(build_id);
        let entry = self
            .builds
            .entry(key.clone())
            .await
            .map_err(|e| StoreError::Kv {
                what: "read",
                key: key.clone(),
                source: e.into(),
            })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value)
                    .map_err(|source| StoreError::Corrupt { key, source })?;
                Ok(Versioned {
                    record: Some(record),
                    revision: entry.revision,
                })
            }
            Some(entry) => Ok(Versioned {
                record: None,
                revision: entry.revision,
            }),
            None => Ok(Versioned {
                record: None,
                revision: 0,
            }),
        }
    }

    /// Writes a record if the key is still at `revision` (0: still absent).
    pub async fn save(&self, record: &BuildRecord, revision: u64) -> Result<u64, StoreError> {
        let key = build_key(&record.build_id);
        let value =
            Bytes::from(
                serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
                    key: key.clone(),
                    source,
                })?,
            );
        match self.builds.update(&key, value, revision).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict(key))
            }
            Err(e) => Err(StoreError::Kv {
                what: "write",
                key,
                source: e.into(),
            }),
        }
    }

    /// Marks a build in flight (or refreshes when it was last heard of).
    pub async fn put_in_flight(&self, entry: &InFlight) -> Result<(), StoreError> {
        let key = build_key(&entry.build_id);
        let value = Bytes::from(serde_json::to_vec(entry).unwrap_or_default());
        self.in_flight
            .put(&key, value)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Kv {
                what: "mark in flight",
                key,
                source: e.into(),
            })
    }

    /// Refreshes `last_heard_ms` only if the build is still in flight at the revision read (so
    /// a build that just finished is not put back).
    pub async fn touch_in_flight(&self, entry: &InFlight, revision: u64) -> Result<(), StoreError> {
        let key = build_key(&entry.build_id);
        let value = Bytes::from(serde_json::to_vec(entry).unwrap_or_default());
        match self.in_flight.update(&key, value, revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict(key))
            }
            Err(e) => Err(StoreError::Kv {
                what: "refresh in-flight",
                key,
                source: e.into(),
            }),
        }
    }

    /// Removes a finished build from the in-flight index.
    pub async fn remove_in_flight(&self, build_id: &str) -> Result<(), StoreError> {
        let key = build_key(build_id);
        self.in_flight
            .purge(&key)
            .await
            .map_err(|e| StoreError::Kv {
                what: "remove from in-flight",
                key,
                source: e.into(),
            })
    }

    /// Every build in flight, with the revision of its entry.
    pub async fn in_flight(&self) -> Result<Vec<(InFlight, u64)>, StoreError> {
        use futures::TryStreamExt as _;
        let err = |what, e: anyhow::Error| StoreError::Kv {
            what,
            key: "*".into(),
            source: e,
        };
        let keys: Vec<String> = match self.in_flight.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| err("list in-flight", e.into()))?,
            Err(e) => return Err(err("list in-flight", e.into())),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = self
                .in_flight
                .entry(key.clone())
                .await
                .map_err(|e| err("read in-flight", e.into()))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                match serde_json::from_slice::<InFlight>(&entry.value) {
                    Ok(value) => out.push((value, entry.revision)),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "ignoring unreadable in-flight entry")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` for a record to appear (a report racing its BuildRequested).
    pub async fn wait_for(
        &self,
        build_id: &str,
        timeout: std::time::Duration,
    ) -> Result<Versioned, StoreError> {
        use futures::StreamExt as _;
        let key = build_key(build_id);
        let watch = self
            .builds
            .watch_with_history(&key)
            .await
            .map_err(|e| StoreError::Kv {
                what: "watch",
                key: key.clone(),
                source: e.into(),
            });
        if let Ok(mut watch) = watch {
            let appeared = tokio::time::timeout(timeout, async {
                while let Some(Ok(entry)) = watch.next().await {
                    if entry.operation == kv::Operation::Put {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if !appeared {
                return Ok(Versioned {
                    record: None,
                    revision: 0,
                });
            }
        }
        self.get(build_id).await
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

    #[test]
    fn records_written_before_the_request_was_kept_still_read() {
        let old = r#"{"build_id":"proj:1","requested":true,"requested_event_id":"evt",
            "build":{"repository":"PRX/app","commit":"abc"},"last_heard_ms":5}"#;
        let record: BuildRecord = serde_json::from_str(old).unwrap();
        assert!(record.requested);
        assert_eq!(record.request, None);
        assert_eq!(record.build.repository, "PRX/app");
        let with = BuildRecord {
            request: Some(RequestData {
                branch: "main".into(),
                fork: true,
                ..Default::default()
            }),
            ..record
        };
        let back: BuildRecord =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn chains_survive_the_record() {
        let envelope = v1::Envelope {
            event_id: "req-1".into(),
            correlation_id: "delivery-1".into(),
            ordering_key: Some(v1::OrderingKey {
                repository: "PRX/app".into(),
                lane: Some(v1::ordering_key::Lane::PullRequest(7)),
            }),
            push_sequence: 42,
            ..Default::default()
        };
        let data = ChainData::caused_by(&envelope);
        let json = serde_json::to_string(&data).unwrap();
        let back: ChainData = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_chain(), Chain::caused_by(&envelope));
        let none = ChainData::default().to_chain();
        assert_eq!(none.ordering_key, None);
    }
}
