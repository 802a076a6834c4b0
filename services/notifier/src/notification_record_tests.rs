//! Unit tests of the notification record's rules.

use prx_ci_proto::v1::{self, envelope::Payload};
use time::macros::datetime;

use super::*;
use prx_ci_shared::notice::commit_status::StatusState;
use prx_ci_shared::notice::fixtures::{completed, envelope, started};

const ME: &str = "replica-a";
const OTHER: &str = "replica-b";
const NOW: OffsetDateTime = datetime!(2026-11-26 08:00 UTC);

/// A record whose view has one applied event and no delivery yet.
fn dirty() -> NotificationRecord {
    let mut record = NotificationRecord::default();
    record.view.apply(&envelope("e1", started())).unwrap();
    record
}

fn reference(ts: &str) -> MessageRef {
    MessageRef {
        channel: "C1".into(),
        ts: ts.into(),
    }
}

fn delivery(version: u64) -> ChatDelivery {
    ChatDelivery {
        reference: Some(reference("1.1")),
        action: Some("posted"),
        error: None,
        version,
        digest: "d1".into(),
        fetched: None,
    }
}

#[test]
fn an_applied_event_is_written_and_a_duplicate_is_kept() {
    let mut record = NotificationRecord::default();
    let config = StatusConfig::default();
    assert_eq!(
        record.apply_event(&envelope("e1", started()), false, &config),
        Modify::Write(Ok(true))
    );
    assert!(record.chat_dirty());
    assert_eq!(
        record.apply_event(&envelope("e1", started()), false, &config),
        Modify::Keep(Ok(false))
    );
    let no_build = envelope(
        "e2",
        Payload::BuildStarted(v1::BuildStarted {
            build: None,
            ..Default::default()
        }),
    );
    assert_eq!(
        record.apply_event(&no_build, false, &config),
        Modify::Keep(Err(ApplyError::NoBuild))
    );
}

#[test]
fn a_quiet_event_counts_as_shown_and_its_status_as_written() {
    let mut record = NotificationRecord::default();
    let config = StatusConfig::default();
    let applied = record.apply_event(
        &envelope("e1", completed(v1::BuildStatus::Succeeded)),
        true,
        &config,
    );
    assert_eq!(applied, Modify::Write(Ok(true)));
    assert!(!record.chat_dirty());
    assert_eq!(record.slack.delivered_version, record.view.version);
    let written = record.status.written.as_ref().unwrap();
    assert_eq!(written.state, StatusState::Success);
}

#[test]
fn a_clean_record_is_not_claimed() {
    let mut record = NotificationRecord::default();
    let until = NOW + time::Duration::minutes(1);
    assert_eq!(
        record.claim_lease(ME, NOW, until),
        Modify::Keep(Claim::Clean)
    );
    assert_eq!(record.slack.lease, None);
}

#[test]
fn a_first_claim_takes_the_lease_and_leaves_the_post_marker() {
    let mut record = dirty();
    let until = NOW + time::Duration::minutes(1);
    assert_eq!(
        record.claim_lease(ME, NOW, until),
        Modify::Write(Claim::Claimed { earlier_post: None })
    );
    assert_eq!(
        record.slack.lease,
        Some(Lease {
            owner: ME.into(),
            until
        })
    );
    assert_eq!(record.slack.post_started_at, Some(NOW));
}

#[test]
fn a_marker_left_by_an_earlier_attempt_is_reported_and_kept() {
    let mut record = dirty();
    let earlier = NOW - time::Duration::minutes(5);
    record.slack.post_started_at = Some(earlier);
    assert_eq!(
        record.claim_lease(ME, NOW, NOW + time::Duration::minutes(1)),
        Modify::Write(Claim::Claimed {
            earlier_post: Some(earlier)
        })
    );
    assert_eq!(record.slack.post_started_at, Some(earlier));
}

#[test]
fn an_update_leaves_no_post_marker() {
    let mut record = dirty();
    record.slack.reference = Some(reference("1.1"));
    let claim = record.claim_lease(ME, NOW, NOW + time::Duration::minutes(1));
    assert_eq!(claim, Modify::Write(Claim::Claimed { earlier_post: None }));
    assert_eq!(record.slack.post_started_at, None);
}

