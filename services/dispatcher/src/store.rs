//! The dispatcher's KV buckets: builds started per (webhook, architecture), so a redelivery at
//! any later time re-announces the build instead of starting another; and the lane record of
//! each ordering key (see [`crate::lane`]), written with compare-and-set.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prost::Message as _;
use prx_ci_proto::v1::Envelope;
use prx_ci_shared::domain::{Architecture, Lane, OrderingKey};

use prx_ci_shared::domain::push_position::PushPosition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lane::{InflightBuild, LaneState, LaneUpdate, Push};
use crate::push_order::{OrderRecord, PushFacts};

/// Bucket of started builds: key `<dispatch id>.<architecture>`, value the `BuildRequested`
/// envelope announced for it (protobuf).
pub const DISPATCHED_BUCKET: &str = "prx_ci_dispatched";
/// Bucket of lane records: key `<owner>.<repo>.<b|pr>.<branch|number>`, value JSON.
pub const LANES_BUCKET: &str = "prx_ci_dispatch_lanes";
/// Bucket of push-order records (see [`crate::push_order`]): same keys as the lanes, value JSON.
pub const PUSH_ORDER_BUCKET: &str = "prx_ci_push_order";

/// Compare-and-set attempts before giving up (the webhook is then retried).
const CAS_ATTEMPTS: usize = 32;

/// Encodes text into one KV key token: ASCII letters, digits, `-` and `_` stand for
/// themselves, every other byte is `=HH` (injective; KV keys allow `[-/_=.A-Za-z0-9]`).
pub fn key_token(value: &str) -> String {
    if value.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The key of a started build.
pub fn dispatched_key(dispatch_id: &str, architecture: Architecture) -> String {
    format!("{}.{}", key_token(dispatch_id), architecture.as_str())
}

/// The key of an ordering key's lane record.
pub fn lane_key(key: &OrderingKey) -> String {
    let lane = match &key.lane {
        Lane::Branch(b) => format!("b.{}", key_token(b.as_str())),
        Lane::PullRequest(n) => format!("pr.{n}"),
    };
    format!(
        "{}.{}.{lane}",
        key_token(key.repository.owner()),
        key_token(key.repository.name())
    )
}

/// The dispatcher's buckets.
#[derive(Debug, Clone)]
pub struct DispatchStore {
    dispatched: kv::Store,
    lanes: kv::Store,
    push_order: kv::Store,
}

/// Reads the JSON record at `key` and its revision (0 when there is none).
async fn read_json<T: DeserializeOwned>(
    bucket: &kv::Store,
    key: &str,
) -> anyhow::Result<(Option<T>, u64)> {
    let entry = bucket
        .entry(key)
        .await
        .with_context(|| format!("cannot read {key}"))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let record = serde_json::from_slice(&entry.value)
                .with_context(|| format!("cannot decode {key}"))?;
            Ok((Some(record), entry.revision))
        }
        Some(entry) => Ok((None, entry.revision)),
        None => Ok((None, 0)),
    }
}

/// Writes `record` at `key` if the key is still at `revision` (0 = must not exist yet; deleted
/// keys have a revision of their own). False when another writer got there first.
async fn write_json<T: Serialize>(
    bucket: &kv::Store,
    key: &str,
    record: &T,
    revision: u64,
) -> anyhow::Result<bool> {
    let value = Bytes::from(serde_json::to_vec(record).context("cannot encode record")?);
    let result = bucket.update(key, value, revision).await;
    if let Err(err) = &result {
        tracing::debug!(key, revision, error = %err, "compare-and-set lost; retrying");
    }
    Ok(result.is_ok())
}

