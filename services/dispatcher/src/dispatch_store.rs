//! The dispatcher's KV buckets: intents to start, started builds, in-flight builds, push order.
//!
//! Before a build is started its intent is created (compare-and-set) per (webhook,
//! architecture), and the started build is recorded under the same id, so a redelivery at any
//! later time re-announces the build instead of starting another, and one that finds an intent
//! without a record looks for the build the crashed attempt started; the in-flight builds of each ordering
//! key (see [`crate::inflight`]) and its push order (see [`crate::push_order`]) are JSON
//! [`Records`] changed with their one compare-and-set [`Records::modify`].

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prost::Message as _;
use prx_ci_proto::v1::{Envelope, envelope::Payload};
use prx_ci_shared::domain::push_position::PushPosition;
use prx_ci_shared::domain::{Architecture, Lane, OrderingKey};
use prx_ci_shared::kv::{Modify, Records, key_token};

use crate::inflight::{InflightBuild, InflightBuilds, InflightUpdate, Push};
use crate::push_order::{OrderRecord, PushFacts};

/// Bucket of started builds: key `<dispatch id>.<architecture>`, value the `BuildRequested`
/// envelope announced for it (protobuf).
pub const DISPATCHED_BUCKET: &str = "prx_ci_dispatched";
/// The intent to start a build, written before the backend is asked (`<dispatch id>.<architecture>
/// .intent` in [`DISPATCHED_BUCKET`], JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartIntent {
    /// The build request id (the backend's idempotency key and `PRX_CI_REQUEST_ID`).
    pub request_id: String,
    /// When the intent was first written, in Unix seconds: the backend's builds started before
    /// it cannot be this request's.
    pub at_unix: i64,
    /// What the attempt asked the backend to run, so an adopted build is announced as it was
    /// started, not as a plan made again later (absent in intents of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended: Option<IntendedRequest>,
}

/// The part of a start request that describes what the build runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntendedRequest {
    pub buildspec: String,
    pub environment: std::collections::BTreeMap<String, String>,
}

/// What recording an intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// No earlier attempt: this one wrote the intent.
    First,
    /// An earlier attempt wrote this intent (and may have started the build before it stopped).
    Earlier(StartIntent),
}

/// Bucket of in-flight build records: key `<owner>.<repo>.<b|pr>.<branch|number>`, value JSON.
/// (The bucket keeps its historical name.)
pub const INFLIGHT_BUCKET: &str = "prx_ci_dispatch_lanes";
/// Bucket of push-order records (see [`crate::push_order`]): same keys as the in-flight
/// records, value JSON.
pub const PUSH_ORDER_BUCKET: &str = "prx_ci_push_order";

/// The key of a started build.
pub fn dispatched_key(dispatch_id: &str, architecture: Architecture) -> String {
    format!("{}.{}", key_token(dispatch_id), architecture.as_str())
}

/// Where a build start is recorded in [`DISPATCHED_BUCKET`]: the build a webhook asked for
/// ([`dispatched_key`]) or a re-run of a build lost to the system (`rerun.<request id>`), with
/// its intent beside it (`<key>.intent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartKey(String);

impl StartKey {
    /// The build of a webhook (`dispatch_id`) for `architecture`.
    pub fn webhook(dispatch_id: &str, architecture: Architecture) -> Self {
        Self(dispatched_key(dispatch_id, architecture))
    }

    /// The re-run whose request id is `request_id`.
    pub fn rerun(request_id: &str) -> Self {
        Self(format!("rerun.{}", key_token(request_id)))
    }

    /// The key of the started build's `BuildRequested` envelope.
    pub fn record(&self) -> &str {
        &self.0
    }

    /// The key of the intent to start it.
    pub fn intent(&self) -> String {
        format!("{}.intent", self.0)
    }
}

/// The key of the pointer from a build request id to its [`StartKey::record`] (so a build's
/// request can be found from its `build_request_id`, e.g. to re-run it).
pub fn request_key(request_id: &str) -> String {
    format!("request.{}", key_token(request_id))
}

/// The key of the commit index of `repository` (`owner/repo`, compared without case, as GitHub
/// does) at `commit`: `commit.<repository>.<sha>` in [`DISPATCHED_BUCKET`], JSON
/// [`CommitBuilds`].
pub fn commit_key(repository: &str, commit: &str) -> String {
    format!(
        "commit.{}.{}",
        key_token(&repository.to_ascii_lowercase()),
        key_token(&commit.to_ascii_lowercase())
    )
}

