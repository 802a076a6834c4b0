//! The ordering fence over a NATS KV bucket: the claim / write / mark protocol around the pure
//! decisions of [`crate::fence`]. Every change of a fence record is a compare-and-set on its
//! revision, so replicas never overwrite each other's view. See `docs/ordering.md`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fence::{self, Decision, FenceRecord, Publication, Stale};
use crate::keys::kv_key;
use crate::store::{ParameterStore, StoreError};

/// The KV bucket of fence records (`deploy/nats/kv/prx_ci_publish_fence.json`).
pub const FENCE_BUCKET: &str = "prx_ci_publish_fence";

/// How the fence behaves.
#[derive(Debug, Clone, Copy)]
pub struct FenceSettings {
    /// How long a claim protects a write. The owner never starts a write it cannot finish
    /// within it; others take over only after watching a claim unchanged for this long.
    pub lease: Duration,
    /// Upper bound of one store write (throttling retries included).
    pub write_timeout: Duration,
    /// How often a replica waiting on another's claim re-reads the record.
    pub poll_interval: Duration,
}

/// What happened to one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Written now (`again` false), or already written by this very build before (`again`
    /// true: a redelivery; nothing written this time).
    Applied {
        version: i64,
        again: bool,
    },
    Skipped(Stale),
}

/// Why the fence could not decide or write (all worth retrying, except `Store` with a
/// non-retryable refusal).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fence record of {parameter}: {source:#}")]
    Kv {
        parameter: String,
        source: anyhow::Error,
    },
    #[error("writing {parameter}: {source}")]
    Store {
        parameter: String,
        source: StoreError,
    },
    #[error("lost the claim on {parameter} before writing (lease ran out); nothing written")]
    ClaimLost { parameter: String },
}

/// Fence metrics.
#[derive(Debug, Clone)]
pub struct FenceMetrics {
    /// Time spent on fence records per publication (reads and compare-and-sets, excluding the
    /// store write and waits on other claims).
    pub overhead_seconds: Histogram,
    /// Waits on another replica's claim.
    pub waits: Counter,
    /// Abandoned claims resolved after their lease.
    pub takeovers: Counter,
    /// Compare-and-set conflicts (another replica changed the record in between).
    pub conflicts: Counter,
    /// Writes whose claim was gone when they were marked: the residual race happened (see
    /// docs/ordering.md). Alert on any.
    pub lost_after_write: Counter,
}

impl FenceMetrics {
    #[expect(
        clippy::new_without_default,
        reason = "histogram buckets are chosen here"
    )]
    pub fn new() -> Self {
        Self {
            overhead_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            waits: Counter::default(),
            takeovers: Counter::default(),
            conflicts: Counter::default(),
            lost_after_write: Counter::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "prx_ci_publisher_fence_overhead_seconds",
            "Time spent on fence records per publication",
            self.overhead_seconds.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_waits",
            "Waits on another replica's claim",
            self.waits.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_takeovers",
            "Abandoned claims resolved after their lease",
            self.takeovers.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_conflicts",
            "Compare-and-set conflicts on fence records",
            self.conflicts.clone(),
        );
        registry.register(
            "prx_ci_publisher_fence_lost_after_write",
            "Writes that landed after their claim was taken over (residual race; alert)",
            self.lost_after_write.clone(),
        );
    }
}

