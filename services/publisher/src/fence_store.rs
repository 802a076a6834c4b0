//! The fence's per-parameter records in a NATS KV bucket, and the claim / write / mark protocol
//! over them around the pure decisions of [`crate::fence`]. Every change of a fence record is a
//! compare-and-set on its revision ([`prx_ci_shared::kv::Records`]), so replicas never
//! overwrite each other's view. See `docs/ordering.md`.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use prx_ci_shared::kv::{Modify, Records, key_token};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fence::{self, Decision, FenceRecord, Publication, Stale};
use crate::metrics::FenceMetrics;
use crate::parameter_store::{ParameterStore, StoreError};

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
        Ok(Self {
            records: Records::open(js, FENCE_BUCKET).await?,
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
        let marked = watch
            .time(self.modify(parameter, |record| {
                fence::after_write(record, &token, version, &now())
            }))
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
        Ok(FenceOutcome::Applied {
            version,
            again: false,
        })
    }

    /// Drops our claim (best effort: if it fails, the claim expires with its lease).
    async fn release(&self, parameter: &str, token: &str, watch: &mut Stopwatch) {
        let released = watch
            .time(self.modify(parameter, |record| fence::after_release(record, token)))
            .await;
        if let Err(err) = released {
            tracing::debug!(parameter, "could not release the fence claim: {err:#}");
        }
    }
}
