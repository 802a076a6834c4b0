//! Typed records in NATS KV buckets: the one reversible key encoding ([`key_token`]) and the one
//! JSON record helper ([`Records`]), whose [`Records::modify`] is the one compare-and-set loop
//! (one retry policy, one error type).
//!
//! Records are JSON so an operator can read them with any KV tool, and so a field added later
//! reads as its default from records written before (`#[serde(default)]` on the type).

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::subject;

/// Compare-and-set attempts before [`Records::modify`] gives up with [`KvError::Contended`].
/// Contention is per key (one build, one branch, one parameter) and tiny; hitting this means a
/// writer is looping, and the caller's message is retried later.
pub const CAS_ATTEMPTS: u32 = 64;

/// The header KV puts on delete and purge markers (`DEL`, `PURGE`).
const KV_OPERATION_HEADER: &str = "KV-Operation";

/// Longest pause between two compare-and-set attempts (each pause is random up to the attempt
/// number in milliseconds, capped here), so writers that collided do not collide again.
const CAS_MAX_PAUSE: Duration = Duration::from_millis(16);

/// Whether `err`, or an error that caused it, is the server refusing a write whose expected last
/// sequence did not match (a lost compare-and-set): error code 10071, or 10164, the form a
/// clustered server answers, which async-nats reports as an unknown publish error rather than
/// `WrongLastRevision` (so a lost compare-and-set in a cluster would otherwise fail the write).
pub fn is_wrong_last_sequence(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(server) = e.downcast_ref::<jetstream::Error>()
            && matches!(
                server.error_code(),
                jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Encodes text into one KV key token: the subject-token encoding
/// ([`crate::bus::subject::encode_token`]: ASCII letters, digits, `-` and `_` stand for
/// themselves, every other byte is an escape and two hex digits) with `=` as the escape, since
/// KV keys allow `[-/_=.A-Za-z0-9]` and not `~`. Injective, and free of `.` and `/`, so tokens
/// joined with `.` stay reversible.
pub fn key_token(value: &str) -> String {
    subject::encode_token(value).replace('~', "=")
}

/// Inverts [`key_token`]; `None` for text it never produces.
pub fn decode_key_token(token: &str) -> Option<String> {
    if token.contains('~') {
        return None;
    }
    subject::decode_token(&token.replace('=', "~")).ok()
}

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("cannot open KV bucket {bucket} (provisioned?): {source}")]
    Open {
        bucket: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("cannot read {bucket} record {key}: {source}")]
    Read {
        bucket: String,
        key: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("cannot write {bucket} record {key}: {source}")]
    Write {
        bucket: String,
        key: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("{bucket} record {key} is not valid: {source}")]
    Corrupt {
        bucket: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{bucket} record {key} kept changing under {CAS_ATTEMPTS} compare-and-set attempts")]
    Contended { bucket: String, key: String },
}

impl KvError {
    /// The broker or contention: retrying later can succeed. A corrupt record stays corrupt.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Corrupt { .. })
    }
}

/// A record and the revision it was read at (`revision` 0: the key was never written).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// `None` when the key is absent or deleted.
    pub record: Option<T>,
    pub revision: u64,
}

/// What a [`Records::modify`] step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modify<R> {
    /// Store the changed record, then return `R`.
    Write(R),
    /// Store nothing and return `R` (the record as read stays).
    Keep(R),
}

/// The records of one KV bucket, JSON-encoded values of type `T`.
#[derive(Debug)]
pub struct Records<T> {
    store: kv::Store,
    bucket: String,
    record: PhantomData<fn() -> T>,
}

