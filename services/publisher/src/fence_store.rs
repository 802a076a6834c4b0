//! The fence's per-parameter records in a NATS KV bucket: [`KvFence`] performs the steps of the
//! claim / write / mark protocol ([`crate::fence_protocol::Attempt`], the machine the
//! simulation also drives) over them and the parameter store. Every change of a fence record is
//! a compare-and-set on its revision ([`prx_ci_shared::kv::Records`]), so replicas never
//! overwrite each other's view. See `docs/ordering.md`.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use prx_ci_shared::kv::{Modify, Records, key_token};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fence::{FenceRecord, Publication};
use crate::fence_protocol::{self, Attempt, CasKind, Change, Input, PutResult, Step};
use crate::metrics::FenceMetrics;
use crate::parameter_store::ParameterStore;

/// The KV bucket of fence records (`deploy/nats/kv/prx_ci_publish_fence.json`).
pub const FENCE_BUCKET: &str = "prx_ci_publish_fence";
/// The fence of shadow builds (`deploy/nats/kv/prx_ci_shadow_fence.json`): their would-be
/// writes never move the live fence, so a repository cut over starts from what was written.
pub const SHADOW_FENCE_BUCKET: &str = "prx_ci_shadow_fence";

pub use crate::fence_protocol::{FenceError, FenceOutcome, FenceSettings};

/// The fence over one KV bucket.
#[derive(Debug, Clone)]
pub struct KvFence {
    records: Records<FenceRecord>,
    settings: FenceSettings,
    metrics: FenceMetrics,
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Accumulates time spent on fence records.
struct Stopwatch(Duration);

impl Stopwatch {
    async fn time<T>(&mut self, f: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.0 += started.elapsed();
        out
    }
}

enum Cas {
    Done,
    Conflict,
}

impl KvFence {
    /// Opens the [`FENCE_BUCKET`] (provisioned from `deploy/nats/kv/`).
    pub async fn open(
        js: &jetstream::Context,
        settings: FenceSettings,
        metrics: FenceMetrics,
    ) -> anyhow::Result<Self> {
        Self::open_bucket(js, FENCE_BUCKET, settings, metrics).await
    }

