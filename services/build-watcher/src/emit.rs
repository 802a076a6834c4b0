//! Turning a transition into the event that records it. Pure: no I/O.
//!
//! Event ids depend only on the build id and the transition (`started`, `phase/<name>`,
//! `completed`), never on which source reported it or when: a transition reported by SQS and
//! by the reconciler, or handled twice after a crash, is stored once by JetStream.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{derived_event_id, timestamp};
use time::OffsetDateTime;

use crate::report::{PhaseInfo, Report};
use crate::state::Transition;
use crate::watched_build::WatchedBuildRecord;

/// The id of the event recording `transition` of `build_id` (normalized).
pub fn transition_event_id(build_id: &str, transition: &Transition) -> String {
    let cause = format!("build:{build_id}");
    match transition {
        Transition::Started => derived_event_id(&cause, &["started"]),
        Transition::PhaseChanged { phase } => derived_event_id(&cause, &["phase", phase]),
        Transition::Completed { .. } => derived_event_id(&cause, &["completed"]),
    }
}

/// The short name of a transition (logs, metrics).
pub fn transition_name(transition: &Transition) -> &'static str {
    match transition {
        Transition::Started => "started",
        Transition::PhaseChanged { .. } => "phase",
        Transition::Completed { .. } => "completed",
    }
}

/// The build reference events carry: the requested one, completed with what the report adds
/// (log link, region) when the request did not know it.
pub fn build_ref(record: &WatchedBuildRecord, report: &Report) -> v1::BuildRef {
    let mut build = record.build.clone();
    let reported = report.build_ref();
    if build.build_id.is_empty() {
        build.build_id = reported.build_id;
    }
    let log_url = report.log_url();
    if !log_url.is_empty() && (build.log_url.is_empty() || !record.requested) {
        build.log_url = log_url;
    }
    if build.region.is_empty() {
        build.region = reported.region;
    }
    if build.project.is_empty() {
        build.project = reported.project;
    }
    if build.backend.is_empty() {
        build.backend = reported.backend;
    }
    build
}

fn phase_details(report: &Report, phase: &str) -> PhaseInfo {
    if let Some(completed) = report.completed_phase().filter(|p| p.name == phase) {
        return completed;
    }
    report
        .phases()
        .into_iter()
        .find(|p| p.name == phase)
        .unwrap_or(PhaseInfo {
            name: phase.to_owned(),
            status: String::new(),
            duration_ms: 0,
            message: String::new(),
            ended: true,
        })
}

