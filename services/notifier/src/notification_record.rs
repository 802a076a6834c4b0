//! The per-build notification record (what the KV bucket holds) and its rules: folding an
//! event, taking and releasing the delivery leases (the message's and the check run's),
//! recording a delivery, a written status and a written check run.
//!
//! The async code only calls these methods inside [`crate::notification_store`]'s
//! compare-and-set, so every rule here is decided from the record alone and is unit-tested.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::kv::Modify;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::chat::MessageRef;
use crate::config::StatusConfig;
use prx_ci_shared::notice::commit_status::{CommitStatus, desired_status};
use prx_ci_shared::notice::render::CommitsCache;
use prx_ci_shared::notice::view::{ApplyError, BuildView};

/// Which replica delivers a build right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// The Slack side of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlackState {
    /// The posted message (absent until the first post is confirmed and stored).
    pub reference: Option<MessageRef>,
    /// Set (and stored) before a post is attempted, cleared when its reference is stored. Found
    /// set with no reference, a post may have happened: look for it before posting again.
    #[serde(with = "time::serde::rfc3339::option")]
    pub post_started_at: Option<OffsetDateTime>,
    /// The view version the message shows.
    pub delivered_version: u64,
    /// Digest of the last content sent (identical renderings are not sent again).
    pub last_digest: Option<String>,
    pub lease: Option<Lease>,
    /// Slack's last permanent error, for operators.
    pub last_error: Option<String>,
    /// Posts and updates made (numbers the notification events).
    pub deliveries: u64,
}

/// The commit-status side of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusRecord {
    /// The status last written for this build (or superseded by a newer one on the same
    /// commit and context).
    pub written: Option<CommitStatus>,
    /// `written` was set by folding old history (a quiet event), not by a write: nothing was
    /// written to GitHub for this build (in App mode, nothing ever is). Not stored when false,
    /// so records of earlier versions read and write back unchanged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_history: bool,
}

/// The check-run side of a build (GitHub App mode): one run through the build's whole life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckRunRecord {
    /// GitHub's id of the build's run, once created (every later write updates it).
    pub id: Option<u64>,
    /// The view version the run shows (written, or found identical to what was written).
    pub version: u64,
    /// Digest of the content last written ([`crate::check_run::CheckRun::digest`]).
    pub digest: Option<String>,
    /// Set (and stored) before the run is created; found set with no id, the creation may
    /// have happened: look the run up by its `external_id` before creating it again.
    pub create_started: bool,
    /// GitHub's last permanent error, for operators.
    pub last_error: Option<String>,
    /// The newest event folded was old history (`quiet_after`): nothing is written for it
    /// until a newer event arrives (a replay does not create runs on old commits).
    pub quiet: bool,
    /// Which replica writes the run right now (taken before every write, so two replicas never
    /// write one run at once and an older view never lands after a newer one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

impl CheckRunRecord {
    /// Nothing recorded (token mode, or before the first write): not stored at all, so
    /// records of earlier versions read and write back unchanged.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Everything stored for one build: its view, its Slack message, its commit status or check
/// run, and the cached commit list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotificationRecord {
    pub view: BuildView,
    pub slack: SlackState,
    pub status: StatusRecord,
    #[serde(skip_serializing_if = "CheckRunRecord::is_empty")]
    pub check_run: CheckRunRecord,
    pub commits: Option<CommitsCache>,
}

/// What [`NotificationRecord::claim_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The message already shows the newest view: nothing to deliver.
    Clean,
    /// Another replica holds the lease for this long yet.
    Busy(time::Duration),
    /// The lease is ours. `earlier_post`: a post marker left by an earlier attempt whose
    /// reference was never stored (the post may have happened: look for it first).
    Claimed {
        earlier_post: Option<OffsetDateTime>,
    },
}

/// What [`NotificationRecord::claim_check_run`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckRunClaim {
    /// The run already shows the newest view (or the newest event was old history).
    Clean,
    /// Another replica holds the run's lease for this long yet.
    Busy(time::Duration),
    /// The lease is ours: write the run of the record as claimed. `id`: the run's id when
    /// known; `earlier_create`: a creation marker left by an earlier attempt whose id was
    /// never stored (the run may exist: look it up before creating one).
    Claimed {
        id: Option<u64>,
        earlier_create: bool,
    },
}

