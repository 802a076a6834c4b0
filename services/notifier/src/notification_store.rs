//! The per-build projection in a NATS KV bucket: the build's view, its Slack message
//! reference, what was last delivered, and the cached commit list. Every change is a
//! compare-and-set on the entry's revision, so concurrent handlers and replicas serialise per
//! build without locks.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chat::MessageRef;
use crate::commits::CommitsCache;
use crate::commit_status::CommitStatus;
use crate::view::BuildView;

/// Compare-and-set attempts before giving up (contention on one build is tiny).
const MAX_CAS_ATTEMPTS: u32 = 64;

/// Which replica delivers a build right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// The Slack side of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlackState {
    /// The posted message (absent until the first post is confirmed and stored).
    pub reference: Option<MessageRef>,
    /// Set (and stored) before a post is attempted, cleared when its reference is stored. Found
    /// set with no reference, a post may have happened: look for it before posting again.
    #[serde(with = "time::serde::rfc3339::option")]
    pub post_started_at: Option<OffsetDateTime>,
    /// The view version the message shows.
    pub delivered_version: u64,
    /// Digest of the last content sent (identical renderings are not sent again).
    pub last_digest: Option<String>,
    pub lease: Option<Lease>,
    /// Slack's last permanent error, for operators.
    pub last_error: Option<String>,
    /// Posts and updates made (numbers the notification events).
    pub deliveries: u64,
}

/// The commit-status side of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusRecord {
    /// The status last written for this build (or superseded by a newer one on the same
    /// commit and context).
    pub written: Option<CommitStatus>,
}

/// Everything stored for one build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildRecord {
    pub view: BuildView,
    pub slack: SlackState,
    pub status: StatusRecord,
    pub commits: Option<CommitsCache>,
}

impl BuildRecord {
    /// The message does not show the latest view yet.
    pub fn chat_dirty(&self) -> bool {
        self.view.version > 0 && self.slack.delivered_version < self.view.version
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read notification record {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("cannot write notification record {key}: {source}")]
    Write {
        key: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("notification record {key} is not valid: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("notification record {key} kept changing under {MAX_CAS_ATTEMPTS} attempts")]
    Contended { key: String },
}

/// The KV key of a build: `b.` plus the build key with every byte outside `[A-Za-z0-9_-]`
/// written as `=HH` (valid KV key characters, reversible).
pub fn kv_key(build_key: &str) -> String {
    let mut out = String::with_capacity(build_key.len() + 8);
    out.push_str("b.");
    for &b in build_key.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Inverts [`kv_key`].
pub fn build_key_of(kv_key: &str) -> Option<String> {
    let encoded = kv_key.strip_prefix("b.")?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The bucket of build records.
#[derive(Debug, Clone)]
pub struct Store {
    kv: kv::Store,
}

impl Store {
    /// Opens `bucket` (provisioned from `deploy/nats/kv/`; created here if missing).
    pub async fn open(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Self> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    max_age: Duration::from_secs(30 * 24 * 3600),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot open KV bucket {bucket}: {e}"))?,
        };
        Ok(Self { kv })
    }

    /// The record of `build_key` and its revision.
    pub async fn load(&self, build_key: &str) -> Result<Option<(BuildRecord, u64)>, StoreError> {
        let key = kv_key(build_key);
        let entry = self.kv.entry(&key).await.map_err(|e| StoreError::Read {
            key: key.clone(),
            source: e.into(),
        })?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.value.is_empty() {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value)
            .map_err(|source| StoreError::Corrupt { key, source })?;
        Ok(Some((record, entry.revision)))
    }

    /// Reads the record (default when absent), lets `f` change it, and writes it back if `f`
    /// says so, retrying on concurrent changes. Returns `f`'s result and the record as stored
    /// (or as read, when nothing was written).
    pub async fn modify<T>(
        &self,
        build_key: &str,
        mut f: impl FnMut(&mut BuildRecord) -> (bool, T),
    ) -> Result<(T, BuildRecord), StoreError> {
        let key = kv_key(build_key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.load(build_key).await?;
            let (mut record, revision) = match current {
                Some((record, revision)) => (record, Some(revision)),
                None => (BuildRecord::default(), None),
            };
            let (write, result) = f(&mut record);
            if !write {
                return Ok((result, record));
            }
            let value = serde_json::to_vec(&record).map_err(|e| StoreError::Write {
                key: key.clone(),
                source: e.into(),
            })?;
            let outcome = match revision {
                Some(revision) => self
                    .kv
                    .update(&key, value.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            anyhow::Error::from(e),
                        )
                    }),
                None => self
                    .kv
                    .create(&key, value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            anyhow::Error::from(e),
                        )
                    }),
            };
            match outcome {
                Ok(()) => return Ok((result, record)),
                Err((true, _)) => continue,
                Err((false, source)) => {
                    return Err(StoreError::Write {
                        key: key.clone(),
                        source,
                    });
                }
            }
        }
        Err(StoreError::Contended { key })
    }

    /// Every build key in the bucket.
    pub async fn build_keys(&self) -> anyhow::Result<Vec<String>> {
        use futures::TryStreamExt as _;
        let keys = match self.kv.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(anyhow::anyhow!("cannot list notification records: {e}")),
        };
        let keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list notification records: {e}"))?;
        Ok(keys.iter().filter_map(|k| build_key_of(k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_are_valid_and_reversible() {
        for key in [
            "infrastructure-ci-Runner2:6d1c4a38-3f1e",
            "arn:aws:codebuild:us-east-1:123:build/p:u",
            "local:1234",
            "request:req 1/é",
        ] {
            let encoded = kv_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)),
                "{encoded}"
            );
            assert_eq!(build_key_of(&encoded).as_deref(), Some(key));
        }
    }
}