/// The commit index keeps at most this many builds per commit (the newest pushes).
pub const COMMIT_INDEX_KEEP: usize = 32;

/// The builds a push or pull request of one commit started (the commit index, written when
/// their `BuildRequested` is recorded), so a re-run requested on GitHub finds the dispatcher's
/// own record of the commit's builds (docs/reruns.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitBuilds {
    pub builds: Vec<IndexedBuild>,
}

/// One build of the commit index: its request id (whose [`request_key`] pointer leads to the
/// recorded `BuildRequested`) and its push sequence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexedBuild {
    pub request_id: String,
    pub push_sequence: u64,
}

impl CommitBuilds {
    /// Adds `build` (false: it was listed already, nothing changed), keeping the
    /// [`COMMIT_INDEX_KEEP`] newest pushes. Pure.
    pub fn add(&mut self, build: IndexedBuild) -> bool {
        if self.builds.iter().any(|b| b.request_id == build.request_id) {
            return false;
        }
        self.builds.push(build);
        self.builds.sort_by(|a, b| {
            (a.push_sequence, &a.request_id).cmp(&(b.push_sequence, &b.request_id))
        });
        if self.builds.len() > COMMIT_INDEX_KEEP {
            let excess = self.builds.len() - COMMIT_INDEX_KEEP;
            self.builds.drain(..excess);
        }
        true
    }
}

/// The key of an ordering key's records (in-flight builds, push order).
pub fn record_key(key: &OrderingKey) -> String {
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
    /// Protobuf envelopes, not JSON records: the raw bucket.
    dispatched: kv::Store,
    /// The intents, JSON, in the same bucket.
    intents: Records<StartIntent>,
    /// The commit index, JSON, in the same bucket.
    commits: Records<CommitBuilds>,
    /// `None` until the first push of the ordering key is recorded.
    inflight: Records<Option<InflightBuilds>>,
    push_order: Records<OrderRecord>,
}