/// The outcome of one chat delivery, as [`NotificationRecord::mark_delivered`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatDelivery {
    /// The message delivered to (posted, updated or found).
    pub reference: Option<MessageRef>,
    /// `posted` or `updated` when a message was sent; `None` when nothing was sent.
    pub action: Option<&'static str>,
    /// Slack's permanent error (the version is given up on).
    pub error: Option<String>,
    /// The view version rendered.
    pub version: u64,
    /// Digest of the content rendered.
    pub digest: String,
    /// The commit list fetched for this delivery, if any.
    pub fetched: Option<CommitsCache>,
}

impl NotificationRecord {
    /// The message does not show the latest view yet.
    pub fn chat_dirty(&self) -> bool {
        self.view.version > 0 && self.slack.delivered_version < self.view.version
    }

    /// Folds `envelope` into the view. A `quiet` event (old history, replayed) is remembered
    /// as already shown and its status as already written, so nothing is announced. Writes
    /// only when the event applied; `Ok(false)` for a duplicate.
    pub fn apply_event(
        &mut self,
        envelope: &v1::Envelope,
        quiet: bool,
        statuses: &StatusConfig,
    ) -> Modify<Result<bool, ApplyError>> {
        match self.view.apply(envelope) {
            Ok(true) => {
                self.check_run.quiet = quiet;
                if quiet {
                    self.slack.delivered_version = self.view.version;
                    self.status.written = desired_status(&statuses.context, &self.view);
                    self.status.from_history = true;
                }
                Modify::Write(Ok(true))
            }
            other => Modify::Keep(other),
        }
    }