    /// Opens the fence over `bucket` ([`FENCE_BUCKET`] or [`SHADOW_FENCE_BUCKET`]).
    pub async fn open_bucket(
        js: &jetstream::Context,
        bucket: &str,
        settings: FenceSettings,
        metrics: FenceMetrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            records: Records::open(js, bucket).await?,
            settings,
            metrics,
        })
    }

    pub fn metrics(&self) -> &FenceMetrics {
        &self.metrics
    }

    /// The record of `parameter` and its revision (0 = no record yet).
    pub async fn read(&self, parameter: &str) -> anyhow::Result<(FenceRecord, u64)> {
        let read = self.records.get(&key_token(parameter)).await?;
        let record = read.record.unwrap_or_else(|| FenceRecord {
            parameter: parameter.to_owned(),
            ..FenceRecord::default()
        });
        Ok((record, read.revision))
    }

    async fn cas(
        &self,
        parameter: &str,
        record: &FenceRecord,
        revision: u64,
    ) -> anyhow::Result<Cas> {
        match self
            .records
            .compare_and_set(&key_token(parameter), record, revision)
            .await?
        {
            Some(_) => Ok(Cas::Done),
            None => {
                self.metrics.conflicts.inc();
                Ok(Cas::Conflict)
            }
        }
    }

    /// Replaces the record of `parameter` with what `change` makes of it, by
    /// [`Records::modify`] (re-read and re-decided on a conflict, each one counted). `change`
    /// returning `None` leaves the record alone: `Err` carries it as read.
    async fn modify(
        &self,
        parameter: &str,
        mut change: impl FnMut(&FenceRecord) -> Option<FenceRecord>,
    ) -> anyhow::Result<Result<(), FenceRecord>> {
        let mut reads = 0_u32;
        let (written, record) = self
            .records
            .modify(&key_token(parameter), |record| {
                reads += 1;
                if reads > 1 {
                    self.metrics.conflicts.inc();
                }
                if record.parameter.is_empty() {
                    record.parameter = parameter.to_owned();
                }
                match change(record) {
                    Some(changed) => {
                        *record = changed;
                        Modify::Write(true)
                    }
                    None => Modify::Keep(false),
                }
            })
            .await?;
        Ok(if written { Ok(()) } else { Err(record) })
    }

    /// A read-only look: `Some` when the record already settles `incoming` (stale, or already
    /// written by this build), so the caller can skip its artifact check. A claim in flight
    /// settles nothing.
    pub async fn precheck(
        &self,
        parameter: &str,
        incoming: &Publication,
    ) -> Result<Option<FenceOutcome>, FenceError> {
        let (record, _) = self
            .read(parameter)
            .await
            .map_err(|source| FenceError::Kv {
                parameter: parameter.to_owned(),
                source,
            })?;
        Ok(fence_protocol::settled(&record, incoming))
    }

    /// Publishes `incoming` to `parameter` through the fence: waits out other claims, claims,
    /// re-checks, writes to `store`, marks the write. See docs/ordering.md.
    pub async fn publish(
        &self,
        parameter: &str,
        incoming: &Publication,
        store: &dyn ParameterStore,
    ) -> Result<FenceOutcome, FenceError> {
        let mut watch = Stopwatch(Duration::ZERO);
        let result = self
            .publish_timed(parameter, incoming, store, &mut watch)
            .await;
        self.metrics.overhead_seconds.observe(watch.0.as_secs_f64());
        result
    }

    async fn publish_timed(
        &self,
        parameter: &str,
        incoming: &Publication,
        store: &dyn ParameterStore,
        watch: &mut Stopwatch,
    ) -> Result<FenceOutcome, FenceError> {
        let kv_err = |source: anyhow::Error| FenceError::Kv {
            parameter: parameter.to_owned(),
            source,
        };
        let origin = Instant::now();
        let token = uuid::Uuid::new_v4().to_string();
        let mut attempt = Attempt::new(parameter, incoming.clone(), self.settings, token);
        let mut input = Input::Start;
        loop {
            let step = attempt.step(input, origin.elapsed(), &now());
            self.metrics.waits.inc_by(attempt.take_waits());
            input = match step {
                Step::Read => {
                    let (record, revision) =
                        watch.time(self.read(parameter)).await.map_err(kv_err)?;
                    Input::Record {
                        record: Box::new(record),
                        revision,
                    }
                }
                Step::Sleep(pause) => {
                    tokio::time::sleep(pause).await;
                    Input::Resumed
                }
                Step::StoreGet => {
                    let current =
                        store
                            .get(parameter)
                            .await
                            .map_err(|source| FenceError::Store {
                                parameter: parameter.to_owned(),
                                source,
                            })?;
                    Input::Stored(current.map(|p| (p.value, p.version)))
                }
                Step::Cas {
                    record,
                    revision,
                    kind,
                } => {
                    if let CasKind::Resolve { abandoned, landed } = &kind {
                        tracing::warn!(
                            parameter,
                            abandoned_sequence = abandoned.publication.position.push_sequence,
                            abandoned_build = %abandoned.publication.build_id,
                            landed,
                            "resolving an abandoned fence claim"
                        );
                    }
                    let done = matches!(
                        watch
                            .time(self.cas(parameter, &record, revision))
                            .await
                            .map_err(kv_err)?,
                        Cas::Done
                    );
                    if done && matches!(kind, CasKind::Resolve { .. }) {
                        self.metrics.takeovers.inc();
                    }
                    Input::Cas(done)
                }
                Step::Put { timeout } => Input::Put(
                    match tokio::time::timeout(timeout, store.put(parameter, &incoming.value)).await
                    {
                        Ok(Ok(version)) => PutResult::Written(version),
                        Ok(Err(source)) => PutResult::Failed(source),
                        Err(_elapsed) => PutResult::TimedOut,
                    },
                ),
                Step::Modify(change @ Change::Release { .. }) => {
                    // Best effort: if it fails, the claim expires with its lease.
                    let released = watch
                        .time(self.modify(parameter, |record| change.apply(record, &now())))
                        .await;
                    if let Err(err) = released {
                        tracing::debug!(parameter, "could not release the fence claim: {err:#}");
                    }
                    Input::Modified
                }
                Step::Modify(change @ Change::Mark { .. }) => {
                    // Mark it written (retrying over unrelated record changes).
                    let marked = watch
                        .time(self.modify(parameter, |record| change.apply(record, &now())))
                        .await
                        .map_err(kv_err)?;
                    if let Err(record) = marked {
                        self.metrics.lost_after_write.inc();
                        tracing::error!(
                            parameter,
                            push_sequence = incoming.position.push_sequence,
                            value = %incoming.value,
                            newer = ?record.written.as_ref().map(|w| w.publication.position),
                            "fence claim was taken over while writing: this write may have landed after a newer one"
                        );
                    }
                    Input::Modified
                }
                Step::Done(result) => return result,
            };
        }
    }
}
