//! The ordering fence's decisions, per parameter. Pure: no I/O, no clocks (the caller says
//! whether a claim has been observed long enough to be abandoned).
//!
//! A publication's [`Position`] is `(push_sequence, arch_rank)`: push order first, and within
//! one push the primary architecture above the others. The fence record of a parameter holds
//! the position last *written* and at most one *claim* (a replica that decided to write and
//! may be writing right now). The invariant: a parameter's written positions only ever go up.
//! See `docs/ordering.md` for the protocol around these decisions.

use prx_ci_proto::v1::PublishSkipReason;
use prx_ci_shared::domain::push_position::display_wire;
use prx_ci_shared::domain::short_sha;
use serde::{Deserialize, Serialize};

/// Where a publication stands in the order of one parameter's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The push sequence (JetStream sequence of the webhook that started the chain).
    pub push_sequence: u64,
    /// 1 for the primary architecture, 0 for any other.
    pub arch_rank: u8,
}

impl Position {
    pub fn new(push_sequence: u64, primary: bool) -> Self {
        Self {
            push_sequence,
            arch_rank: u8::from(primary),
        }
    }
}

/// What one build wants to write to one parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub position: Position,
    pub value: String,
    pub commit: String,
    /// The backend's build id (identifies "this build" across redeliveries).
    pub build_id: String,
    /// `owner/repo@branch` or `owner/repo#42` (for people).
    pub ordering_key: String,
    /// `x86_64` / `aarch64` / "" (for people).
    #[serde(default)]
    pub architecture: String,
}

/// A value that was written (or, for a resolved abandoned claim, may have been).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    #[serde(flatten)]
    pub publication: Publication,
    /// The store's version after the write (SSM version, KV revision); 0 when unknown.
    pub version: i64,
    /// RFC 3339, for people.
    pub at: String,
}

/// A replica's declared intent to write, protected by a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(flatten)]
    pub publication: Publication,
    /// Unique per attempt: a claim is "mine" only if the token is.
    pub token: String,
    /// RFC 3339, for people (expiry is judged on the observer's monotonic clock, not this).
    pub at: String,
    /// The lease the owner promised to finish within (ms).
    pub lease_ms: u64,
}

/// Writes remembered per parameter besides the latest, so a build whose write landed and was
/// then superseded before it heard back (a lost answer, a crash) still learns that it wrote.
pub const RECENT_WRITES: usize = 8;

/// What the fence remembers of a past write (kept small: every fence operation carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentWrite {
    pub position: Position,
    pub build_id: String,
    pub value: String,
    pub version: i64,
}

/// The per-parameter fence record (JSON in the fence KV bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    pub parameter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Written>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// The last [`RECENT_WRITES`] writes, oldest first (the latest is also `written`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<RecentWrite>,
}

impl FenceRecord {
    /// Sets the latest write and remembers it.
    fn record_write(&mut self, written: Written) {
        self.recent.push(RecentWrite {
            position: written.publication.position,
            build_id: written.publication.build_id.clone(),
            value: written.publication.value.clone(),
            version: written.version,
        });
        if self.recent.len() > RECENT_WRITES {
            let excess = self.recent.len() - RECENT_WRITES;
            self.recent.drain(..excess);
        }
        self.written = Some(written);
    }
}

/// Why a publication is not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// A newer push wrote (or may have written) the parameter.
    Superseded { by_sequence: u64, by_commit: String },
    /// The primary architecture of the same push wrote it.
    NotPrimary { by_commit: String },
    /// The same push and architecture already wrote it, from another build.
    AlreadyPublished { by_build: String },
}

/// How a [`Stale`] publication is reported: the skip reason, the detail people read, and the
/// publication that won (`superseded_by_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleSkip {
    pub reason: PublishSkipReason,
    pub detail: String,
    pub superseded_by_sequence: u64,
    pub superseded_by_commit: String,
}

impl Stale {
    /// The report of a publication of `parameter` from push `this_push` that the fence
    /// refused (`primary` names the primary architecture).
    pub fn skip(self, parameter: &str, this_push: u64, primary: &str) -> StaleSkip {
        match self {
            Self::Superseded {
                by_sequence,
                by_commit,
            } => StaleSkip {
                reason: PublishSkipReason::Superseded,
                detail: format!(
                    "push {} ({}) already published {parameter}; this build is from push {}",
                    display_wire(by_sequence),
                    short_sha(&by_commit),
                    display_wire(this_push)
                ),
                superseded_by_sequence: by_sequence,
                superseded_by_commit: by_commit,
            },
            Self::NotPrimary { by_commit } => StaleSkip {
                reason: PublishSkipReason::NotPrimaryArchitecture,
                detail: format!(
                    "the {primary} build of the same push ({}) published {parameter}",
                    short_sha(&by_commit)
                ),
                superseded_by_sequence: this_push,
                superseded_by_commit: by_commit,
            },
            Self::AlreadyPublished { by_build } => StaleSkip {
                reason: PublishSkipReason::AlreadyPublished,
                detail: format!(
                    "build {by_build} of the same push and architecture already wrote {parameter}"
                ),
                superseded_by_sequence: 0,
                superseded_by_commit: String::new(),
            },
        }
    }
}

