//! The storage port of notification records: one [`NotificationRecord`] per build in the KV
//! bucket `prx_ci_notifications`, changed only by compare-and-set on the entry's revision
//! ([`prx_ci_shared::kv::Records::modify`]), so concurrent handlers and replicas serialise per
//! build without locks.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use prx_ci_shared::kv::{self as records, KvError, Modify, Records, Versioned};

use crate::notification_record::NotificationRecord;

/// Prefix of every build's key (`b.` + [`records::key_token`] of the build key).
const KEY_PREFIX: &str = "b.";

/// How long a record is kept when this service creates the bucket itself.
const BUCKET_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The KV key of a build.
pub fn record_key(build_key: &str) -> String {
    format!("{KEY_PREFIX}{}", records::key_token(build_key))
}

/// The build key of a record key (inverts [`record_key`]).
pub fn build_key_of(record_key: &str) -> Option<String> {
    records::decode_key_token(record_key.strip_prefix(KEY_PREFIX)?)
}

/// The bucket of notification records.
#[derive(Debug, Clone)]
pub struct NotificationStore {
    records: Records<NotificationRecord>,
}

impl NotificationStore {
    /// Opens `bucket` (provisioned from `deploy/nats/kv/`; created here if missing, so a bare
    /// nats-server works too).
    pub async fn open(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Self> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    max_age: BUCKET_MAX_AGE,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot open KV bucket {bucket}: {e}"))?,
        };
        Ok(Self {
            records: Records::new(kv),
        })
    }

    /// The record of `build_key` and its revision.
    pub async fn load(
        &self,
        build_key: &str,
    ) -> Result<Option<(NotificationRecord, u64)>, KvError> {
        let Versioned { record, revision } = self.records.get(&record_key(build_key)).await?;
        Ok(record.map(|record| (record, revision)))
    }

    /// Reads the record (default when absent), lets `step` decide, and writes it back on
    /// [`Modify::Write`], retrying on concurrent changes. Returns `step`'s result and the record
    /// as stored (or as read, for [`Modify::Keep`]).
    pub async fn modify<R>(
        &self,
        build_key: &str,
        step: impl FnMut(&mut NotificationRecord) -> Modify<R>,
    ) -> Result<(R, NotificationRecord), KvError> {
        self.records.modify(&record_key(build_key), step).await
    }

    /// Every build key in the bucket.
    pub async fn build_keys(&self) -> Result<Vec<String>, KvError> {
        let keys = self.records.keys().await?;
        Ok(keys.iter().filter_map(|k| build_key_of(k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as the notifier wrote them before records moved to `shared::kv` (its own encoder).
    const KEYS_WRITTEN_BEFORE: [(&str, &str); 5] = [
        (
            "infrastructure-ci-Runner2:6d1c4a38-3f1e",
            "b.infrastructure-ci-Runner2=3A6d1c4a38-3f1e",
        ),
        (
            "arn:aws:codebuild:us-east-1:123:build/p:u",
            "b.arn=3Aaws=3Acodebuild=3Aus-east-1=3A123=3Abuild=2Fp=3Au",
        ),
        ("local:1234", "b.local=3A1234"),
        ("request:req 1/é", "b.request=3Areq=201=2F=C3=A9"),
        ("a=b.c~d", "b.a=3Db=2Ec=7Ed"),
    ];

    /// A record as the notifier wrote it before records moved to `shared::kv` (serialised by
    /// that code from a failed build with a skipped publish, a posted message, a lease, a
    /// written status and a commit list).
    const RECORD_WRITTEN_BEFORE: &str = include_str!("testdata/notification_record.json");

    #[test]
    fn keys_are_unchanged_and_reversible() {
        for (build_key, written) in KEYS_WRITTEN_BEFORE {
            assert_eq!(record_key(build_key), written);
            assert_eq!(build_key_of(written).as_deref(), Some(build_key));
        }
        assert_eq!(build_key_of("x.local=3A1234"), None);
    }

    #[test]
    fn a_record_written_before_reads_and_writes_back_byte_for_byte() {
        let json = RECORD_WRITTEN_BEFORE.trim_end();
        let record: NotificationRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.view.version, 5);
        assert_eq!(record.slack.deliveries, 2);
        assert!(record.status.written.is_some());
        assert!(record.commits.is_some());
        assert_eq!(serde_json::to_string(&record).unwrap(), json);
    }

    #[test]
    fn an_empty_record_writes_as_before() {
        let written_before = include_str!("testdata/notification_record_default.json");
        assert_eq!(
            serde_json::to_string(&NotificationRecord::default()).unwrap(),
            written_before.trim_end()
        );
    }
}