    /// Takes the delivery lease for `owner` until `until` when the message is behind its view
    /// and no other replica holds an unexpired lease; before a first post, also leaves the
    /// post marker (`now`), stored before the post is attempted.
    pub fn claim_lease(
        &mut self,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Modify<Claim> {
        if !self.chat_dirty() {
            return Modify::Keep(Claim::Clean);
        }
        if let Some(lease) = &self.slack.lease
            && lease.owner != owner
            && lease.until > now
        {
            return Modify::Keep(Claim::Busy(lease.until - now));
        }
        self.slack.lease = Some(Lease {
            owner: owner.to_owned(),
            until,
        });
        let earlier_post = self.slack.post_started_at;
        if self.slack.reference.is_none() && earlier_post.is_none() {
            self.slack.post_started_at = Some(now);
        }
        Modify::Write(Claim::Claimed { earlier_post })
    }

    /// Drops `owner`'s lease (after a failed delivery, so another attempt may start at once).
    pub fn release_lease(&mut self, owner: &str) -> Modify<()> {
        if self.slack.lease.as_ref().is_some_and(|l| l.owner == owner) {
            self.slack.lease = None;
            Modify::Write(())
        } else {
            Modify::Keep(())
        }
    }

    /// Records a finished delivery by `owner`: the message reference (the post marker goes once
    /// a reference is stored, or when Slack rejected the message for good), the version shown
    /// (never lowered), the digest and count of what was sent, the error, the fetched commits
    /// (the first list stays), and releases `owner`'s lease.
    pub fn mark_delivered(&mut self, delivery: &ChatDelivery, owner: &str) -> Modify<()> {
        if let Some(reference) = &delivery.reference
            && self.slack.reference.as_ref() != Some(reference)
        {
            self.slack.reference = Some(reference.clone());
        }
        if self.slack.reference.is_some() || delivery.error.is_some() {
            self.slack.post_started_at = None;
        }
        self.slack.delivered_version = self.slack.delivered_version.max(delivery.version);
        if delivery.action.is_some() {
            self.slack.last_digest = Some(delivery.digest.clone());
            self.slack.deliveries += 1;
        }
        self.slack.last_error.clone_from(&delivery.error);
        if self.commits.is_none() {
            self.commits.clone_from(&delivery.fetched);
        }
        if self.slack.lease.as_ref().is_some_and(|l| l.owner == owner) {
            self.slack.lease = None;
        }
        Modify::Write(())
    }

    /// Records `written` on this build (`own`: the build whose state it is), or on a build whose
    /// older state it superseded: that one keeps its own newest status when it has one, so a
    /// restart does not write a stale state again.
    pub fn mark_status_written(
        &mut self,
        written: &CommitStatus,
        own: bool,
        statuses: &StatusConfig,
    ) -> Modify<()> {
        self.status.written = if own {
            Some(written.clone())
        } else {
            desired_status(&statuses.context, &self.view).or_else(|| Some(written.clone()))
        };
        self.status.from_history = false;
        Modify::Write(())
    }

    /// The build was reported by a commit status written to GitHub (token mode, or
    /// `[notifier.checks] enabled = false`) and never had a check run: after a switch to check
    /// runs it gets none on restart. A status set by folding old history does not count (in App
    /// mode every quiet fold sets one, and nothing was written).
    pub fn reported_by_status(&self) -> bool {
        self.check_run.is_empty() && self.status.written.is_some() && !self.status.from_history
    }

    /// The check run does not show the latest view yet (by version, like the message: a new
    /// rendering of an unchanged view writes nothing).
    pub fn check_run_dirty(&self) -> bool {
        self.view.version > self.check_run.version
    }

    /// Takes the check run's lease for `owner` until `until` when the run is behind its view
    /// (and the newest event was not old history) and no other replica holds an unexpired
    /// lease; before the run's first creation, also leaves the creation marker. Decided on the
    /// record as stored, so a replica holding an older view never writes after a newer one was
    /// delivered: that version is no longer behind, and a write in flight holds the lease.
    pub fn claim_check_run(
        &mut self,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Modify<CheckRunClaim> {
        if self.check_run.quiet || !self.check_run_dirty() {
            return Modify::Keep(CheckRunClaim::Clean);
        }
        if let Some(lease) = &self.check_run.lease
            && lease.owner != owner
            && lease.until > now
        {
            return Modify::Keep(CheckRunClaim::Busy(lease.until - now));
        }
        self.check_run.lease = Some(Lease {
            owner: owner.to_owned(),
            until,
        });
        let id = self.check_run.id;
        let earlier_create = id.is_none() && self.check_run.create_started;
        if id.is_none() {
            self.check_run.create_started = true;
        }
        Modify::Write(CheckRunClaim::Claimed { id, earlier_create })
    }

    /// Drops `owner`'s check-run lease (after a failed write, so another attempt may start).
    pub fn release_check_run_lease(&mut self, owner: &str) -> Modify<()> {
        if self
            .check_run
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == owner)
        {
            self.check_run.lease = None;
            Modify::Write(())
        } else {
            Modify::Keep(())
        }
    }

    /// Records a check-run write of the view `version`: the run's id (a known id stays), the
    /// digest of what was written, the version shown (never lowered), and GitHub's permanent
    /// error (`error`: the content was given up on); releases `owner`'s lease.
    pub fn mark_check_run_written(
        &mut self,
        id: Option<u64>,
        digest: &str,
        version: u64,
        error: Option<String>,
        owner: &str,
    ) -> Modify<()> {
        if self
            .check_run
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == owner)
        {
            self.check_run.lease = None;
        }
        self.check_run.version = self.check_run.version.max(version);
        // A known id stays; shadow mode's 0 gives way to a real one.
        if self.check_run.id.is_none_or(|known| known == 0) && id.is_some() {
            self.check_run.id = id;
        }
        if self.check_run.id.is_some() {
            self.check_run.create_started = false;
        }
        self.check_run.digest = Some(digest.to_owned());
        self.check_run.last_error = error;
        Modify::Write(())
    }

    /// The `NotificationDelivered` event of a delivery, caused by the last event applied; its
    /// id derives from `id_parts` and `action`, so a redelivery publishes the same id.
    /// `shadow`: nothing was sent (shadow mode); the event says so and names no reference.
    pub fn delivered_event(
        &self,
        channel: v1::NotificationChannel,
        reference: String,
        action: &str,
        id_parts: &[&str],
        shadow: bool,
    ) -> v1::Envelope {
        let chain = self.view.chain.chain();
        let mut parts = vec!["notification.delivered"];
        parts.extend_from_slice(id_parts);
        parts.push(action);
        chain.envelope(
            chain.derive_id(&parts),
            Payload::NotificationDelivered(v1::NotificationDelivered {
                channel: channel as i32,
                build: Some(self.view.build_ref()),
                reference: if shadow { String::new() } else { reference },
                action: action.to_owned(),
                shadow,
            }),
        )
    }
}

#[cfg(test)]
#[path = "notification_record_tests.rs"]
mod tests;
