//! Unit tests of the build view fold.

use super::*;
use crate::notice::fixtures::*;

#[test]
fn a_redelivered_event_changes_nothing() {
    let mut view = BuildView::default();
    assert!(view.apply(&envelope("e1", started())).unwrap());
    let before = view.clone();
    assert!(!view.apply(&envelope("e1", started())).unwrap());
    assert_eq!(view, before);
    assert_eq!(view.version, 1);
}

#[test]
fn a_late_in_progress_never_overwrites_a_final_state() {
    let mut view = BuildView::default();
    view.apply(&envelope("done", completed(v1::BuildStatus::Succeeded)))
        .unwrap();
    view.apply(&envelope("start", started())).unwrap();
    view.apply(&envelope(
        "phase",
        Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(build_ref()),
            completed_phase: "INSTALL".into(),
            completed_phase_status: "SUCCEEDED".into(),
            current_phase: "PRE_BUILD".into(),
            ..Default::default()
        }),
    ))
    .unwrap();
    assert_eq!(view.state, BuildState::Succeeded);
    assert_eq!(view.current_phase, None);
    assert!(view.started_at.is_some());
    assert_eq!(view.version, 3);
    // The first final state wins.
    view.apply(&envelope("done2", completed(v1::BuildStatus::Failed)))
        .unwrap();
    assert_eq!(view.state, BuildState::Succeeded);
}

#[test]
fn phases_never_move_back_and_the_first_failure_is_kept() {
    let mut view = BuildView::default();
    let phase = |completed: &str, status: &str, current: &str, message: &str| {
        Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(build_ref()),
            completed_phase: completed.into(),
            completed_phase_status: status.into(),
            current_phase: current.into(),
            message: message.into(),
            duration_ms: 1000,
            ..Default::default()
        })
    };
    view.apply(&envelope(
        "p2",
        phase("BUILD", "FAILED", "POST_BUILD", "exit 2"),
    ))
    .unwrap();
    view.apply(&envelope(
        "p1",
        phase("PRE_BUILD", "SUCCEEDED", "BUILD", ""),
    ))
    .unwrap();
    view.apply(&envelope(
        "p3",
        phase("POST_BUILD", "FAILED", "FINALIZING", "x"),
    ))
    .unwrap();
    assert_eq!(view.current_phase.as_deref(), Some("FINALIZING"));
    assert_eq!(view.failed_phase.as_deref(), Some("BUILD"));
    assert_eq!(view.failure_message.as_deref(), Some("exit 2"));
    let names: Vec<_> = view.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["PRE_BUILD", "BUILD", "POST_BUILD"]);
}

#[test]
fn skipped_builds_and_other_kinds_are_ignored() {
    let mut view = BuildView::default();
    let skipped = Payload::BuildSkipped(v1::BuildSkipped::default());
    assert_eq!(relevance(&skipped).unwrap(), Relevance::Ignore);
    assert!(!view.apply(&envelope("s", skipped)).unwrap());
    assert_eq!(view.version, 0);
    let orphan = Payload::BuildStarted(v1::BuildStarted::default());
    assert_eq!(relevance(&orphan), Err(ApplyError::NoBuild));
}

#[test]
fn the_applied_id_list_is_bounded() {
    let mut view = BuildView::default();
    for n in 0..(MAX_APPLIED_IDS + 10) {
        view.apply(&envelope(&format!("e{n}"), started())).unwrap();
    }
    assert_eq!(view.applied.len(), MAX_APPLIED_IDS);
    assert_eq!(view.applied[0], "e10");
}

#[test]
fn a_cancelled_build_reads_as_stopped_and_publishes_accumulate() {
    let mut view = BuildView::default();
    view.apply(&envelope("s", started())).unwrap();
    view.apply(&envelope(
        "c",
        Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(build_ref()),
            superseded_by_commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
            superseded_by_sequence: 9,
            ..Default::default()
        }),
    ))
    .unwrap();
    assert_eq!(view.effective_state(), BuildState::Stopped);
    let applied = Payload::PublishApplied(v1::PublishApplied {
        parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
        value: "github/prx/my-app:x".into(),
        label: "APP".into(),
        build: Some(build_ref()),
        ..Default::default()
    });
    let again = Payload::PublishSkipped(v1::PublishSkipped {
        parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
        label: "APP".into(),
        build: Some(build_ref()),
        reason: v1::PublishSkipReason::AlreadyPublished as i32,
        ..Default::default()
    });
    view.apply(&envelope("pa", applied)).unwrap();
    view.apply(&envelope("pa2", again)).unwrap();
    assert_eq!(view.publishes.len(), 1);
    assert_eq!(view.publishes[0].skipped, None);
}

#[test]
fn the_view_round_trips_through_json() {
    let mut view = BuildView::default();
    view.apply(&envelope("s", started())).unwrap();
    view.apply(&envelope("c", completed(v1::BuildStatus::Succeeded)))
        .unwrap();
    let json = serde_json::to_vec(&view).unwrap();
    assert_eq!(serde_json::from_slice::<BuildView>(&json).unwrap(), view);
}

