//! Unit tests of the watched-build records: their stored JSON and their merge rules.

use prx_ci_shared::codebuild::build::FinalStatus;

use super::*;
use crate::report::parse_report;
use crate::state::{self, Transition};

/// A record as the build-watcher has written it since records carried the request (every field
/// set), byte for byte.
const STORED_RECORD: &str = r#"{"build_id":"app:0b5e","build":{"build_id":"arn:aws:codebuild:us-east-1:123456789012:build/app:0b5e","build_request_id":"req-1","repository":"PRX/app","commit":"4f2c","architecture":2,"backend":"codebuild","project":"app","region":"us-east-1","log_url":"https://logs"},"requested":true,"requested_event_id":"evt-req","request":{"environment":{"PRX_CI_PUBLISH":"true"},"clone_url":"https://github.com/PRX/app.git","source_version":"4f2c","event_name":"push","action":"","fork":false,"branch":"main","pull_request":0},"chain":{"correlation_id":"delivery-1","causation_id":"evt-req","repository":"PRX/app","branch":"main","pull_request":null,"push_sequence":42},"cancelled":{"event_id":"evt-cancel","superseded_by_sequence":43,"superseded_by_commit":"5a6b"},"state":{"lifecycle":{"state":"final","status":"FAILED"},"phases_reported":["SUBMITTED","BUILD"]},"last_heard_ms":1504282468000,"phases":[{"name":"BUILD","status":"FAILED","duration_ms":80000,"message":"COMMAND_EXECUTION_ERROR: exit status 2","ended":true}],"final_status":"FAILED"}"#;

/// A build nobody requested, still running, as written (the optional parts `null`).
const STORED_UNREQUESTED: &str = r#"{"build_id":"local:1","build":{"build_id":"local:1","build_request_id":"","repository":"PRX/app","commit":"","architecture":0,"backend":"local","project":"local","region":"","log_url":""},"requested":false,"requested_event_id":"","request":null,"chain":{"correlation_id":"evt-report","causation_id":"evt-report","repository":"","branch":null,"pull_request":null,"push_sequence":0},"cancelled":null,"state":{"lifecycle":{"state":"in_progress"},"phases_reported":[]},"last_heard_ms":5,"phases":[],"final_status":null}"#;

const STORED_IN_FLIGHT: &str = r#"{"build_id":"app:0b5e","backend":"codebuild","last_heard_ms":5}"#;

const ARN: &str = "arn:aws:codebuild:us-west-2:123456789012:build/proj:8745a7a9";