impl DispatchStore {
    /// Opens the buckets (provisioned from `deploy/nats/kv/`).
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        let dispatched = js
            .get_key_value(DISPATCHED_BUCKET)
            .await
            .with_context(|| format!("cannot open KV bucket {DISPATCHED_BUCKET} (provisioned?)"))?;
        Ok(Self {
            intents: Records::new(dispatched.clone()),
            commits: Records::new(dispatched.clone()),
            dispatched,
            inflight: Records::open(js, INFLIGHT_BUCKET).await?,
            push_order: Records::open(js, PUSH_ORDER_BUCKET).await?,
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
        let (position, _) = self
            .push_order
            .modify(&record_key(key), |record| {
                let (position, next) =
                    crate::push_order::place(record, dispatch_id, facts, arrival);
                if next == *record {
                    Modify::Keep(position)
                } else {
                    *record = next;
                    Modify::Write(position)
                }
            })
            .await
            .with_context(|| format!("cannot place push {dispatch_id}"))?;
        Ok(position)
    }

    /// The `BuildRequested` envelope of a build already started under `key`.
    pub async fn dispatched(&self, key: &StartKey) -> anyhow::Result<Option<Envelope>> {
        self.envelope(key.record()).await
    }

    async fn envelope(&self, key: &str) -> anyhow::Result<Option<Envelope>> {
        let Some(value) = self
            .dispatched
            .get(key)
            .await
            .with_context(|| format!("cannot read {DISPATCHED_BUCKET}/{key}"))?
        else {
            return Ok(None);
        };
        let envelope = Envelope::decode(value)
            .with_context(|| format!("cannot decode {DISPATCHED_BUCKET}/{key}"))?;
        Ok(Some(envelope))
    }

    /// The `BuildRequested` envelope recorded for the build request `request_id` (through its
    /// [`request_key`] pointer; `None` for builds recorded before pointers were written).
    pub async fn requested(&self, request_id: &str) -> anyhow::Result<Option<Envelope>> {
        let pointer = request_key(request_id);
        let Some(value) = self
            .dispatched
            .get(pointer.as_str())
            .await
            .with_context(|| format!("cannot read {DISPATCHED_BUCKET}/{pointer}"))?
        else {
            return Ok(None);
        };
        let key = String::from_utf8(value.to_vec())
            .with_context(|| format!("{DISPATCHED_BUCKET}/{pointer} is not a key"))?;
        self.envelope(&key).await
    }

    /// Lists the build `requested` announces in its commit's index (compare-and-set; nothing
    /// is written when it is listed already, so redeliveries change nothing).
    pub async fn index_commit(&self, requested: &Envelope) -> anyhow::Result<()> {
        let Some(Payload::BuildRequested(request)) = &requested.payload else {
            return Ok(());
        };
        let Some(build) = &request.build else {
            return Ok(());
        };
        if build.build_request_id.is_empty() {
            return Ok(());
        }
        let key = commit_key(&build.repository, &build.commit);
        let indexed = IndexedBuild {
            request_id: build.build_request_id.clone(),
            push_sequence: requested.push_sequence,
        };
        self.commits
            .modify(&key, |record| {
                if record.add(indexed.clone()) {
                    Modify::Write(())
                } else {
                    Modify::Keep(())
                }
            })
            .await
            .with_context(|| format!("cannot index {DISPATCHED_BUCKET}/{key}"))?;
        Ok(())
    }

    /// The `BuildRequested` envelopes recorded for the builds of `repository` at `commit` (its
    /// commit index), oldest push first.
    pub async fn commit_builds(
        &self,
        repository: &str,
        commit: &str,
    ) -> anyhow::Result<Vec<Envelope>> {
        let key = commit_key(repository, commit);
        let index = self
            .commits
            .get(&key)
            .await
            .with_context(|| format!("cannot read {DISPATCHED_BUCKET}/{key}"))?
            .record
            .unwrap_or_default();
        let mut out = Vec::with_capacity(index.builds.len());
        for build in &index.builds {
            if let Some(envelope) = self.requested(&build.request_id).await? {
                out.push(envelope);
            }
        }
        Ok(out)
    }

    /// Records `intent` under `key` (compare-and-set), or returns the intent an earlier
    /// attempt recorded.
    pub async fn record_intent(
        &self,
        key: &StartKey,
        intent: &StartIntent,
    ) -> anyhow::Result<Intent> {
        let key = key.intent();
        if self
            .intents
            .create(&key, intent)
            .await
            .with_context(|| format!("cannot record the intent to start {}", intent.request_id))?
        {
            return Ok(Intent::First);
        }
        let earlier = self
            .intents
            .get(&key)
            .await
            .with_context(|| format!("cannot read {DISPATCHED_BUCKET}/{key}"))?
            .record
            .with_context(|| format!("{DISPATCHED_BUCKET}/{key} exists but holds no intent"))?;
        Ok(Intent::Earlier(earlier))
    }

    /// Records a started build under `key`, after the pointer to it from its request id (written
    /// first, so a crash between the two never leaves a record without its pointer: the key and
    /// the request id are both fixed by the request); if another attempt recorded one first,
    /// returns that one's envelope (both starts were the same build).
    pub async fn record_dispatched(
        &self,
        key: &StartKey,
        requested: &Envelope,
    ) -> anyhow::Result<Envelope> {
        if let Some(Payload::BuildRequested(request)) = &requested.payload
            && let Some(build) = &request.build
            && !build.build_request_id.is_empty()
        {
            let pointer = request_key(&build.build_request_id);
            self.dispatched
                .put(pointer.as_str(), Bytes::from(key.record().to_owned()))
                .await
                .with_context(|| format!("cannot write {DISPATCHED_BUCKET}/{pointer}"))?;
        }
        let value = Bytes::from(requested.encode_to_vec());
        match self.dispatched.create(key.record(), value).await {
            Ok(_) => Ok(requested.clone()),
            Err(err) => match self.dispatched(key).await? {
                Some(existing) => Ok(existing),
                None => Err(anyhow::Error::new(err)
                    .context(format!("cannot write {DISPATCHED_BUCKET}/{}", key.record()))),
            },
        }
    }

    /// Records `push` and its builds in the in-flight builds of `key`, compare-and-set.
    pub async fn record_push(
        &self,
        key: &OrderingKey,
        push: &Push,
        builds: &[InflightBuild],
    ) -> anyhow::Result<InflightUpdate> {
        let (update, _) = self
            .inflight
            .modify(&record_key(key), |current| {
                let update = crate::inflight::record_push(current.as_ref(), push, builds);
                match &update {
                    InflightUpdate::Latest(next) if current.as_ref() != Some(next) => {
                        *current = Some(next.clone());
                        Modify::Write(update)
                    }
                    InflightUpdate::Latest(_) | InflightUpdate::Superseded { .. } => {
                        Modify::Keep(update)
                    }
                }
            })
            .await
            .with_context(|| format!("cannot record push {}", push.sequence))?;
        Ok(update)
    }

    /// Removes builds that were handled from the record's stop list, compare-and-set.
    pub async fn forget_stopped(&self, key: &OrderingKey, done: &[String]) -> anyhow::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        self.inflight
            .modify(&record_key(key), |current| {
                let Some(record) = current.as_ref() else {
                    return Modify::Keep(());
                };
                let next = crate::inflight::without_stopped(record, done);
                if next == *record {
                    Modify::Keep(())
                } else {
                    *current = Some(next);
                    Modify::Write(())
                }
            })
            .await
            .context("cannot forget stopped builds")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::domain::{Branch, RepoName};

    use super::*;

    #[test]
    fn the_commit_index_lists_each_build_once_and_keeps_the_newest_pushes() {
        let build = |id: &str, push_sequence| IndexedBuild {
            request_id: id.into(),
            push_sequence,
        };
        let mut index = CommitBuilds::default();
        assert!(index.add(build("b", 20)));
        assert!(index.add(build("a", 10)));
        assert!(!index.add(build("a", 10)), "a redelivery changes nothing");
        assert_eq!(index.builds, [build("a", 10), build("b", 20)]);
        for n in 0..COMMIT_INDEX_KEEP as u64 {
            index.add(build(&format!("n{n}"), 100 + n));
        }
        assert_eq!(index.builds.len(), COMMIT_INDEX_KEEP);
        assert_eq!(
            index.builds[0],
            build("n0", 100),
            "the oldest pushes dropped"
        );
    }

    #[test]
    fn keys_are_valid_kv_keys_distinct_and_unchanged() {
        let valid = |k: &str| {
            !k.starts_with('.')
                && !k.ends_with('.')
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        let repo = RepoName::parse("PRX/my.app").unwrap();
        let branch = record_key(&OrderingKey::branch(
            repo.clone(),
            Branch::new("feat/x y").unwrap(),
        ));
        assert_eq!(branch, "PRX.my=2Eapp.b.feat=2Fx=20y");
        assert!(valid(&branch));
        let pr = record_key(&OrderingKey::pull_request(repo, 7));
        assert_eq!(pr, "PRX.my=2Eapp.pr.7");
        let d = dispatched_key("github-delivery:72d3162e-cc78", Architecture::Aarch64);
        assert_eq!(d, "github-delivery=3A72d3162e-cc78.aarch64");
        assert!(valid(&d), "{d}");
        let webhook = StartKey::webhook("github-delivery:72d3162e-cc78", Architecture::Aarch64);
        assert_eq!(webhook.record(), d);
        let i = webhook.intent();
        assert_eq!(i, "github-delivery=3A72d3162e-cc78.aarch64.intent");
        assert!(valid(&i), "{i}");
        let rerun = StartKey::rerun("0b6f1a2c-5d9e-5f00-8c1d-3e2f4a5b6c7d");
        assert_eq!(rerun.record(), "rerun.0b6f1a2c-5d9e-5f00-8c1d-3e2f4a5b6c7d");
        assert!(valid(rerun.record()) && valid(&rerun.intent()));
        let pointer = request_key("0b6f1a2c-5d9e-5f00-8c1d-3e2f4a5b6c7d");
        assert_eq!(pointer, "request.0b6f1a2c-5d9e-5f00-8c1d-3e2f4a5b6c7d");
        assert!(valid(&pointer));
        let commit = commit_key("PRX/My.App", &"A".repeat(40));
        assert_eq!(commit, format!("commit.prx=2Fmy=2Eapp.{}", "a".repeat(40)));
        assert!(valid(&commit), "{commit}");
        assert_eq!(commit, commit_key("prx/my.app", &"a".repeat(40)));
        assert_ne!(key_token("a.b"), key_token("a=2Eb"));
        assert_eq!(key_token(""), "=");
    }
}