#[test]
fn the_dispatchers_variables_come_from_its_request_never_from_exports() {
    const OTHER: &str = "89abcdef0123456789abcdef0123456789abcdef";
    let exported = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let lying = exported(&[
        ("PRX_REPO", "Evil/other"),
        ("PRX_COMMIT", OTHER),
        ("PRX_BRANCH", "main-not"),
        ("PRX_GITHUB_PR", "99"),
        ("PRX_TARGET_ARCHITECTURE", "aarch64"),
        ("APP", "github/prx/my-app:x"),
    ]);
    let done = |requested: Option<v1::BuildRequested>| {
        Payload::BuildCompleted(v1::BuildCompleted {
            requested,
            build: Some(build_ref()),
            status: v1::BuildStatus::Succeeded as i32,
            exported_variables: lying.clone(),
            variables: lying.clone(),
            ..Default::default()
        })
    };
    let mut view = BuildView::default();
    view.apply(&envelope("c", done(Some(request())))).unwrap();
    assert_eq!(view.var("PRX_REPO"), Some("PRX/my-app"));
    assert_eq!(view.commit_sha(), SHA);
    assert_eq!(view.var("PRX_BRANCH"), Some("main"));
    assert_eq!(view.pull_request(), None);
    assert_eq!(view.var("PRX_TARGET_ARCHITECTURE"), Some("x86_64"));
    assert_eq!(
        view.var("APP"),
        Some("github/prx/my-app:x"),
        "artifact values stay"
    );
    assert_eq!(view.requested_commit(), Some(("PRX/my-app", SHA)));

    // Nobody requested it: the reported environment, still never the exports.
    let mut console = BuildView::default();
    let mut started = v1::BuildStarted {
        build: Some(build_ref()),
        ..Default::default()
    };
    started
        .environment
        .insert("PRX_BRANCH".into(), "hotfix".into());
    console
        .apply(&envelope("s", Payload::BuildStarted(started)))
        .unwrap();
    console.apply(&envelope("c", done(None))).unwrap();
    assert_eq!(console.var("PRX_REPO"), None);
    assert_eq!(console.var("PRX_BRANCH"), Some("hotfix"));
    assert_eq!(console.commit_sha(), SHA);
    assert_eq!(console.requested_commit(), None);
    assert_eq!(console.var("APP"), Some("github/prx/my-app:x"));
}

#[test]
fn the_request_wins_over_a_reference_reported_first() {
    let mut view = BuildView::default();
    let mut reported = build_ref();
    reported.repository = "Evil/other".into();
    view.apply(&envelope(
        "p",
        Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(reported),
            ..Default::default()
        }),
    ))
    .unwrap();
    view.apply(&envelope("s", started())).unwrap();
    assert_eq!(view.repository, "PRX/my-app");
    assert_eq!(view.requested_commit(), Some(("PRX/my-app", SHA)));
}

#[test]
fn whole_build_skips_with_different_reasons_are_all_kept() {
    let mut view = BuildView::default();
    let skip = |reason: v1::PublishSkipReason, detail: &str| {
        Payload::PublishSkipped(v1::PublishSkipped {
            build: Some(build_ref()),
            reason: reason as i32,
            detail: detail.into(),
            ..Default::default()
        })
    };
    let fork = skip(
        v1::PublishSkipReason::Fork,
        "pull request #8 comes from a fork",
    );
    let repo = skip(
        v1::PublishSkipReason::UntrustedOverride,
        "the build set PRX_REPO",
    );
    let publish = skip(
        v1::PublishSkipReason::UntrustedOverride,
        "the build set PRX_CI_PUBLISH",
    );
    view.apply(&envelope("o1", repo.clone())).unwrap();
    view.apply(&envelope("o2", publish)).unwrap();
    view.apply(&envelope("f", fork)).unwrap();
    view.apply(&envelope("o1-again", repo)).unwrap();
    let reasons: Vec<_> = view
        .publishes
        .iter()
        .map(|p| (p.skipped.as_deref().unwrap(), p.detail.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("untrusted_override", "the build set PRX_REPO"),
            ("untrusted_override", "the build set PRX_CI_PUBLISH"),
            ("fork", "pull request #8 comes from a fork"),
        ]
    );
}

#[test]
fn a_completions_log_tail_is_kept_and_old_views_read_without_one() {
    let tail = |lines: &[&str], unavailable: &str| {
        Payload::BuildCompleted(v1::BuildCompleted {
            requested: Some(request()),
            build: Some(build_ref()),
            status: v1::BuildStatus::Failed as i32,
            log_tail: Some(v1::LogTail {
                lines: lines.iter().map(|l| (*l).to_owned()).collect(),
                truncated: true,
                unavailable: unavailable.to_owned(),
            }),
            ..Default::default()
        })
    };
    let mut view = BuildView::default();
    view.apply(&envelope("c", tail(&["npm ERR!"], ""))).unwrap();
    assert_eq!(
        view.log_tail,
        Some(LogTailView {
            lines: vec!["npm ERR!".into()],
            truncated: true,
            unavailable: None,
        })
    );
    // A second completion (another id) changes nothing: the first one stands.
    view.apply(&envelope("c2", tail(&[], "gone"))).unwrap();
    assert_eq!(view.log_tail.as_ref().unwrap().lines, ["npm ERR!"]);

    let mut unavailable = BuildView::default();
    unavailable
        .apply(&envelope("c", tail(&[], "log stream /g/s does not exist")))
        .unwrap();
    assert_eq!(
        unavailable.log_tail.unwrap().unavailable.as_deref(),
        Some("log stream /g/s does not exist")
    );

    let mut json = serde_json::to_value(&view).unwrap();
    json.as_object_mut().unwrap().remove("log_tail");
    let old: BuildView = serde_json::from_value(json).unwrap();
    assert_eq!(old.log_tail, None);
    let json = serde_json::to_value(BuildView::default()).unwrap();
    assert!(json.get("log_tail").is_none(), "left out while empty");
}