#[test]
fn another_replicas_live_lease_makes_us_wait_and_an_expired_one_is_taken_over() {
    let mut record = dirty();
    record.slack.lease = Some(Lease {
        owner: OTHER.into(),
        until: NOW + time::Duration::seconds(30),
    });
    let until = NOW + time::Duration::minutes(1);
    assert_eq!(
        record.claim_lease(ME, NOW, until),
        Modify::Keep(Claim::Busy(time::Duration::seconds(30)))
    );
    // Our own lease is renewed, never waited for.
    let mut own = dirty();
    own.slack.lease = Some(Lease {
        owner: ME.into(),
        until: NOW + time::Duration::seconds(30),
    });
    assert!(matches!(
        own.claim_lease(ME, NOW, until),
        Modify::Write(Claim::Claimed { .. })
    ));
    // Expired: taken over.
    let later = NOW + time::Duration::seconds(30);
    assert!(matches!(
        record.claim_lease(ME, later, later + time::Duration::minutes(1)),
        Modify::Write(Claim::Claimed { .. })
    ));
    assert_eq!(record.slack.lease.as_ref().unwrap().owner, ME);
}

#[test]
fn only_the_owner_releases_its_lease() {
    let mut record = dirty();
    let lease = Lease {
        owner: OTHER.into(),
        until: NOW,
    };
    record.slack.lease = Some(lease.clone());
    assert_eq!(record.release_lease(ME), Modify::Keep(()));
    assert_eq!(record.slack.lease, Some(lease));
    assert_eq!(record.release_lease(OTHER), Modify::Write(()));
    assert_eq!(record.slack.lease, None);
}

#[test]
fn a_post_stores_its_reference_clears_the_marker_and_releases_the_lease() {
    let mut record = dirty();
    record.claim_lease(ME, NOW, NOW + time::Duration::minutes(1));
    let fetched = CommitsCache::Unavailable {
        reason: "down".into(),
    };
    let posted = ChatDelivery {
        fetched: Some(fetched.clone()),
        ..delivery(1)
    };
    assert_eq!(record.mark_delivered(&posted, ME), Modify::Write(()));
    assert_eq!(record.slack.reference, Some(reference("1.1")));
    assert_eq!(record.slack.post_started_at, None);
    assert_eq!(record.slack.delivered_version, 1);
    assert_eq!(record.slack.last_digest.as_deref(), Some("d1"));
    assert_eq!(record.slack.deliveries, 1);
    assert_eq!(record.slack.lease, None);
    assert_eq!(record.commits, Some(fetched));
    assert!(!record.chat_dirty());
}

#[test]
fn a_delivery_never_lowers_the_version_nor_replaces_the_commit_list() {
    let mut record = dirty();
    let first = CommitsCache::Unavailable {
        reason: "first".into(),
    };
    record.commits = Some(first.clone());
    record.slack.delivered_version = 5;
    let late = ChatDelivery {
        fetched: Some(CommitsCache::Unavailable {
            reason: "second".into(),
        }),
        ..delivery(3)
    };
    record.mark_delivered(&late, ME);
    assert_eq!(record.slack.delivered_version, 5);
    assert_eq!(record.commits, Some(first));
}

#[test]
fn an_unchanged_rendering_counts_nothing_but_shows_the_version() {
    let mut record = dirty();
    record.slack.last_digest = Some("old".into());
    let unchanged = ChatDelivery {
        reference: None,
        action: None,
        ..delivery(1)
    };
    record.mark_delivered(&unchanged, ME);
    assert_eq!(record.slack.deliveries, 0);
    assert_eq!(record.slack.last_digest.as_deref(), Some("old"));
    assert_eq!(record.slack.delivered_version, 1);
}

#[test]
fn a_rejection_clears_the_marker_and_is_kept_for_operators_until_a_success() {
    let mut record = dirty();
    record.claim_lease(ME, NOW, NOW + time::Duration::minutes(1));
    let rejected = ChatDelivery {
        reference: None,
        action: None,
        error: Some("channel_not_found".into()),
        ..delivery(1)
    };
    record.mark_delivered(&rejected, ME);
    assert_eq!(record.slack.post_started_at, None);
    assert_eq!(
        record.slack.last_error.as_deref(),
        Some("channel_not_found")
    );
    assert!(!record.chat_dirty(), "given up for this version");
    record.mark_delivered(&delivery(1), ME);
    assert_eq!(record.slack.last_error, None);
}