/// What to do with a publication, given the record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Do not write.
    Skip(Stale),
    /// This very build already wrote it (a redelivery after the write): report it again, do
    /// not write again.
    AlreadyWritten { version: i64 },
    /// Another replica holds a live claim: wait until it resolves or its lease runs out.
    Wait { token: String },
    /// Claim the parameter (compare-and-set on the record's revision), then write.
    Claim,
}

/// Decides for `incoming` against `record`. `claim_abandoned` is true when the caller has
/// watched the record's current claim stay unchanged for a full lease.
///
/// Abandoned claims must be resolved first ([`resolve_abandoned`]); a record passed here with a
/// claim that is not abandoned yields [`Decision::Wait`], whoever the claim belongs to (even an
/// older push: an older push's write in flight must land before a newer one starts).
pub fn decide(record: &FenceRecord, incoming: &Publication) -> Decision {
    if let Some(claim) = &record.claim {
        return Decision::Wait {
            token: claim.token.clone(),
        };
    }
    let Some(written) = &record.written else {
        return Decision::Claim;
    };
    // This very build's write landed already (maybe superseded since): report it, never
    // write it again.
    if let Some(mine) = record.recent.iter().rev().find(|w| {
        w.position == incoming.position
            && w.build_id == incoming.build_id
            && w.value == incoming.value
    }) {
        return Decision::AlreadyWritten {
            version: mine.version,
        };
    }
    let current = &written.publication;
    match incoming.position.cmp(&current.position) {
        std::cmp::Ordering::Greater => Decision::Claim,
        std::cmp::Ordering::Equal => {
            if current.build_id == incoming.build_id && current.value == incoming.value {
                Decision::AlreadyWritten {
                    version: written.version,
                }
            } else {
                Decision::Skip(Stale::AlreadyPublished {
                    by_build: current.build_id.clone(),
                })
            }
        }
        std::cmp::Ordering::Less => {
            if current.position.push_sequence == incoming.position.push_sequence {
                Decision::Skip(Stale::NotPrimary {
                    by_commit: current.commit.clone(),
                })
            } else {
                Decision::Skip(Stale::Superseded {
                    by_sequence: current.position.push_sequence,
                    by_commit: current.commit.clone(),
                })
            }
        }
    }
}

/// Turns an abandoned claim into what we know: if the store holds the claimed value now
/// (`store_value`), the claim's write may have landed, so it counts as written (conservative:
/// nothing older may follow it); otherwise it never landed and is dropped. Either way, the
/// owner's lease is over, so its write can no longer land later (see docs/ordering.md for the
/// one residual exception).
pub fn resolve_abandoned(
    record: &FenceRecord,
    store_value: Option<(&str, i64)>,
    now_rfc3339: &str,
) -> FenceRecord {
    let mut resolved = record.clone();
    let Some(claim) = resolved.claim.take() else {
        return resolved;
    };
    let landed = matches!(store_value, Some((value, _)) if value == claim.publication.value);
    let newer_than_written = resolved
        .written
        .as_ref()
        .is_none_or(|w| claim.publication.position > w.publication.position);
    if landed && newer_than_written {
        resolved.record_write(Written {
            publication: claim.publication,
            version: store_value.map_or(0, |(_, v)| v),
            at: now_rfc3339.to_owned(),
        });
    }
    resolved
}

/// The record after `incoming` claimed it.
pub fn with_claim(
    record: &FenceRecord,
    incoming: &Publication,
    token: &str,
    lease_ms: u64,
    now: &str,
) -> FenceRecord {
    FenceRecord {
        claim: Some(Claim {
            publication: incoming.clone(),
            token: token.to_owned(),
            at: now.to_owned(),
            lease_ms,
        }),
        ..record.clone()
    }
}