impl<T> Clone for Records<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            record: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Records<T> {
    /// Opens a bucket provisioned from `deploy/nats/kv/`.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Self, KvError> {
        let store = js.get_key_value(bucket).await.map_err(|e| KvError::Open {
            bucket: bucket.to_owned(),
            source: e.into(),
        })?;
        Ok(Self::new(store))
    }

    /// Wraps an open bucket.
    pub fn new(store: kv::Store) -> Self {
        let bucket = store.name.clone();
        Self {
            store,
            bucket,
            record: PhantomData,
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The untyped bucket, for what records do not cover (watching, history).
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// The record at `key` and its revision.
    pub async fn get(&self, key: &str) -> Result<Versioned<T>, KvError> {
        let entry = self.store.entry(key).await.map_err(|e| KvError::Read {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source: e.into(),
        })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put && !entry.value.is_empty() => {
                let record =
                    serde_json::from_slice(&entry.value).map_err(|source| KvError::Corrupt {
                        bucket: self.bucket.clone(),
                        key: key.to_owned(),
                        source,
                    })?;
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

    /// The record at `key` and its revision as the stream's leader holds them. [`Self::get`] is
    /// a direct get, which any replica of the bucket answers, so a replica still catching up
    /// after a restart answers from the past; a compare-and-set that lost reads here instead,
    /// or it could keep losing against a stale revision.
    pub async fn get_from_leader(&self, key: &str) -> Result<Versioned<T>, KvError> {
        let subject = format!("{}{key}", self.store.prefix);
        let read_error = |source: anyhow::Error| KvError::Read {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source,
        };
        let message = match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Versioned {
                    record: None,
                    revision: 0,
                });
            }
            Err(e) => return Err(read_error(e.into())),
        };
        // A delete or purge marker (KV-Operation DEL / PURGE), or an empty value: no record.
        let removed = message
            .headers
            .get(KV_OPERATION_HEADER)
            .is_some_and(|op| op.as_str() != "PUT");
        if removed || message.payload.is_empty() {
            return Ok(Versioned {
                record: None,
                revision: message.sequence,
            });
        }
        let record =
            serde_json::from_slice(&message.payload).map_err(|source| KvError::Corrupt {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            })?;
        Ok(Versioned {
            record: Some(record),
            revision: message.sequence,
        })
    }

    /// Writes `record` at `key` only if the key is still at `revision` (0: never written).
    /// `Ok(None)` when another writer got there first; otherwise the new revision.
    pub async fn compare_and_set(
        &self,
        key: &str,
        record: &T,
        revision: u64,
    ) -> Result<Option<u64>, KvError> {
        let value = self.encode(key, record)?;
        // `update` with revision 0 also succeeds on a key that was never written (the server
        // checks "last sequence for this subject is 0"), so one call covers create and update.
        match self.store.update(key, value, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e)
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                    || is_wrong_last_sequence(&e) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.write_error(key, e.into())),
        }
    }

    /// Writes `record` at `key` unless the key already holds a record. True when written.
    pub async fn create(&self, key: &str, record: &T) -> Result<bool, KvError> {
        let value = self.encode(key, record)?;
        match self.store.create(key, value).await {
            Ok(_) => Ok(true),
            Err(e)
                if e.kind() == kv::CreateErrorKind::AlreadyExists || is_wrong_last_sequence(&e) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.write_error(key, e.into())),
        }
    }

    /// Writes `record` at `key` whatever is there. Returns the new revision.
    pub async fn put(&self, key: &str, record: &T) -> Result<u64, KvError> {
        let value = self.encode(key, record)?;
        self.store
            .put(key, value)
            .await
            .map_err(|e| self.write_error(key, e.into()))
    }

    /// Removes `key` and its history.
    pub async fn purge(&self, key: &str) -> Result<(), KvError> {
        self.store
            .purge(key)
            .await
            .map_err(|e| self.write_error(key, e.into()))
    }

    /// Every key that holds a record.
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let read_error = |e: anyhow::Error| KvError::Read {
            bucket: self.bucket.clone(),
            key: "*".to_owned(),
            source: e,
        };
        let keys = self.store.keys().await.map_err(|e| read_error(e.into()))?;
        keys.try_collect()
            .await
            .map_err(|e: kv::WatcherError| read_error(e.into()))
    }

    /// Reads the record at `key` (the default when absent), lets `step` change it, and stores
    /// it with compare-and-set if `step` says [`Modify::Write`]; on a concurrent change, reads
    /// again (from the stream's leader: [`Self::get_from_leader`]) and repeats `step` (so `step` must decide from the record alone). Returns `step`'s
    /// result and the record as stored (or as read, for [`Modify::Keep`]).
    pub async fn modify<R>(
        &self,
        key: &str,
        mut step: impl FnMut(&mut T) -> Modify<R>,
    ) -> Result<(R, T), KvError>
    where
        T: Default,
    {
        for attempt in 1..=CAS_ATTEMPTS {
            // The first read is the cheap direct get; after a lost compare-and-set, the leader's.
            let Versioned { record, revision } = if attempt == 1 {
                self.get(key).await?
            } else {
                self.get_from_leader(key).await?
            };
            let mut record = record.unwrap_or_default();
            let result = match step(&mut record) {
                Modify::Keep(result) => return Ok((result, record)),
                Modify::Write(result) => result,
            };
            if self
                .compare_and_set(key, &record, revision)
                .await?
                .is_some()
            {
                return Ok((result, record));
            }
            tracing::debug!(bucket = %self.bucket, key, attempt, "compare-and-set lost; retrying");
            let pause = Duration::from_millis(u64::from(attempt)).mul_f64(rand::random::<f64>());
            tokio::time::sleep(pause.min(CAS_MAX_PAUSE)).await;
        }
        Err(KvError::Contended {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        })
    }

    fn encode(&self, key: &str, record: &T) -> Result<Bytes, KvError> {
        serde_json::to_vec(record)
            .map(Bytes::from)
            .map_err(|e| self.write_error(key, e.into()))
    }

    fn write_error(&self, key: &str, source: anyhow::Error) -> KvError {
        KvError::Write {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping `source`, as async-nats wraps the server's answer.
    #[derive(Debug)]
    struct Wrapped(jetstream::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("publish failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn server_error(err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "wrong last sequence"
        }))
        .unwrap()
    }

    #[test]
    fn both_forms_of_a_wrong_last_sequence_are_a_lost_compare_and_set() {
        for code in [10071, 10164] {
            assert!(is_wrong_last_sequence(&server_error(code)), "{code}");
            assert!(
                is_wrong_last_sequence(&Wrapped(server_error(code))),
                "{code} wrapped"
            );
        }
        assert!(!is_wrong_last_sequence(&Wrapped(server_error(10077))));
        assert!(!is_wrong_last_sequence(&std::io::Error::other(
            "broken pipe"
        )));
    }

    #[test]
    fn key_tokens_round_trip_and_are_valid_single_tokens() {
        for text in [
            "",
            "main",
            "feature/a.b",
            "=",
            "a=b~c",
            "arn:aws:codebuild:us-east-1:123:build/p:u",
            "/prx/stag/Spire/My.App/pkg/docker-image-tag",
            "é ✓",
        ] {
            let token = key_token(text);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{token}"
            );
            assert_eq!(decode_key_token(&token).as_deref(), Some(text), "{token}");
        }
        assert_eq!(key_token("feature/x"), "feature=2Fx");
        assert_ne!(key_token("a.b"), key_token("a/b"));
    }

    #[test]
    fn only_canonical_tokens_decode() {
        for token in ["", "=2", "=2f", "=41", "a.b", "=ZZ", "a b", "~41", "a~"] {
            assert_eq!(decode_key_token(token), None, "{token}");
        }
    }

    #[test]
    fn corrupt_records_are_the_only_permanent_error() {
        let corrupt = KvError::Corrupt {
            bucket: "b".into(),
            key: "k".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert!(!corrupt.is_transient());
        let contended = KvError::Contended {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert!(contended.is_transient());
        assert_eq!(
            contended.to_string(),
            "b record k kept changing under 64 compare-and-set attempts"
        );
    }
}
