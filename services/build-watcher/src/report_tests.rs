//! Unit tests of parsing and classifying state-change reports.

use prx_ci_shared::codebuild::build::format_codebuild_time;

use super::*;

fn state_event(status: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": "e1",
        "detail-type": "CodeBuild Build State Change",
        "source": "aws.codebuild",
        "account": "123456789012",
        "time": "2017-09-01T16:14:28Z",
        "region": "us-west-2",
        "detail": {
            "build-status": status,
            "project-name": "proj",
            "build-id": "arn:aws:codebuild:us-west-2:123456789012:build/proj:8745a7a9",
            "additional-information": {
                "build-start-time": "Sep 1, 2017 4:12:29 PM",
                "phases": [
                    {"phase-type": "SUBMITTED", "phase-status": "SUCCEEDED", "duration-in-seconds": 0,
                     "start-time": "Sep 1, 2017 4:12:29 PM", "end-time": "Sep 1, 2017 4:12:29 PM", "phase-context": []},
                    {"phase-type": "BUILD", "phase-status": "FAILED", "duration-in-seconds": 80,
                     "start-time": "Sep 1, 2017 4:12:40 PM", "end-time": "Sep 1, 2017 4:14:00 PM",
                     "phase-context": ["COMMAND_EXECUTION_ERROR: Error while executing command: make. Reason: exit status 2"]},
                    {"phase-type": "POST_BUILD", "phase-status": "SUCCEEDED", "duration-in-seconds": 1,
                     "start-time": "Sep 1, 2017 4:14:00 PM", "end-time": "Sep 1, 2017 4:14:01 PM", "phase-context": [": "]},
                    {"phase-type": "COMPLETED", "start-time": "Sep 1, 2017 4:14:21 PM"}
                ]
            }
        }
    })
}

fn parse(value: serde_json::Value) -> Result<Report, ReportError> {
    parse_report(&serde_json::to_vec(&value).unwrap())
}

#[test]
fn codebuild_times_parse_and_format_round_trip() {
    let t = parse_codebuild_time("Sep 1, 2017 4:12:29 PM").unwrap();
    assert_eq!(t.unix_timestamp(), 1_504_282_349);
    assert_eq!(format_codebuild_time(t), "Sep 1, 2017 4:12:29 PM");
    let midnight = parse_codebuild_time("Dec 31, 2024 12:00:05 AM").unwrap();
    assert_eq!(midnight.hour(), 0);
    assert_eq!(format_codebuild_time(midnight), "Dec 31, 2024 12:00:05 AM");
    assert_eq!(parse_codebuild_time("2017-09-01T16:12:29Z"), None);
    assert_eq!(parse_codebuild_time(""), None);
}

#[test]
fn build_ids_normalize_to_project_and_uuid() {
    assert_eq!(
        build_id_of("arn:aws:codebuild:us-east-1:1:build/prx-Runner2:ab-cd"),
        "prx-Runner2:ab-cd"
    );
    assert_eq!(build_id_of("prx-Runner2:ab-cd"), "prx-Runner2:ab-cd");
    assert_eq!(build_id_of("local:42"), "local:42");
}

#[test]
fn state_changes_classify_by_status() {
    assert_eq!(
        parse(state_event("IN_PROGRESS")).unwrap().kind,
        ReportKind::InProgress
    );
    for (text, status) in [
        ("SUCCEEDED", FinalStatus::Succeeded),
        ("FAILED", FinalStatus::Failed),
        ("FAULT", FinalStatus::Fault),
        ("STOPPED", FinalStatus::Stopped),
        ("TIMED_OUT", FinalStatus::TimedOut),
    ] {
        let r = parse(state_event(text)).unwrap();
        assert_eq!(r.kind, ReportKind::Final(status));
        assert_eq!(r.build_id, "proj:8745a7a9");
        assert_eq!(status.as_str(), text);
    }
    assert_eq!(
        parse(state_event("EXPLODED")).unwrap_err(),
        ReportError::UnknownStatus("EXPLODED".into())
    );
}

#[test]
fn unusable_reports_are_errors_not_panics() {
    assert!(matches!(
        parse_report(b"not json"),
        Err(ReportError::NotJson(_))
    ));
    let mut e = state_event("SUCCEEDED");
    e["detail-type"] = "EC2 Instance State-change Notification".into();
    assert!(matches!(parse(e), Err(ReportError::UnknownDetailType(_))));
    let mut e = state_event("SUCCEEDED");
    e["detail"]["build-id"] = "".into();
    assert_eq!(parse(e).unwrap_err(), ReportError::NoBuildId);
    let mut e = state_event("SUCCEEDED");
    e["detail-type"] = event::PHASE_CHANGE.into();
    assert_eq!(parse(e).unwrap_err(), ReportError::NoCompletedPhase);
}