/// The record after the claim with `token` wrote, or `None` if that claim is no longer there
/// (lost: the lease ran out and another replica resolved it).
pub fn after_write(
    record: &FenceRecord,
    token: &str,
    version: i64,
    now: &str,
) -> Option<FenceRecord> {
    let claim = record.claim.as_ref().filter(|c| c.token == token)?;
    let mut done = FenceRecord {
        claim: None,
        ..record.clone()
    };
    done.record_write(Written {
        publication: claim.publication.clone(),
        version,
        at: now.to_owned(),
    });
    Some(done)
}

/// The record after the claim with `token` gave up without writing, or `None` if it is gone.
pub fn after_release(record: &FenceRecord, token: &str) -> Option<FenceRecord> {
    record.claim.as_ref().filter(|c| c.token == token)?;
    Some(FenceRecord {
        claim: None,
        ..record.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_publications_are_reported_with_the_publication_that_won() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let newer = Stale::Superseded {
            by_sequence: 9,
            by_commit: sha.into(),
        }
        .skip("/p/tag", 7, "x86_64");
        assert_eq!(newer.reason, PublishSkipReason::Superseded);
        assert_eq!(
            newer.detail,
            "push #9 (0123456) already published /p/tag; this build is from push #7"
        );
        assert_eq!(
            (
                newer.superseded_by_sequence,
                newer.superseded_by_commit.as_str()
            ),
            (9, sha)
        );

        let primary = Stale::NotPrimary {
            by_commit: sha.into(),
        }
        .skip("/p/tag", 7, "x86_64");
        assert_eq!(primary.reason, PublishSkipReason::NotPrimaryArchitecture);
        assert_eq!(
            primary.detail,
            "the x86_64 build of the same push (0123456) published /p/tag"
        );
        assert_eq!(primary.superseded_by_sequence, 7, "the same push won");

        let again = Stale::AlreadyPublished {
            by_build: "app:1".into(),
        }
        .skip("/p/tag", 7, "x86_64");
        assert_eq!(again.reason, PublishSkipReason::AlreadyPublished);
        assert_eq!(
            again.detail,
            "build app:1 of the same push and architecture already wrote /p/tag"
        );
        assert_eq!(
            (
                again.superseded_by_sequence,
                again.superseded_by_commit.as_str()
            ),
            (0, "")
        );
    }

    fn publication(seq: u64, primary: bool, build: &str) -> Publication {
        Publication {
            position: Position::new(seq, primary),
            value: format!("v{seq}-{}", if primary { "x86_64" } else { "aarch64" }),
            commit: format!("c{seq}"),
            build_id: build.to_owned(),
            ordering_key: "PRX/app@main".into(),
            architecture: String::new(),
        }
    }

    fn written(p: &Publication) -> FenceRecord {
        let mut record = FenceRecord {
            parameter: "/p".into(),
            ..FenceRecord::default()
        };
        record.record_write(Written {
            publication: p.clone(),
            version: 3,
            at: "t".into(),
        });
        record
    }

    #[test]
    fn empty_record_is_claimed() {
        assert_eq!(
            decide(&FenceRecord::default(), &publication(1, true, "b")),
            Decision::Claim
        );
    }

    #[test]
    fn newer_pushes_claim_older_are_superseded() {
        let record = written(&publication(5, true, "b5"));
        assert_eq!(
            decide(&record, &publication(6, false, "b6")),
            Decision::Claim
        );
        assert_eq!(
            decide(&record, &publication(4, true, "b4")),
            Decision::Skip(Stale::Superseded {
                by_sequence: 5,
                by_commit: "c5".into()
            })
        );
    }

    #[test]
    fn primary_architecture_supersedes_within_a_push_but_not_vice_versa() {
        let secondary = publication(5, false, "arm");
        let primary = publication(5, true, "x86");
        assert_eq!(decide(&written(&secondary), &primary), Decision::Claim);
        assert_eq!(
            decide(&written(&primary), &secondary),
            Decision::Skip(Stale::NotPrimary {
                by_commit: "c5".into()
            })
        );
    }

    #[test]
    fn same_build_again_is_reported_not_rewritten() {
        let p = publication(5, true, "b");
        let record = written(&p);
        assert_eq!(decide(&record, &p), Decision::AlreadyWritten { version: 3 });
        // The same position from another build (a duplicate report) is not rewritten either.
        assert_eq!(
            decide(&record, &publication(5, true, "other")),
            Decision::Skip(Stale::AlreadyPublished {
                by_build: "b".into()
            })
        );
    }

    #[test]
    fn any_live_claim_makes_everyone_wait() {
        let record = with_claim(
            &written(&publication(2, true, "b2")),
            &publication(3, true, "b3"),
            "tok",
            1000,
            "t",
        );
        for p in [publication(1, true, "b1"), publication(4, true, "b4")] {
            assert_eq!(
                decide(&record, &p),
                Decision::Wait {
                    token: "tok".into()
                }
            );
        }
    }

    #[test]
    fn abandoned_claims_count_as_written_only_if_their_value_is_in_the_store() {
        let claimed = publication(3, true, "b3");
        let record = with_claim(
            &written(&publication(2, true, "b2")),
            &claimed,
            "tok",
            1000,
            "t",
        );
        let landed = resolve_abandoned(&record, Some((&claimed.value, 9)), "now");
        assert!(landed.claim.is_none());
        let w = landed.written.as_ref().unwrap();
        assert_eq!(w.publication, claimed);
        assert_eq!(w.version, 9);
        // Then an older push is superseded by it, and the redelivered owner reports it.
        assert!(matches!(
            decide(&landed, &publication(2, true, "x")),
            Decision::Skip(Stale::Superseded { by_sequence: 3, .. })
        ));
        assert!(matches!(
            decide(&landed, &claimed),
            Decision::AlreadyWritten { .. }
        ));

        let lost = resolve_abandoned(&record, Some(("v2-x86_64", 8)), "now");
        assert!(lost.claim.is_none());
        assert_eq!(lost.written.unwrap().publication.position.push_sequence, 2);
        let nothing = resolve_abandoned(&record, None, "now");
        assert_eq!(
            nothing.written.unwrap().publication.position.push_sequence,
            2
        );
    }

    #[test]
    fn resolving_never_lowers_the_written_position() {
        // An older claim (it was claimed before the newer write? impossible by protocol, but
        // the record must stay monotonic whatever it holds).
        let mut record = written(&publication(5, true, "b5"));
        record.claim = with_claim(&record, &publication(4, true, "b4"), "t", 1, "t").claim;
        let resolved = resolve_abandoned(&record, Some(("v4-x86_64", 1)), "now");
        assert_eq!(
            resolved.written.unwrap().publication.position.push_sequence,
            5
        );
    }

    #[test]
    fn only_the_claim_owner_completes_or_releases() {
        let record = with_claim(
            &FenceRecord::default(),
            &publication(3, true, "b"),
            "mine",
            1,
            "t",
        );
        assert!(after_write(&record, "other", 1, "t").is_none());
        assert!(after_release(&record, "other").is_none());
        let done = after_write(&record, "mine", 7, "t").unwrap();
        assert!(done.claim.is_none());
        assert_eq!(done.written.as_ref().unwrap().version, 7);
        let released = after_release(&record, "mine").unwrap();
        assert!(released.claim.is_none() && released.written.is_none());
    }

    #[test]
    fn a_build_whose_write_landed_and_was_superseded_learns_it_wrote() {
        let mine = publication(3, true, "b3");
        let claimed = with_claim(&written(&publication(2, true, "b2")), &mine, "tok", 1, "t");
        // Its answer was lost; after the lease a newer push resolved the claim as landed...
        let landed = resolve_abandoned(&claimed, Some((&mine.value, 4)), "t");
        // ... and wrote on top of it.
        let newer = publication(5, true, "b5");
        let claimed = with_claim(&landed, &newer, "tok5", 1, "t");
        let after = after_write(&claimed, "tok5", 5, "t").unwrap();
        assert_eq!(
            decide(&after, &mine),
            Decision::AlreadyWritten { version: 4 }
        );
        // Others of that push are still superseded.
        assert!(matches!(
            decide(&after, &publication(3, true, "other")),
            Decision::Skip(Stale::Superseded { by_sequence: 5, .. })
        ));
        assert_eq!(after.recent.len(), 3);
    }

    #[test]
    fn recent_writes_are_bounded() {
        let mut record = FenceRecord::default();
        for seq in 0..40 {
            let claimed = with_claim(&record, &publication(seq, true, "b"), "t", 1, "t");
            record = after_write(&claimed, "t", 1, "t").unwrap();
        }
        assert_eq!(record.recent.len(), RECENT_WRITES);
        assert_eq!(
            record.recent.last().map(|r| r.position),
            record.written.as_ref().map(|w| w.publication.position)
        );
        assert_eq!(record.recent[0].position.push_sequence, 32);
    }

    #[test]
    fn record_json_round_trips() {
        let record = with_claim(
            &written(&publication(2, true, "b2")),
            &publication(3, false, "b3"),
            "tok",
            1000,
            "t",
        );
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<FenceRecord>(&json).unwrap(), record);
    }
}