/// The envelope recording `transition`, in the build's chain. `log_tail`: the completion's
/// (made by the handler, which reads the log; only a completion carries it).
pub fn transition_event(
    record: &WatchedBuildRecord,
    report: &Report,
    transition: &Transition,
    now: OffsetDateTime,
    log_tail: Option<&v1::LogTail>,
) -> v1::Envelope {
    let chain = record.chain.to_chain();
    let id = transition_event_id(&record.build_id, transition);
    let build = build_ref(record, report);
    // The dispatcher's decision travels with the build: downstream trusts it, not the build's
    // own (exported) variables.
    let requested = record
        .request
        .as_ref()
        .filter(|_| record.requested)
        .map(|r| r.to_proto(build.clone()));
    let build = Some(build);
    let reported_at = report.time().unwrap_or(now);
    match transition {
        Transition::Started => {
            let started_at = report.started_at().unwrap_or(reported_at);
            chain.envelope_at(
                id,
                started_at,
                Payload::BuildStarted(v1::BuildStarted {
                    build,
                    started_at: Some(timestamp(started_at)),
                    environment: report.environment().into_iter().collect(),
                    requested,
                }),
            )
        }
        Transition::PhaseChanged { phase } => {
            let details = phase_details(report, phase);
            let at = report.completed_phase_end(phase).unwrap_or(reported_at);
            chain.envelope_at(
                id,
                at,
                Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
                    build,
                    completed_phase: details.name,
                    completed_phase_status: details.status,
                    current_phase: report.phase_after(phase),
                    at: Some(timestamp(at)),
                    message: details.message,
                    duration_ms: details.duration_ms,
                }),
            )
        }
        Transition::Completed { status } => {
            let finished_at = report.finished_at().unwrap_or(reported_at);
            let failed = report.failed_phase();
            chain.envelope_at(
                id,
                finished_at,
                Payload::BuildCompleted(v1::BuildCompleted {
                    build,
                    status: status.to_proto() as i32,
                    variables: report.event.merged_variables().into_iter().collect(),
                    failed_phase: failed.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
                    failure_message: failed.map(|p| p.message).unwrap_or_default(),
                    duration_ms: report.duration_ms(),
                    phases: report.phases().iter().map(PhaseInfo::to_proto).collect(),
                    finished_at: Some(timestamp(finished_at)),
                    exported_variables: report.exported_variables().into_iter().collect(),
                    requested,
                    log_tail: log_tail.cloned(),
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prx_ci_shared::codebuild::build::FinalStatus;

    use crate::report::parse_report;
    use crate::watched_build::{ChainData, RequestData};

    fn record() -> WatchedBuildRecord {
        WatchedBuildRecord {
            build_id: "proj:1".into(),
            build: v1::BuildRef {
                build_id: "proj:1".into(),
                build_request_id: "req".into(),
                repository: "PRX/app".into(),
                commit: "c".repeat(40),
                backend: "codebuild".into(),
                project: "proj".into(),
                ..Default::default()
            },
            requested: true,
            requested_event_id: "evt-req".into(),
            request: Some(RequestData {
                environment: [("PRX_CI_PUBLISH".to_owned(), "false".to_owned())]
                    .into_iter()
                    .collect(),
                event_name: "pull_request".into(),
                action: "synchronize".into(),
                branch: "feature".into(),
                pull_request: 12,
                fork: true,
                ..Default::default()
            }),
            chain: ChainData {
                correlation_id: "delivery".into(),
                causation_id: "evt-req".into(),
                repository: "PRX/app".into(),
                branch: Some("main".into()),
                pull_request: None,
                push_sequence: 9,
            },
            ..Default::default()
        }
    }

    fn final_report() -> Report {
        parse_report(
            serde_json::json!({
                "id": "e", "time": "2017-09-01T16:14:28Z", "region": "us-east-1",
                "detail-type": "CodeBuild Build State Change",
                "detail": {
                    "build-status": "FAILED",
                    "build-id": "arn:aws:codebuild:us-east-1:1:build/proj:1",
                    "project-name": "proj",
                    "additional-information": {
                        "build-start-time": "Sep 1, 2017 4:12:29 PM",
                        "environment": {"environment-variables": [
                            {"name": "PRX_CI_PUBLISH", "value": "false", "type": "PLAINTEXT"},
                            {"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"}
                        ]},
                        "exported-environment-variables": [{"name": "PRX_CI_PUBLISH", "value": "true"}],
                        "phases": [
                            {"phase-type": "BUILD", "phase-status": "FAILED", "duration-in-seconds": 5,
                             "end-time": "Sep 1, 2017 4:13:29 PM", "phase-context": ["COMMAND_EXECUTION_ERROR: boom"]},
                            {"phase-type": "COMPLETED", "start-time": "Sep 1, 2017 4:13:30 PM"}
                        ]
                    }
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn ids_depend_on_build_and_transition_only() {
        let a = transition_event_id("proj:1", &Transition::Started);
        assert_eq!(a, transition_event_id("proj:1", &Transition::Started));
        assert_ne!(a, transition_event_id("proj:2", &Transition::Started));
        let done = |s| Transition::Completed { status: s };
        assert_eq!(
            transition_event_id("proj:1", &done(FinalStatus::Failed)),
            transition_event_id("proj:1", &done(FinalStatus::Succeeded)),
            "one completion per build, whatever status a late source claims"
        );
        assert_ne!(
            transition_event_id(
                "proj:1",
                &Transition::PhaseChanged {
                    phase: "BUILD".into()
                }
            ),
            transition_event_id(
                "proj:1",
                &Transition::PhaseChanged {
                    phase: "INSTALL".into()
                }
            )
        );
    }

    #[test]
    fn completed_carries_merge_failure_duration_and_chain() {
        let env = transition_event(
            &record(),
            &final_report(),
            &Transition::Completed {
                status: FinalStatus::Failed,
            },
            OffsetDateTime::now_utc(),
            None,
        );
        assert_eq!(env.correlation_id, "delivery");
        assert_eq!(env.causation_id, "evt-req");
        assert_eq!(env.push_sequence, 9);
        assert_eq!(env.ordering_key.as_ref().unwrap().repository, "PRX/app");
        let Some(Payload::BuildCompleted(c)) = env.payload else {
            panic!("not completed")
        };
        assert_eq!(c.status, v1::BuildStatus::Failed as i32);
        assert_eq!(c.variables["PRX_CI_PUBLISH"], "true");
        assert_eq!(c.variables["PRX_REPO"], "PRX/app");
        assert_eq!(c.exported_variables.len(), 1);
        assert_eq!(c.failed_phase, "BUILD");
        assert_eq!(c.failure_message, "COMMAND_EXECUTION_ERROR: boom");
        assert_eq!(c.duration_ms, 61_000);
        assert_eq!(c.phases.len(), 2);
        let b = c.build.unwrap();
        assert_eq!(b.build_request_id, "req");
        assert_eq!(b.region, "us-east-1");
        assert!(
            b.log_url.contains("console.aws.amazon.com"),
            "{}",
            b.log_url
        );
    }

    #[test]
    fn started_and_completed_carry_the_request_and_builds_nobody_requested_none() {
        let completed = Transition::Completed {
            status: FinalStatus::Failed,
        };
        let now = OffsetDateTime::now_utc();
        for transition in [Transition::Started, completed.clone()] {
            let env = transition_event(&record(), &final_report(), &transition, now, None);
            let requested = match env.payload {
                Some(Payload::BuildStarted(s)) => s.requested,
                Some(Payload::BuildCompleted(c)) => c.requested,
                other => panic!("{other:?}"),
            }
            .expect("the request travels with the build");
            assert_eq!(requested.branch, "feature");
            assert_eq!(requested.pull_request, 12);
            assert!(requested.fork);
            assert_eq!(requested.environment["PRX_CI_PUBLISH"], "false");
            assert!(requested.buildspec.is_empty());
            let build = requested.build.unwrap();
            assert_eq!(
                (build.repository.as_str(), build.build_id.as_str()),
                ("PRX/app", "proj:1")
            );
        }
        let nobodys = WatchedBuildRecord {
            requested: false,
            request: None,
            ..record()
        };
        let env = transition_event(&nobodys, &final_report(), &completed, now, None);
        let Some(Payload::BuildCompleted(c)) = env.payload else {
            panic!("not completed")
        };
        assert_eq!(c.requested, None);
    }
}