#[test]
fn failed_phase_is_the_first_that_did_not_succeed() {
    let r = parse(state_event("FAILED")).unwrap();
    let failed = r.failed_phase().unwrap();
    assert_eq!(failed.name, "BUILD");
    assert_eq!(failed.status, "FAILED");
    assert_eq!(
        failed.message,
        "COMMAND_EXECUTION_ERROR: Error while executing command: make. Reason: exit status 2"
    );
    assert_eq!(failed.duration_ms, 80_000);
    // ": " contexts say nothing.
    assert_eq!(r.phases()[2].message, "");
    assert!(!r.phases()[3].ended);
}

#[test]
fn duration_runs_from_build_start_to_the_completed_phase() {
    let r = parse(state_event("SUCCEEDED")).unwrap();
    assert_eq!(r.duration_ms(), 112_000);
    assert_eq!(
        r.finished_at().unwrap(),
        parse_codebuild_time("Sep 1, 2017 4:14:21 PM").unwrap()
    );
    assert_eq!(r.time().unwrap().unix_timestamp(), 1_504_282_468);
}

#[test]
fn log_url_prefers_the_deep_link_then_the_console_page() {
    let r = parse(state_event("SUCCEEDED")).unwrap();
    assert_eq!(
        r.log_url(),
        "https://us-west-2.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/proj/build/proj%3A8745a7a9?region=us-west-2"
    );
    let mut e = state_event("SUCCEEDED");
    e["detail"]["additional-information"]["logs"] =
        serde_json::json!({"deep-link": "https://logs.example/x"});
    assert_eq!(parse(e).unwrap().log_url(), "https://logs.example/x");
    assert_eq!(
        parse_arn("local:1"),
        None,
        "local builds have no console page"
    );
}

#[test]
fn an_unrequested_build_is_described_from_its_variables() {
    let mut e = state_event("IN_PROGRESS");
    e["detail"]["additional-information"]["environment"] = serde_json::json!({
        "environment-variables": [
            {"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"},
            {"name": "PRX_TARGET_ARCHITECTURE", "value": "aarch64", "type": "PLAINTEXT"}
        ]
    });
    e["detail"]["additional-information"]["source-version"] =
        "0123456789abcdef0123456789abcdef01234567".into();
    let r = parse(e).unwrap();
    let b = r.build_ref();
    assert_eq!(b.repository, "PRX/app");
    assert_eq!(b.commit, "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(b.architecture, v1::Architecture::Aarch64 as i32);
    assert_eq!(b.project, "proj");
    assert_eq!(b.backend, "codebuild");
    assert_eq!(b.region, "us-west-2");
    assert_eq!(b.build_request_id, "");
    // Nothing known at all: still a usable reference.
    let bare = parse(state_event("IN_PROGRESS")).unwrap().build_ref();
    assert_eq!(bare.repository, "");
    assert_eq!(bare.commit, "");
}

#[test]
fn an_unrequested_builds_commit_comes_from_any_form_of_its_source_version() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for (source_version, commit) in [
        (format!("refs/pull/7/head^{{{sha}}}"), sha),
        (format!("refs/heads/main^{{{sha}}}"), sha),
        (sha.to_ascii_uppercase(), sha),
        // A name says nothing about the commit (built before the dispatcher named commits).
        ("pr/7".to_owned(), ""),
        ("main".to_owned(), ""),
    ] {
        let mut e = state_event("IN_PROGRESS");
        e["detail"]["additional-information"]["source-version"] = source_version.clone().into();
        let b = parse(e).unwrap().build_ref();
        assert_eq!(b.commit, commit, "{source_version}");
    }
}

#[test]
fn phase_changes_carry_their_context_and_next_phase() {
    let e = serde_json::json!({
        "detail-type": event::PHASE_CHANGE,
        "detail": {
            "build-id": "local:1",
            "completed-phase": "BUILD",
            "completed-phase-status": "FAILED",
            "completed-phase-duration-seconds": 3,
            "completed-phase-context": "[COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1]",
            "additional-information": {}
        }
    });
    let r = parse(e).unwrap();
    let p = r.completed_phase().unwrap();
    assert_eq!(p.status, "FAILED");
    assert_eq!(p.duration_ms, 3000);
    assert!(p.message.contains("exit status 1"), "{}", p.message);
    assert_eq!(r.phase_after("BUILD"), "POST_BUILD");
    assert_eq!(r.phase_after("COMPLETED"), "");
    assert_eq!(r.backend(), "local");
    assert_eq!(
        p.message,
        "COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1"
    );
    assert_eq!(context_string_message("[: ]"), "");
    assert_eq!(context_string_message("[\"A: b\", \": \"]"), "A: b");
}