/// The fence over one KV bucket.
#[derive(Debug, Clone)]
pub struct KvFence {
    kv: kv::Store,
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
        let kv = js
            .get_key_value(FENCE_BUCKET)
            .await
            .with_context(|| format!("cannot open KV bucket {FENCE_BUCKET} (provisioned?)"))?;
        Ok(Self {
            kv,
            settings,
            metrics,
        })
    }

    pub fn metrics(&self) -> &FenceMetrics {
        &self.metrics
    }

    /// The record of `parameter` and its revision (0 = no record yet).
    pub async fn read(&self, parameter: &str) -> anyhow::Result<(FenceRecord, u64)> {
        let entry = self
            .kv
            .entry(kv_key(parameter))
            .await
            .context("cannot read fence record")?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record: FenceRecord =
                    serde_json::from_slice(&e.value).context("cannot parse fence record")?;
                Ok((record, e.revision))
            }
            Some(e) => Ok((
                FenceRecord {
                    parameter: parameter.to_owned(),
                    ..FenceRecord::default()
                },
                e.revision,
            )),
            None => Ok((
                FenceRecord {
                    parameter: parameter.to_owned(),
                    ..FenceRecord::default()
                },
                0,
            )),
        }
    }

    async fn cas(
        &self,
        parameter: &str,
        record: &FenceRecord,
        revision: u64,
    ) -> anyhow::Result<Cas> {
        let body = serde_json::to_vec(record).context("cannot encode fence record")?;
        let key = kv_key(parameter);
        let result = if revision == 0 {
            self.kv
                .create(&key, body.into())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(anyhow::Error::new(e)),
                })
        } else {
            self.kv
                .update(&key, body.into(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(anyhow::Error::new(e)),
                })
        };
        match result {
            Ok(_) => Ok(Cas::Done),
            Err(None) => {
                self.metrics.conflicts.inc();
                Ok(Cas::Conflict)
            }
            Err(Some(err)) => Err(err.context("cannot update fence record")),
        }
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
        Ok(match fence::decide(&record, incoming) {
            Decision::Skip(stale) => Some(FenceOutcome::Skipped(stale)),
            Decision::AlreadyWritten { version } => Some(FenceOutcome::Applied {
                version,
                again: true,
            }),
            Decision::Wait { .. } | Decision::Claim => None,
        })
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
        let lease_ms = u64::try_from(self.settings.lease.as_millis()).unwrap_or(u64::MAX);
        // (token, first seen): how long this replica has watched the current foreign claim.
        let mut observed: Option<(String, Instant)> = None;
        let (token, claimed_at) = loop {
            let (record, revision) = watch.time(self.read(parameter)).await.map_err(kv_err)?;
            if let Some(claim) = &record.claim {
                let lease = Duration::from_millis(claim.lease_ms);
                let since = match &observed {
                    Some((token, since)) if *token == claim.token => *since,
                    _ => {
                        self.metrics.waits.inc();
                        let since = Instant::now();
                        observed = Some((claim.token.clone(), since));
                        since
                    }
                };
                if since.elapsed() < lease {
                    tokio::time::sleep(self.settings.poll_interval).await;
                    continue;
                }
                // Abandoned: its owner can no longer be writing. Did its write land?
                let current = store
                    .get(parameter)
                    .await
                    .map_err(|source| FenceError::Store {
                        parameter: parameter.to_owned(),
                        source,
                    })?;
                let resolved = fence::resolve_abandoned(
                    &record,
                    current.as_ref().map(|p| (p.value.as_str(), p.version)),
                    &now(),
                );
                tracing::warn!(
                    parameter,
                    abandoned_sequence = claim.publication.position.push_sequence,
                    abandoned_build = %claim.publication.build_id,
                    landed = resolved.written != record.written,
                    "resolving an abandoned fence claim"
                );
                if let Cas::Done = watch
                    .time(self.cas(parameter, &resolved, revision))
                    .await
                    .map_err(kv_err)?
                {
                    self.metrics.takeovers.inc();
                }
                observed = None;
                continue;
            }
            match fence::decide(&record, incoming) {
                Decision::Skip(stale) => return Ok(FenceOutcome::Skipped(stale)),
                Decision::AlreadyWritten { version } => {
                    return Ok(FenceOutcome::Applied {
                        version,
                        again: true,
                    });
                }
                Decision::Wait { .. } => continue,
                Decision::Claim => {
                    let token = uuid::Uuid::new_v4().to_string();
                    // Taken before the claim is visible to anyone: the owner's deadline is
                    // never later than what an observer measures.
                    let claimed_at = Instant::now();
                    let claimed = fence::with_claim(&record, incoming, &token, lease_ms, &now());
                    match watch
                        .time(self.cas(parameter, &claimed, revision))
                        .await
                        .map_err(kv_err)?
                    {
                        Cas::Done => break (token, claimed_at),
                        Cas::Conflict => continue,
                    }
                }
            }
        };

        // Re-check: still ours, and time left for a whole write inside the lease.
        let (record, _) = watch.time(self.read(parameter)).await.map_err(kv_err)?;
        if record.claim.as_ref().is_none_or(|c| c.token != token) {
            return Err(FenceError::ClaimLost {
                parameter: parameter.to_owned(),
            });
        }
        let lease_left = self.settings.lease.saturating_sub(claimed_at.elapsed());
        if lease_left <= self.settings.write_timeout {
            self.release(parameter, &token, watch).await;
            return Err(FenceError::ClaimLost {
                parameter: parameter.to_owned(),
            });
        }
        let written = tokio::time::timeout(
            self.settings.write_timeout,
            store.put(parameter, &incoming.value),
        )
        .await;
        let version = match written {
            Ok(Ok(version)) => version,
            Ok(Err(source @ StoreError::NotWritten { .. })) => {
                // Definitely not written: free the parameter at once.
                self.release(parameter, &token, watch).await;
                return Err(FenceError::Store {
                    parameter: parameter.to_owned(),
                    source,
                });
            }
            Ok(Err(source @ StoreError::Unknown { .. })) => {
                // Maybe written: keep the claim; whoever resolves it after the lease checks
                // the store (the redelivery of this build, or a newer push).
                return Err(FenceError::Store {
                    parameter: parameter.to_owned(),
                    source,
                });
            }
            Err(_elapsed) => {
                return Err(FenceError::Store {
                    parameter: parameter.to_owned(),
                    source: StoreError::Unknown {
                        message: format!("no answer within {:?}", self.settings.write_timeout),
                    },
                });
            }
        };

        // Mark it written (retrying over unrelated record changes).
        loop {
            let (record, revision) = watch.time(self.read(parameter)).await.map_err(kv_err)?;
            let Some(done) = fence::after_write(&record, &token, version, &now()) else {
                self.metrics.lost_after_write.inc();
                tracing::error!(
                    parameter,
                    push_sequence = incoming.position.push_sequence,
                    value = %incoming.value,
                    newer = ?record.written.as_ref().map(|w| w.publication.position),
                    "fence claim was taken over while writing: this write may have landed after a newer one"
                );
                return Ok(FenceOutcome::Applied {
                    version,
                    again: false,
                });
            };
            match watch
                .time(self.cas(parameter, &done, revision))
                .await
                .map_err(kv_err)?
            {
                Cas::Done => {
                    return Ok(FenceOutcome::Applied {
                        version,
                        again: false,
                    });
                }
                Cas::Conflict => continue,
            }
        }
    }

    /// Drops our claim (best effort: if it fails, the claim expires with its lease).
    async fn release(&self, parameter: &str, token: &str, watch: &mut Stopwatch) {
        for _ in 0..5 {
            let Ok((record, revision)) = watch.time(self.read(parameter)).await else {
                return;
            };
            let Some(released) = fence::after_release(&record, token) else {
                return;
            };
            match watch.time(self.cas(parameter, &released, revision)).await {
                Ok(Cas::Done) | Err(_) => return,
                Ok(Cas::Conflict) => continue,
            }
        }
    }
}