#[test]
fn a_delivery_keeps_another_replicas_lease() {
    let mut record = dirty();
    let theirs = Lease {
        owner: OTHER.into(),
        until: NOW,
    };
    record.slack.lease = Some(theirs.clone());
    record.mark_delivered(&delivery(1), ME);
    assert_eq!(record.slack.lease, Some(theirs));
}

#[test]
fn a_written_status_is_recorded_on_its_build_and_superseded_builds_keep_their_own() {
    let config = StatusConfig::default();
    let mut own = NotificationRecord::default();
    own.view
        .apply(&envelope("e1", completed(v1::BuildStatus::Succeeded)))
        .unwrap();
    let mut written = desired_status(&config.context, &own.view).unwrap();
    written.description = "newer build's state".into();
    assert_eq!(
        own.mark_status_written(&written, true, &config),
        Modify::Write(())
    );
    assert_eq!(own.status.written.as_ref(), Some(&written));

    let mut superseded = dirty();
    superseded.mark_status_written(&written, false, &config);
    assert_eq!(
        superseded.status.written,
        desired_status(&config.context, &superseded.view)
    );
    // A superseded build with no status of its own records the one written.
    let mut unrequested = NotificationRecord::default();
    unrequested.mark_status_written(&written, false, &config);
    assert_eq!(unrequested.status.written, Some(written));
}

#[test]
fn the_delivered_event_names_the_build_and_has_a_stable_id() {
    let mut record = dirty();
    record.view.chain.correlation_id = "delivery-1".into();
    let event = |action| {
        record.delivered_event(
            v1::NotificationChannel::Slack,
            "C1/1.1".into(),
            action,
            &["slack", "k", "1"],
            false,
        )
    };
    let (posted, again, updated) = (event("posted"), event("posted"), event("updated"));
    assert_eq!(posted.event_id, again.event_id);
    assert_ne!(posted.event_id, updated.event_id);
    assert_eq!(posted.correlation_id, "delivery-1");
    let Some(Payload::NotificationDelivered(delivered)) = posted.payload else {
        panic!("not a NotificationDelivered: {posted:?}");
    };
    assert_eq!(delivered.build, Some(record.view.build_ref()));
    assert_eq!(delivered.reference, "C1/1.1");
    assert_eq!(delivered.action, "posted");
    assert!(!delivered.shadow);
    let shadow = record.delivered_event(
        v1::NotificationChannel::Slack,
        "C1/shadow:k".into(),
        "updated",
        &["slack", "k", "2"],
        true,
    );
    let Some(Payload::NotificationDelivered(shadow)) = shadow.payload else {
        panic!("not a NotificationDelivered: {shadow:?}");
    };
    assert!(shadow.shadow);
    assert_eq!(shadow.reference, "", "nothing was sent");
    assert_eq!(shadow.action, "updated");
}

#[test]
fn a_quiet_event_writes_no_check_run_until_a_live_one_arrives() {
    let mut record = NotificationRecord::default();
    let config = StatusConfig::default();
    let _ = record.apply_event(&envelope("e1", started()), true, &config);
    assert!(record.check_run.quiet);
    let _ = record.apply_event(
        &envelope("e2", completed(v1::BuildStatus::Succeeded)),
        false,
        &config,
    );
    assert!(!record.check_run.quiet);
}

#[test]
fn the_first_check_run_creation_leaves_a_marker_and_a_second_attempt_looks_first() {
    let mut record = dirty();
    let until = NOW + time::Duration::minutes(3);
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Write(CheckRunClaim::Claimed {
            id: None,
            earlier_create: false
        })
    );
    assert!(record.check_run.create_started);
    // The creation's answer was never stored: the next attempt is told to look for the run.
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Write(CheckRunClaim::Claimed {
            id: None,
            earlier_create: true
        })
    );
    assert!(record.check_run_dirty());
    let version = record.view.version;
    assert_eq!(
        record.mark_check_run_written(Some(7), "d1", version, None, ME),
        Modify::Write(())
    );
    assert_eq!(record.check_run.id, Some(7));
    assert!(!record.check_run.create_started);
    assert!(!record.check_run_dirty());
    assert_eq!(record.check_run.lease, None, "released by the write");
    // An older write landing late never lowers the version shown.
    let _ = record.mark_check_run_written(Some(7), "d0", version - 1, None, ME);
    assert_eq!(record.check_run.version, version);
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Keep(CheckRunClaim::Clean),
        "nothing behind"
    );
    let _ = record.apply_event(
        &envelope("e2", completed(v1::BuildStatus::Succeeded)),
        false,
        &StatusConfig::default(),
    );
    assert!(record.check_run_dirty());
    // Known: every later write updates run 7.
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Write(CheckRunClaim::Claimed {
            id: Some(7),
            earlier_create: false
        })
    );
}