fn report(kind: &str) -> Report {
    let (detail_type, extra) = match kind {
        "phase" => (
            "CodeBuild Build Phase Change",
            serde_json::json!({"completed-phase": "BUILD", "completed-phase-status": "SUCCEEDED"}),
        ),
        status => (
            "CodeBuild Build State Change",
            serde_json::json!({"build-status": status}),
        ),
    };
    let mut detail = serde_json::json!({
        "project-name": "proj",
        "build-id": ARN,
        "additional-information": {
            "environment": {"environment-variables": [
                {"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"}
            ]},
            "phases": [
                {"phase-type": "SUBMITTED", "phase-status": "SUCCEEDED", "duration-in-seconds": 0},
                {"phase-type": "BUILD", "phase-status": "SUCCEEDED", "duration-in-seconds": 3}
            ]
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        detail[k] = v.clone();
    }
    let event = serde_json::json!({
        "id": "evt-report", "time": "2017-09-01T16:14:28Z", "region": "us-west-2",
        "detail-type": detail_type, "detail": detail
    });
    parse_report(event.to_string().as_bytes()).unwrap()
}

fn request_envelope(build: v1::BuildRef) -> (v1::Envelope, v1::BuildRequested) {
    let request = v1::BuildRequested {
        build: Some(build),
        branch: "main".into(),
        event_name: "push".into(),
        ..Default::default()
    };
    let envelope = v1::Envelope {
        event_id: "evt-req".into(),
        correlation_id: "delivery-1".into(),
        ordering_key: Some(v1::OrderingKey {
            repository: "PRX/app".into(),
            lane: Some(v1::ordering_key::Lane::Branch("main".into())),
        }),
        push_sequence: 42,
        ..Default::default()
    };
    (envelope, request)
}

fn requested_ref() -> v1::BuildRef {
    v1::BuildRef {
        build_id: "proj:8745a7a9".into(),
        build_request_id: "req-1".into(),
        repository: "PRX/app".into(),
        commit: "4f2c".into(),
        backend: "codebuild".into(),
        project: "proj".into(),
        ..Default::default()
    }
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

#[test]
fn records_as_stored_read_and_write_back_byte_for_byte() {
    let record: WatchedBuildRecord = serde_json::from_str(STORED_RECORD).unwrap();
    assert_eq!(record.build.log_url, "https://logs");
    assert_eq!(record.build.architecture(), v1::Architecture::Aarch64);
    assert_eq!(
        record.state.lifecycle,
        Lifecycle::Final {
            status: FinalStatus::Failed
        }
    );
    assert_eq!(
        record.request.as_ref().unwrap().environment["PRX_CI_PUBLISH"],
        "true"
    );
    assert_eq!(record.chain.push_sequence, 42);
    assert_eq!(
        record.cancelled.as_ref().unwrap().superseded_by_sequence,
        43
    );
    assert_eq!(serde_json::to_string(&record).unwrap(), STORED_RECORD);

    let unrequested: WatchedBuildRecord = serde_json::from_str(STORED_UNREQUESTED).unwrap();
    assert!(!unrequested.requested);
    assert_eq!(unrequested.state.lifecycle, Lifecycle::InProgress);
    assert_eq!(
        serde_json::to_string(&unrequested).unwrap(),
        STORED_UNREQUESTED
    );

    let entry: InFlightRecord = serde_json::from_str(STORED_IN_FLIGHT).unwrap();
    assert_eq!(entry.last_heard_ms, 5);
    assert_eq!(serde_json::to_string(&entry).unwrap(), STORED_IN_FLIGHT);
}

#[test]
fn records_written_before_the_request_was_kept_still_read() {
    let old = r#"{"build_id":"proj:1","requested":true,"requested_event_id":"evt",
        "build":{"repository":"PRX/app","commit":"abc"},"last_heard_ms":5}"#;
    let record: WatchedBuildRecord = serde_json::from_str(old).unwrap();
    assert!(record.requested);
    assert_eq!(record.request, None);
    assert_eq!(record.build.repository, "PRX/app");
    let with = WatchedBuildRecord {
        request: Some(RequestData {
            branch: "main".into(),
            fork: true,
            ..Default::default()
        }),
        ..record
    };
    let back: WatchedBuildRecord =
        serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert_eq!(back, with);
}

#[test]
fn chains_survive_the_record() {
    let envelope = v1::Envelope {
        event_id: "req-1".into(),
        correlation_id: "delivery-1".into(),
        ordering_key: Some(v1::OrderingKey {
            repository: "PRX/app".into(),
            lane: Some(v1::ordering_key::Lane::PullRequest(7)),
        }),
        push_sequence: 42,
        ..Default::default()
    };
    let data = ChainData::caused_by(&envelope);
    let json = serde_json::to_string(&data).unwrap();
    let back: ChainData = serde_json::from_str(&json).unwrap();
    assert_eq!(back.to_chain(), Chain::caused_by(&envelope));
    let none = ChainData::default().to_chain();
    assert_eq!(none.ordering_key, None);
}

#[test]
fn a_request_starts_a_record_heard_of_at_the_request_and_a_redelivery_changes_nothing() {
    let (envelope, request) = request_envelope(requested_ref());
    let mut record = WatchedBuildRecord::default();
    assert!(record.is_new());
    assert!(record.record_request("proj:8745a7a9", at(100), &envelope, &request));
    assert!(!record.is_new());
    assert_eq!(record.build_id, "proj:8745a7a9");
    assert_eq!(record.last_heard_ms, 100_000);
    assert!(record.requested);
    assert_eq!(record.requested_event_id, "evt-req");
    assert_eq!(record.build, requested_ref());
    assert_eq!(record.request.as_ref().unwrap().branch, "main");
    assert_eq!(record.chain.to_chain(), Chain::caused_by(&envelope));
    assert_eq!(record.state.lifecycle, Lifecycle::Pending);

    let stored = record.clone();
    assert!(!record.record_request("proj:8745a7a9", at(200), &envelope, &request));
    assert_eq!(
        record, stored,
        "a redelivery keeps even when it was first heard of"
    );
}

#[test]
fn a_late_request_takes_over_a_record_reports_started_keeping_what_they_taught() {
    let mut record = WatchedBuildRecord::unrequested(
        &report("IN_PROGRESS"),
        &v1::Envelope {
            event_id: "evt-report".into(),
            correlation_id: "evt-report".into(),
            push_sequence: 9,
            ..Default::default()
        },
    );
    record.state.lifecycle = Lifecycle::InProgress;
    record.last_heard_ms = 7;
    let taught = record.build.clone();
    assert!(
        taught.log_url.contains("console.aws.amazon.com"),
        "{}",
        taught.log_url
    );
    assert_eq!(taught.region, "us-west-2");

    let (envelope, request) = request_envelope(requested_ref());
    assert!(record.record_request("proj:8745a7a9", at(100), &envelope, &request));
    assert_eq!(record.build.build_request_id, "req-1");
    assert_eq!(
        record.build.log_url, taught.log_url,
        "the request had no log link"
    );
    assert_eq!(
        record.build.region, "us-west-2",
        "the request had no region"
    );
    assert_eq!(record.chain.causation_id, "evt-req");
    assert_eq!(record.chain.push_sequence, 42);
    assert_eq!(
        record.state.lifecycle,
        Lifecycle::InProgress,
        "state is the reports'"
    );
    assert_eq!(
        record.last_heard_ms, 7,
        "the request is not news of the build"
    );

    let (envelope, request) = request_envelope(v1::BuildRef {
        log_url: "https://requested".into(),
        region: "eu-west-1".into(),
        ..requested_ref()
    });
    assert!(record.record_request("proj:8745a7a9", at(100), &envelope, &request));
    assert_eq!(
        record.build.log_url, "https://requested",
        "what the request says wins"
    );
    assert_eq!(record.build.region, "eu-west-1");
}

#[test]
fn a_build_nobody_requested_is_recorded_from_its_report_in_a_chain_without_push() {
    let envelope = v1::Envelope {
        event_id: "evt-report".into(),
        correlation_id: "corr".into(),
        push_sequence: 9,
        ..Default::default()
    };
    let record = WatchedBuildRecord::unrequested(&report("IN_PROGRESS"), &envelope);
    assert_eq!(record.build_id, "proj:8745a7a9");
    assert!(!record.requested);
    assert_eq!(record.request, None);
    assert_eq!(record.build.repository, "PRX/app");
    assert_eq!(record.build.backend, "codebuild");
    assert_eq!(record.chain.causation_id, "evt-report");
    assert_eq!(record.chain.correlation_id, "corr");
    assert_eq!(record.chain.push_sequence, 0);
    assert_eq!(record.state, BuildState::default());
}

#[test]
fn a_console_retry_takes_the_original_request_and_chain_and_keeps_its_own_build() {
    let (envelope, mut request) = request_envelope(v1::BuildRef {
        build_id: "proj:original".into(),
        architecture: v1::Architecture::X8664 as i32,
        log_url: "https://original-log".into(),
        ..requested_ref()
    });
    request.environment = [("PRX_CI_PUBLISH".to_owned(), "true".to_owned())].into();
    let original =
        crate::console_retry::RequestedBuild::from_request("proj:original", &envelope, &request);
    let retry = report("IN_PROGRESS");
    let record = WatchedBuildRecord::adopted(&retry, &original);
    assert_eq!(record.build_id, "proj:8745a7a9", "the retry's own id");
    assert_eq!(record.build.build_id, ARN);
    assert_eq!(record.build.retry_of, "proj:original");
    assert_eq!(
        record.build.build_request_id, "",
        "not the original's request"
    );
    assert_eq!(record.build.project, "proj");
    assert_eq!(record.build.region, "us-west-2");
    assert_ne!(record.build.log_url, "https://original-log");
    assert_eq!(
        (
            record.build.repository.as_str(),
            record.build.commit.as_str()
        ),
        ("PRX/app", "4f2c")
    );
    assert_eq!(record.build.architecture(), v1::Architecture::X8664);
    assert!(record.requested);
    assert_eq!(record.requested_event_id, "evt-req");
    assert_eq!(record.request, Some(RequestData::from(&request)));
    assert_eq!(record.chain, ChainData::caused_by(&envelope));
    assert_eq!(record.chain.push_sequence, 42);
    assert_eq!(record.cancelled, None);
    assert_eq!(record.state, BuildState::default());
    // Its JSON reads back; records of builds that are no retry keep their shape.
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains(r#""retry_of":"proj:original""#), "{json}");
    assert_eq!(
        serde_json::from_str::<WatchedBuildRecord>(&json).unwrap(),
        record
    );
}

#[test]
fn a_cancellation_is_recorded_once_and_only_for_a_known_build() {
    let cancel = CancelData {
        event_id: "evt-cancel".into(),
        superseded_by_sequence: 43,
        superseded_by_commit: "5a6b".into(),
    };
    let mut unknown = WatchedBuildRecord::default();
    assert!(!unknown.record_cancel(cancel.clone()));
    assert_eq!(unknown, WatchedBuildRecord::default());

    let mut record: WatchedBuildRecord = serde_json::from_str(STORED_UNREQUESTED).unwrap();
    assert!(record.record_cancel(cancel.clone()));
    assert_eq!(record.cancelled.as_ref(), Some(&cancel));
    assert!(!record.record_cancel(cancel.clone()), "a redelivery");
    let later = CancelData {
        event_id: "evt-cancel-2".into(),
        superseded_by_sequence: 44,
        ..cancel
    };
    assert!(record.record_cancel(later.clone()));
    assert_eq!(record.cancelled, Some(later));
}

#[test]
fn cancellations_come_from_the_event() {
    let envelope = v1::Envelope {
        event_id: "evt-cancel".into(),
        ..Default::default()
    };
    let cancelled = v1::BuildCancelled {
        superseded_by_sequence: 43,
        superseded_by_commit: "5a6b".into(),
        ..Default::default()
    };
    assert_eq!(
        CancelData::from_event(&envelope, &cancelled),
        CancelData {
            event_id: "evt-cancel".into(),
            superseded_by_sequence: 43,
            superseded_by_commit: "5a6b".into(),
        }
    );
}

#[test]
fn a_report_that_moves_the_build_records_state_phases_final_status_and_links() {
    let (envelope, request) = request_envelope(requested_ref());
    let mut record = WatchedBuildRecord::default();
    record.record_request("proj:8745a7a9", at(100), &envelope, &request);

    let failed = report("FAILED");
    let outcome = state::apply_report(&record.state, &failed);
    assert_eq!(outcome.transitions.len(), 2);
    record.record_report(&failed, &outcome, at(300));
    assert_eq!(record.state, outcome.state);
    assert_eq!(record.last_heard_ms, 300_000);
    assert_eq!(record.final_status.as_deref(), Some("FAILED"));
    assert_eq!(
        record
            .phases
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["SUBMITTED", "BUILD"]
    );
    assert!(record.build.log_url.contains("console.aws.amazon.com"));
    assert_eq!(record.build.region, "us-west-2");
    assert_eq!(
        record.build.build_request_id, "req-1",
        "the request's reference stays"
    );
}

#[test]
fn a_phase_change_moves_state_but_keeps_the_phase_list_of_state_changes() {
    let mut record: WatchedBuildRecord = serde_json::from_str(STORED_UNREQUESTED).unwrap();
    let phase = report("phase");
    let outcome = state::apply_report(&record.state, &phase);
    assert_eq!(
        outcome.transitions,
        vec![Transition::PhaseChanged {
            phase: "BUILD".into()
        }]
    );
    record.record_report(&phase, &outcome, at(10));
    assert!(
        record.phases.is_empty(),
        "phase changes do not replace the list"
    );
    assert_eq!(record.state.phases_reported, ["BUILD"]);
    assert_eq!(record.final_status, None);
    assert!(
        record.build.log_url.contains("console.aws.amazon.com"),
        "a build nobody requested takes the report's link"
    );
}

#[test]
fn a_report_that_moves_nothing_only_refreshes_when_the_build_was_heard_of() {
    let mut record: WatchedBuildRecord = serde_json::from_str(STORED_RECORD).unwrap();
    let before = record.clone();
    let late = report("SUCCEEDED");
    let outcome = state::apply_report(&record.state, &late);
    assert!(outcome.transitions.is_empty());
    record.record_report(&late, &outcome, at(1));
    assert_eq!(record.last_heard_ms, 1000);
    assert_eq!(
        WatchedBuildRecord {
            last_heard_ms: before.last_heard_ms,
            ..record
        },
        before,
        "phases, first final status and links stay"
    );
}

#[test]
fn the_in_flight_entry_names_the_build_its_backend_and_when_it_was_heard_of() {
    let record: WatchedBuildRecord = serde_json::from_str(STORED_UNREQUESTED).unwrap();
    assert_eq!(
        record.in_flight(),
        InFlightRecord {
            build_id: "local:1".into(),
            backend: "local".into(),
            last_heard_ms: 5,
        }
    );
}
