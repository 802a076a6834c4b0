//! What an operator did with a parked entry (the record in `prx_ci_ops_retries`) and the rule
//! whether it may still be retried or dropped.
//!
//! One record per entry, under the entry's id, written create-only: an entry is retried or
//! dropped, once, and when two operators act at the same time the KV create decides. The
//! functions here are pure; `crate::parked` does the reading and writing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::MAX_REASON_LEN;

/// A retry: who put the entry back, when, under which new `Nats-Msg-Id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub retried_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub retried_at: OffsetDateTime,
    pub message_id: String,
}

/// A drop: who decided the entry needs no retry, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub dropped_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub dropped_at: OffsetDateTime,
    pub reason: String,
}

/// The record of a parked entry an operator handled. Stored as the JSON of the variant alone
/// (their fields differ), so the retry records written before drops existed read unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParkedRecord {
    Retried(RetryRecord),
    Dropped(DropRecord),
}

/// What an operator asks to do with a parked entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Drop,
}

impl Action {
    /// `retried` or `dropped`.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Retry => "retried",
            Self::Drop => "dropped",
        }
    }
}

/// Why an entry cannot be retried or dropped (answered as FAILED_PRECONDITION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The entry already has a record: who did what, when.
    Handled {
        id: u64,
        action: Action,
        record: ParkedRecord,
    },
    /// Another call claimed the entry and released it again (a retry whose publish failed)
    /// between this call's attempt and its look at the record.
    Contended { id: u64, action: Action },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handled { id, action, record } => {
                let done = match record {
                    ParkedRecord::Retried(r) => format!(
                        "retried by {} at {} (put back as message {})",
                        r.retried_by,
                        rfc3339(r.retried_at),
                        r.message_id
                    ),
                    ParkedRecord::Dropped(r) => format!(
                        "dropped by {} at {} (reason: {})",
                        r.dropped_by,
                        rfc3339(r.dropped_at),
                        r.reason
                    ),
                };
                if record.action() == *action {
                    write!(f, "entry {id} was already {done}")
                } else {
                    write!(f, "entry {id} cannot be {}: it was {done}", action.verb())
                }
            }
            Self::Contended { id, action } => write!(
                f,
                "entry {id} cannot be {} now: another operator's retry or drop of it is under \
                 way; list it again",
                action.verb()
            ),
        }
    }
}

impl ParkedRecord {
    /// Which action wrote this record.
    pub fn action(&self) -> Action {
        match self {
            Self::Retried(_) => Action::Retry,
            Self::Dropped(_) => Action::Drop,
        }
    }

    pub fn retried(&self) -> Option<&RetryRecord> {
        match self {
            Self::Retried(r) => Some(r),
            Self::Dropped(_) => None,
        }
    }

    pub fn dropped(&self) -> Option<&DropRecord> {
        match self {
            Self::Dropped(r) => Some(r),
            Self::Retried(_) => None,
        }
    }
}

/// May entry `id`, whose record is `record`, be retried or dropped (`action`)? Only an entry
/// without a record may: one action per entry, once.
pub fn check(id: u64, action: Action, record: Option<&ParkedRecord>) -> Result<(), Refused> {
    match record {
        None => Ok(()),
        Some(record) => Err(Refused::Handled {
            id,
            action,
            record: record.clone(),
        }),
    }
}

/// The reason of a drop, trimmed: required (it is the audit trail of a message nobody will
/// retry) and at most [`MAX_REASON_LEN`] characters.
pub fn drop_reason(reason: &str) -> Result<&str, String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(
            "a drop needs a reason (why the message needs no retry; it is kept with the drop)"
                .into(),
        );
    }
    let length = reason.chars().count();
    if length > MAX_REASON_LEN {
        return Err(format!(
            "the reason is {length} characters long; at most {MAX_REASON_LEN} are kept"
        ));
    }
    Ok(reason)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn retried() -> ParkedRecord {
        ParkedRecord::Retried(RetryRecord {
            retried_by: "alice".into(),
            retried_at: datetime!(2026-11-30 10:00:00 UTC),
            message_id: "evt-1:retry".into(),
        })
    }

    fn dropped() -> ParkedRecord {
        ParkedRecord::Dropped(DropRecord {
            dropped_by: "bob".into(),
            dropped_at: datetime!(2026-11-30 11:00:00 UTC),
            reason: "build of a deleted branch".into(),
        })
    }

    fn refusal(action: Action, record: &ParkedRecord) -> String {
        check(7, action, Some(record)).unwrap_err().to_string()
    }

    #[test]
    fn an_entry_without_a_record_may_be_retried_or_dropped() {
        assert_eq!(check(7, Action::Retry, None), Ok(()));
        assert_eq!(check(7, Action::Drop, None), Ok(()));
    }

    #[test]
    fn an_entry_is_retried_or_dropped_once_and_never_both() {
        assert_eq!(
            refusal(Action::Retry, &retried()),
            "entry 7 was already retried by alice at 2026-11-30T10:00:00Z (put back as message \
             evt-1:retry)"
        );
        assert_eq!(
            refusal(Action::Drop, &dropped()),
            "entry 7 was already dropped by bob at 2026-11-30T11:00:00Z (reason: build of a \
             deleted branch)"
        );
        assert_eq!(
            refusal(Action::Retry, &dropped()),
            "entry 7 cannot be retried: it was dropped by bob at 2026-11-30T11:00:00Z (reason: \
             build of a deleted branch)"
        );
        assert_eq!(
            refusal(Action::Drop, &retried()),
            "entry 7 cannot be dropped: it was retried by alice at 2026-11-30T10:00:00Z (put \
             back as message evt-1:retry)"
        );
        let contended = Refused::Contended {
            id: 7,
            action: Action::Drop,
        };
        assert!(
            contended
                .to_string()
                .starts_with("entry 7 cannot be dropped now")
        );
    }

    #[test]
    fn records_read_back_as_the_action_that_wrote_them() {
        for record in [retried(), dropped()] {
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                serde_json::from_slice::<ParkedRecord>(&json).unwrap(),
                record
            );
        }
        // A retry record as written before drops existed.
        let old = br#"{"retried_by":"alice","retried_at":"2026-11-30T10:00:00Z","message_id":"m"}"#;
        let old = serde_json::from_slice::<ParkedRecord>(old).unwrap();
        assert_eq!(old.action(), Action::Retry);
        assert_eq!(old.retried().unwrap().retried_by, "alice");
        assert!(old.dropped().is_none());
        assert_eq!(dropped().dropped().unwrap().dropped_by, "bob");
    }

    #[test]
    fn a_drop_needs_a_bounded_reason() {
        assert_eq!(drop_reason("  flaky slack \n"), Ok("flaky slack"));
        assert!(drop_reason("").unwrap_err().contains("needs a reason"));
        assert!(drop_reason(" \t\n").unwrap_err().contains("needs a reason"));
        let longest = "é".repeat(MAX_REASON_LEN);
        assert_eq!(drop_reason(&longest), Ok(longest.as_str()));
        let too_long = format!("{longest}x");
        assert!(drop_reason(&too_long).unwrap_err().contains("at most 1000"));
    }
}