#[test]
fn a_check_run_leased_by_another_replica_waits_and_an_older_view_is_never_written() {
    let mut record = dirty();
    let until = NOW + time::Duration::minutes(3);
    let _ = record.claim_check_run(OTHER, NOW, until);
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Keep(CheckRunClaim::Busy(time::Duration::minutes(3)))
    );
    // The other replica wrote the newest view: behind no more, nothing for us to write (our
    // older view included).
    let version = record.view.version;
    let _ = record.mark_check_run_written(Some(7), "d1", version, None, OTHER);
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Keep(CheckRunClaim::Clean)
    );
    // A lease its holder let expire (it died) is taken over.
    let _ = record.apply_event(
        &envelope("e2", completed(v1::BuildStatus::Succeeded)),
        false,
        &StatusConfig::default(),
    );
    let _ = record.claim_check_run(OTHER, NOW, until);
    assert!(matches!(
        record.claim_check_run(ME, until, until + time::Duration::minutes(3)),
        Modify::Write(CheckRunClaim::Claimed { id: Some(7), .. })
    ));
    // Only the holder releases it; a quiet (old-history) record is not claimed.
    assert_eq!(record.release_check_run_lease(OTHER), Modify::Keep(()));
    assert_eq!(record.release_check_run_lease(ME), Modify::Write(()));
    record.check_run.quiet = true;
    assert_eq!(
        record.claim_check_run(ME, NOW, until),
        Modify::Keep(CheckRunClaim::Clean)
    );
}

#[test]
fn only_a_status_written_to_github_keeps_a_build_from_getting_a_run_on_restart() {
    let config = StatusConfig::default();
    // Folded old history, then a live event (App mode): the quiet fold set a status, but
    // nothing was written; the run lags and must be written after a restart.
    let mut app = NotificationRecord::default();
    let _ = app.apply_event(&envelope("e1", started()), true, &config);
    let _ = app.apply_event(
        &envelope("e2", completed(v1::BuildStatus::Succeeded)),
        false,
        &config,
    );
    assert!(app.check_run.is_empty() && app.status.written.is_some());
    assert!(!app.reported_by_status());
    // Token mode wrote its status: no run after switching to App mode.
    let mut token = app.clone();
    let written = token.status.written.clone().unwrap();
    let _ = token.mark_status_written(&written, true, &config);
    assert!(token.reported_by_status());
    // A run once started is always kept up to date.
    let _ = token.claim_check_run(ME, NOW, NOW + time::Duration::minutes(3));
    assert!(!token.reported_by_status());
    // Nothing written and nothing folded quietly: not reported either.
    assert!(!dirty().reported_by_status());
}

#[test]
fn a_check_run_id_once_known_stays_and_a_rejection_is_kept_for_operators() {
    let mut record = dirty();
    let _ = record.mark_check_run_written(Some(7), "d1", 1, None, ME);
    let _ = record.mark_check_run_written(Some(8), "d2", 1, None, ME);
    assert_eq!(record.check_run.id, Some(7));
    let _ = record.mark_check_run_written(None, "d3", 1, Some("422 invalid".into()), ME);
    assert_eq!(record.check_run.id, Some(7));
    assert_eq!(record.check_run.digest.as_deref(), Some("d3"));
    assert_eq!(record.check_run.last_error.as_deref(), Some("422 invalid"));
    // Shadow mode's id 0 gives way to a real run.
    let mut shadowed = dirty();
    let _ = shadowed.mark_check_run_written(Some(0), "d1", 1, None, ME);
    let _ = shadowed.mark_check_run_written(Some(9), "d2", 1, None, ME);
    assert_eq!(shadowed.check_run.id, Some(9));
}

#[test]
fn a_record_without_check_run_state_stores_none() {
    let json = serde_json::to_value(dirty()).unwrap();
    assert!(json.get("check_run").is_none());
}
