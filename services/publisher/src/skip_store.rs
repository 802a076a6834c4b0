//! The latest skipped publish per parameter, in a NATS KV bucket (what `prx-ci params` shows).

use anyhow::Context as _;
use async_nats::jetstream;
use prx_ci_shared::kv::{Records, decode_key_token, key_token};
use serde::{Deserialize, Serialize};

/// The KV bucket of the latest skipped publish per parameter
/// (`deploy/nats/kv/prx_ci_publish_skips.json`).
pub const SKIPS_BUCKET: &str = "prx_ci_publish_skips";

/// The latest publish of a parameter that was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRecord {
    pub parameter: String,
    /// `SUPERSEDED`, `ARTIFACT_MISSING`, ... (the `PublishSkipReason` without its prefix).
    pub reason: String,
    pub detail: String,
    pub value: String,
    pub commit: String,
    pub push_sequence: u64,
    pub build_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub superseded_by_sequence: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub superseded_by_commit: String,
    /// RFC 3339.
    pub at: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Writes and reads [`SkipRecord`]s, keyed by the parameter's [`key_token`].
#[derive(Debug, Clone)]
pub struct SkipStore {
    records: Records<SkipRecord>,
}

impl SkipStore {
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        Ok(Self {
            records: Records::open(js, SKIPS_BUCKET).await?,
        })
    }

    /// Records `skip` as the latest for its parameter (last writer wins: it is a log).
    pub async fn record(&self, skip: &SkipRecord) -> anyhow::Result<()> {
        self.records
            .put(&key_token(&skip.parameter), skip)
            .await
            .context("cannot record skipped publish")?;
        Ok(())
    }

    /// Every record whose parameter starts with `prefix`.
    pub async fn all(&self, prefix: &str) -> anyhow::Result<Vec<SkipRecord>> {
        let mut out = Vec::new();
        for key in self.records.keys().await? {
            if !decode_key_token(&key).is_some_and(|n| n.starts_with(prefix)) {
                continue;
            }
            match self.records.get(&key).await {
                Ok(read) => out.extend(read.record),
                // A record this version cannot read is left out, as before.
                Err(e) if !e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}