impl DispatchStore {
    /// Opens the buckets (provisioned from `deploy/nats/kv/`).
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        let dispatched = js
            .get_key_value(DISPATCHED_BUCKET)
            .await
            .with_context(|| format!("cannot open KV bucket {DISPATCHED_BUCKET} (provisioned?)"))?;
        let lanes = js
            .get_key_value(LANES_BUCKET)
            .await
            .with_context(|| format!("cannot open KV bucket {LANES_BUCKET} (provisioned?)"))?;
        let push_order = js
            .get_key_value(PUSH_ORDER_BUCKET)
            .await
            .with_context(|| format!("cannot open KV bucket {PUSH_ORDER_BUCKET} (provisioned?)"))?;
        Ok(Self {
            dispatched,
            lanes,
            push_order,
        })
    }

    /// The position of the push `facts` (delivered under `dispatch_id`, its webhook stored at
    /// stream sequence `arrival`) in GitHub's push order on `key`, recorded compare-and-set so
    /// concurrent dispatches of one key link to each other.
    pub async fn place_push(
        &self,
        key: &OrderingKey,
        dispatch_id: &str,
        facts: &PushFacts,
        arrival: u64,
    ) -> anyhow::Result<PushPosition> {
        let key = lane_key(key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, revision) = read_json::<OrderRecord>(&self.push_order, &key).await?;
            let current = current.unwrap_or_default();
            let (position, next) = crate::push_order::place(&current, dispatch_id, facts, arrival);
            if next == current || write_json(&self.push_order, &key, &next, revision).await? {
                return Ok(position);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::bail!("cannot place push {dispatch_id} on {key}: too much contention")
    }

    /// The `BuildRequested` envelope of a build already started for this dispatch.
    pub async fn dispatched(
        &self,
        dispatch_id: &str,
        architecture: Architecture,
    ) -> anyhow::Result<Option<Envelope>> {
        let key = dispatched_key(dispatch_id, architecture);
        let Some(value) = self
            .dispatched
            .get(key.as_str())
            .await
            .with_context(|| format!("cannot read {DISPATCHED_BUCKET}/{key}"))?
        else {
            return Ok(None);
        };
        let envelope = Envelope::decode(value)
            .with_context(|| format!("cannot decode {DISPATCHED_BUCKET}/{key}"))?;
        Ok(Some(envelope))
    }

    /// Records a started build; if another dispatch of the same webhook recorded one first,
    /// returns that one's envelope (the idempotency token made both starts the same build).
    pub async fn record_dispatched(
        &self,
        dispatch_id: &str,
        architecture: Architecture,
        requested: &Envelope,
    ) -> anyhow::Result<Envelope> {
        let key = dispatched_key(dispatch_id, architecture);
        let value = Bytes::from(requested.encode_to_vec());
        match self.dispatched.create(key.as_str(), value).await {
            Ok(_) => Ok(requested.clone()),
            Err(err) => match self.dispatched(dispatch_id, architecture).await? {
                Some(existing) => Ok(existing),
                None => Err(anyhow::Error::new(err)
                    .context(format!("cannot write {DISPATCHED_BUCKET}/{key}"))),
            },
        }
    }

    async fn lane(&self, key: &str) -> anyhow::Result<(Option<LaneState>, u64)> {
        read_json(&self.lanes, key)
            .await
            .with_context(|| format!("lane record in {LANES_BUCKET}"))
    }

    async fn write_lane(
        &self,
        key: &str,
        state: &LaneState,
        revision: u64,
    ) -> anyhow::Result<bool> {
        write_json(&self.lanes, key, state, revision).await
    }

    /// Records `push` and its builds on the lane of `key`, compare-and-set.
    pub async fn record_push(
        &self,
        key: &OrderingKey,
        push: &Push,
        builds: &[InflightBuild],
    ) -> anyhow::Result<LaneUpdate> {
        let key = lane_key(key);
        for _ in 0..CAS_ATTEMPTS {
            let (current, revision) = self.lane(&key).await?;
            let update = crate::lane::record_push(current.as_ref(), push, builds);
            match &update {
                LaneUpdate::Superseded { .. } => return Ok(update),
                LaneUpdate::Latest(state) => {
                    if current.as_ref() == Some(state)
                        || self.write_lane(&key, state, revision).await?
                    {
                        return Ok(update);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::bail!(
            "cannot record push {} on lane {key}: too much contention",
            push.sequence
        )
    }

    /// Removes builds that were handled from the lane's stop list, compare-and-set.
    pub async fn forget_stopped(&self, key: &OrderingKey, done: &[String]) -> anyhow::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let key = lane_key(key);
        for _ in 0..CAS_ATTEMPTS {
            let (Some(current), revision) = self.lane(&key).await? else {
                return Ok(());
            };
            let next = crate::lane::without_stopped(&current, done);
            if next == current || self.write_lane(&key, &next, revision).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::bail!("cannot update lane {key}: too much contention")
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::domain::{Branch, RepoName};

    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_distinct() {
        let valid = |k: &str| {
            !k.starts_with('.')
                && !k.ends_with('.')
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        let repo = RepoName::parse("PRX/my.app").unwrap();
        let branch = lane_key(&OrderingKey::branch(
            repo.clone(),
            Branch::new("feat/x y").unwrap(),
        ));
        assert_eq!(branch, "PRX.my=2Eapp.b.feat=2Fx=20y");
        assert!(valid(&branch));
        let pr = lane_key(&OrderingKey::pull_request(repo, 7));
        assert_eq!(pr, "PRX.my=2Eapp.pr.7");
        let d = dispatched_key("github-delivery:72d3162e-cc78", Architecture::Aarch64);
        assert!(valid(&d), "{d}");
        assert_ne!(key_token("a.b"), key_token("a=2Eb"));
        assert_eq!(key_token(""), "=");
    }
}
