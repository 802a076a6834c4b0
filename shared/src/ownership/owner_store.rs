//! Claimed parameter owners over a NATS KV bucket, around the pure rule of
//! [`crate::ownership`]: a claim is a create-only write (two first publishes cannot both claim
//! a name), a transfer a compare-and-set on the record's revision.

use async_nats::jetstream;

use crate::kv::{Records, decode_key_token, key_token};
use crate::ownership::{
    self, ACTION_CLAIM, ConfigOwners, Owner, OwnerRecord, Transfer, TransferRefused, Verdict,
};

/// The KV bucket of claimed owners (`deploy/nats/kv/prx_ci_parameter_owners.json`).
pub const OWNERS_BUCKET: &str = "prx_ci_parameter_owners";

/// Compare-and-set attempts of one transfer before it gives up (each lost attempt means
/// another writer changed the record in between; a retry re-reads and decides again).
const TRANSFER_ATTEMPTS: usize = 5;

/// What the publisher may do with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The publishing repository owns it. `claimed` is the claim record when this very build
    /// made it (now, or on an earlier delivery): its `ParameterOwnerChanged` is (re)emitted.
    Allowed { claimed: Option<OwnerRecord> },
    /// Another repository owns it; the detail names the owner.
    NotOwner { owner: String, detail: String },
}

/// Why a transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Refused(#[from] TransferRefused),
    #[error("the owner record of {0} kept changing; try again")]
    Contended(String),
    #[error("owner record: {0:#}")]
    Kv(#[from] anyhow::Error),
}

/// The owners bucket: one [`OwnerRecord`] per claimed name, keyed by the name's
/// [`key_token`].
#[derive(Debug, Clone)]
pub struct OwnerStore {
    records: Records<OwnerRecord>,
}

impl OwnerStore {
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<Self> {
        Ok(Self {
            records: Records::open(js, OWNERS_BUCKET).await?,
        })
    }

    /// The claimed owner of `parameter` and the record's revision (`None`: unclaimed).
    pub async fn get(&self, parameter: &str) -> anyhow::Result<Option<(OwnerRecord, u64)>> {
        let read = self.records.get(&key_token(parameter)).await?;
        Ok(read.record.map(|record| (record, read.revision)))
    }

    /// Writes `record` only if nobody owns its name. `false`: another writer got there first.
    pub async fn create(&self, record: &OwnerRecord) -> anyhow::Result<bool> {
        Ok(self
            .records
            .create(&key_token(&record.parameter), record)
            .await?)
    }

    /// Replaces the record at `revision`. `false`: it changed since it was read.
    async fn replace(&self, record: &OwnerRecord, revision: u64) -> anyhow::Result<bool> {
        let written = self
            .records
            .compare_and_set(&key_token(&record.parameter), record, revision)
            .await?;
        Ok(written.is_some())
    }

    /// Every claimed owner of a name starting with `prefix`, sorted by name.
    pub async fn all(&self, prefix: &str) -> anyhow::Result<Vec<OwnerRecord>> {
        let keys = self.records.keys().await?;
        let mut out = Vec::new();
        for key in keys {
            let Some(name) = decode_key_token(&key).filter(|n| n.starts_with(prefix)) else {
                continue;
            };
            if let Some((record, _)) = self.get(&name).await? {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.parameter.cmp(&b.parameter));
        Ok(out)
    }

    /// May `repository` publish `parameter`? Config owners decide without a read; a name
    /// nobody owns is claimed for `repository` (by build `build_id` of `commit`, at `now`).
    pub async fn check(
        &self,
        config: &ConfigOwners,
        parameter: &str,
        repository: &str,
        build_id: &str,
        commit: &str,
        now: &str,
    ) -> anyhow::Result<Checked> {
        // Two rounds suffice: a lost create means a record exists now, and records are never
        // deleted by the system, so the second read finds it.
        for _ in 0..2 {
            let current = if config.owner_of(parameter).is_some() {
                None
            } else {
                self.get(parameter).await?
            };
            let claimed = current.as_ref().map(|(r, _)| r);
            match ownership::decide(config, claimed, parameter, repository) {
                Verdict::Allowed(Owner::Claimed(record))
                    if record.action == ACTION_CLAIM && record.build_id == build_id =>
                {
                    return Ok(Checked::Allowed {
                        claimed: Some(record.clone()),
                    });
                }
                Verdict::Allowed(_) => return Ok(Checked::Allowed { claimed: None }),
                Verdict::NotOwner(owner) => {
                    return Ok(Checked::NotOwner {
                        owner: owner
                            .as_ref()
                            .map(|o| o.repository().to_owned())
                            .unwrap_or_default(),
                        detail: ownership::not_owner_detail(parameter, owner.as_ref(), repository),
                    });
                }
                Verdict::Claim => {
                    let record = OwnerRecord {
                        parameter: parameter.to_owned(),
                        repository: repository.to_owned(),
                        action: ACTION_CLAIM.to_owned(),
                        build_id: build_id.to_owned(),
                        commit: commit.to_owned(),
                        at: now.to_owned(),
                        ..OwnerRecord::default()
                    };
                    if self.create(&record).await? {
                        return Ok(Checked::Allowed {
                            claimed: Some(record),
                        });
                    }
                }
            }
        }
        anyhow::bail!("the owner record of {parameter} changed twice while claiming it")
    }

    /// Moves `request.parameter` to `request.repository` (compare-and-set; refused for
    /// config-owned names). Returns the new record (its `previous` names the owner before).
    pub async fn transfer(
        &self,
        config: &ConfigOwners,
        parameter_prefix: &str,
        request: &Transfer<'_>,
        now: &str,
    ) -> Result<OwnerRecord, TransferError> {
        for _ in 0..TRANSFER_ATTEMPTS {
            let current = self.get(request.parameter).await?;
            let record = ownership::transfer(
                config,
                parameter_prefix,
                current.as_ref().map(|(r, _)| r),
                request,
                now,
            )?;
            let written = match current {
                Some((_, revision)) => self.replace(&record, revision).await?,
                None => self.create(&record).await?,
            };
            if written {
                return Ok(record);
            }
        }
        Err(TransferError::Contended(request.parameter.to_owned()))
    }
}
