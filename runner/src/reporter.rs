//! The reports: CodeBuild-shaped events of a build's timeline, and the loop publishing them.
//!
//! Events are EventBridge `CodeBuild Build State Change` / `CodeBuild Build Phase Change`,
//! wrapped in `BuildReportReceived` envelopes with ids derived from (build id, transition) so a
//! retried publish deduplicates; one loop per build publishes them in order, until stored.

use std::time::Duration;

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::Chain;
use prx_ci_shared::bus::envelope::derived_event_id;
use prx_ci_shared::bus::publish::{EventPublisher, PublishError};
use prx_ci_shared::codebuild::build::{LOCAL_BACKEND, format_codebuild_time, status};
use prx_ci_shared::codebuild::event::{
    self, AdditionalInformation, CodeBuildEvent, Detail, Environment, EnvironmentVariable, Logs,
    NameValue, Phase, Source,
};
use prx_ci_shared::retry::{Backoff, Retry, retry};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `source` of the envelopes' `BuildReportReceived`.
pub const REPORT_SOURCE: &str = LOCAL_BACKEND;
/// The CodeBuild project name the local runner reports.
pub const PROJECT: &str = LOCAL_BACKEND;
/// The initiator reported in the events.
pub const INITIATOR: &str = "prx-ci-local-runner";

/// EventBridge's `time` (`2017-09-01T16:14:28Z`).
const EVENT_TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

fn event_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(EVENT_TIME)
        .unwrap_or_default()
}

/// What stays the same for every event of one build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildInfo {
    pub build_id: String,
    /// `owner/repo`.
    pub repository: String,
    pub account: String,
    pub region: String,
    pub clone_url: String,
    pub source_version: String,
    pub start_time: OffsetDateTime,
    pub timeout_minutes: u64,
    /// Project variables and the dispatcher's variables (what CodeBuild reports).
    pub environment: Vec<(String, String)>,
    pub log_url: String,
    pub log_path: String,
}

/// One phase as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseRecord {
    pub phase_type: String,
    pub status: Option<String>,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    pub context: Vec<String>,
}

impl PhaseRecord {
    fn duration_seconds(&self) -> Option<u64> {
        let end = self.end?;
        u64::try_from((end - self.start).whole_seconds()).ok()
    }

    fn to_phase(&self) -> Phase {
        Phase {
            phase_type: self.phase_type.clone(),
            phase_status: self.status.clone(),
            start_time: Some(format_codebuild_time(self.start)),
            end_time: self.end.map(format_codebuild_time),
            duration_in_seconds: self.duration_seconds(),
            phase_context: self.context.clone(),
        }
    }
}

/// The phases so far and the reports they produce.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub info: BuildInfo,
    pub phases: Vec<PhaseRecord>,
}

impl Timeline {
    pub fn new(info: BuildInfo) -> Self {
        Self {
            info,
            phases: Vec::new(),
        }
    }

    /// The phase in progress, if any.
    pub fn current(&self) -> Option<&PhaseRecord> {
        self.phases.last().filter(|p| p.end.is_none())
    }

    /// Starts `phase_type` at `at`.
    pub fn start_phase(&mut self, phase_type: &str, at: OffsetDateTime) {
        self.phases.push(PhaseRecord {
            phase_type: phase_type.to_owned(),
            status: None,
            start: at,
            end: None,
            context: Vec::new(),
        });
    }

    /// Ends the current phase; returns its phase-change event (`None` when no phase runs).
    pub fn end_phase(
        &mut self,
        status: &str,
        context: Vec<String>,
        at: OffsetDateTime,
    ) -> Option<CodeBuildEvent> {
        let phase = self.phases.last_mut().filter(|p| p.end.is_none())?;
        phase.status = Some(status.to_owned());
        phase.end = Some(at);
        phase.context = context;
        let done = phase.clone();
        let mut event = self.event(
            event::PHASE_CHANGE,
            &format!("phase:{}", done.phase_type),
            at,
        );
        let d = &mut event.detail;
        d.completed_phase = Some(done.phase_type.clone());
        d.completed_phase_status = done.status.clone();
        d.completed_phase_context = Some(format!("[{}]", done.context.join(", ")));
        d.completed_phase_duration_seconds = done.duration_seconds();
        d.completed_phase_start = Some(format_codebuild_time(done.start));
        d.completed_phase_end = done.end.map(format_codebuild_time);
        Some(event)
    }

    /// The `IN_PROGRESS` state change sent when the build is accepted.
    pub fn started(&self, at: OffsetDateTime) -> CodeBuildEvent {
        let mut event = self.event(event::STATE_CHANGE, "state:IN_PROGRESS", at);
        event.detail.build_status = Some(status::IN_PROGRESS.to_owned());
        event.detail.current_phase = self.current().map(|p| p.phase_type.clone());
        event.detail.current_phase_context = Some("[]".to_owned());
        event
    }

    /// The final state change: `build-complete: true`, every phase, the exported variables.
    /// Opens the `COMPLETED` phase (which has no end) like CodeBuild.
    pub fn completed(
        &mut self,
        build_status: &str,
        exported: Vec<(String, String)>,
        at: OffsetDateTime,
    ) -> CodeBuildEvent {
        if self
            .phases
            .last()
            .is_none_or(|p| p.phase_type != "COMPLETED")
        {
            self.start_phase("COMPLETED", at);
        }
        let mut event = self.event(event::STATE_CHANGE, "state:complete", at);
        event.detail.build_status = Some(build_status.to_owned());
        event.detail.current_phase = Some("COMPLETED".to_owned());
        event.detail.current_phase_context = Some("[]".to_owned());
        let info = &mut event.detail.additional_information;
        info.build_complete = Some(true);
        info.exported_environment_variables = exported
            .into_iter()
            .map(|(name, value)| NameValue { name, value })
            .collect();
        event
    }

    fn event(&self, detail_type: &str, transition: &str, at: OffsetDateTime) -> CodeBuildEvent {
        let info = &self.info;
        CodeBuildEvent {
            version: "0".to_owned(),
            id: derived_event_id(&info.build_id, &["eventbridge", transition]),
            detail_type: detail_type.to_owned(),
            source: event::SOURCE.to_owned(),
            account: info.account.clone(),
            time: event_time(at),
            region: info.region.clone(),
            resources: vec![info.build_id.clone()],
            detail: Detail {
                project_name: PROJECT.to_owned(),
                build_id: info.build_id.clone(),
                additional_information: AdditionalInformation {
                    build_complete: Some(false),
                    initiator: Some(INITIATOR.to_owned()),
                    build_start_time: Some(format_codebuild_time(info.start_time)),
                    source_version: Some(info.source_version.clone()),
                    source: Some(Source {
                        location: info.clone_url.clone(),
                        kind: "GIT".to_owned(),
                    }),
                    timeout_in_minutes: Some(info.timeout_minutes),
                    environment: Environment {
                        image: "local".to_owned(),
                        kind: "LOCAL".to_owned(),
                        compute_type: String::new(),
                        environment_variables: info
                            .environment
                            .iter()
                            .map(|(name, value)| EnvironmentVariable {
                                name: name.clone(),
                                value: value.clone(),
                                kind: "PLAINTEXT".to_owned(),
                            })
                            .collect(),
                    },
                    logs: Some(Logs {
                        group_name: String::new(),
                        stream_name: info.log_path.clone(),
                        deep_link: info.log_url.clone(),
                    }),
                    phases: self.phases.iter().map(PhaseRecord::to_phase).collect(),
                    exported_environment_variables: Vec::new(),
                },
                version: "1".to_owned(),
                ..Detail::default()
            },
        }
    }
}

/// The envelope carrying `event` (its id derived from the build id and the event's own
/// deterministic id, so a retry or a replay of the same transition deduplicates). `log_tail`:
/// on the final report of a build that did not succeed, the end of its log
/// (`BuildLog::tail`).
pub fn envelope(
    event: &CodeBuildEvent,
    repository: &str,
    at: OffsetDateTime,
    log_tail: Option<v1::LogTail>,
) -> Envelope {
    let event_json = serde_json::to_vec(event).unwrap_or_default();
    Chain::default().envelope_at(
        derived_event_id(&event.detail.build_id, &["report", &event.id]),
        at,
        Payload::BuildReportReceived(v1::BuildReportReceived {
            event_json,
            source: REPORT_SOURCE.to_owned(),
            build_id: event.detail.build_id.clone(),
            repository: repository.to_owned(),
            log_tail,
        }),
    )
}

/// Backoff for publishing reports: retried as long as the runner runs (a report is never
/// dropped because the broker is briefly down).
const REPORT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(5),
    max_attempts: u32::MAX,
};

/// After shutdown starts, how long unsent reports are still retried.
const SHUTDOWN_REPORT_GRACE: Duration = Duration::from_secs(10);

/// Which publish failures are worth retrying: all but a malformed envelope, which no retry
/// can fix.
fn retry_decision(err: &PublishError) -> Retry {
    match err {
        PublishError::Envelope(_) => Retry::Never,
        _ => Retry::Backoff,
    }
}

/// Publishes one report, retrying until stored; gives up only some time after shutdown.
/// Returns whether it was stored.
pub async fn publish_report(
    publisher: &EventPublisher,
    envelope: &Envelope,
    shutdown: &CancellationToken,
) -> bool {
    let publish = retry(
        &REPORT_BACKOFF,
        |_| publisher.publish(envelope),
        retry_decision,
    );
    let give_up = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_REPORT_GRACE).await;
    };
    tokio::select! {
        result = publish => match result {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(event_id = %envelope.event_id, error = %err, "build report lost");
                false
            }
        },
        () = give_up => {
            tracing::error!(event_id = %envelope.event_id, "build report not stored before shutdown");
            false
        }
    }
}

/// Publishes a build's reports one at a time, in order, each after the previous one's ack;
/// ends when every sender is gone. Returns whether all were stored.
pub async fn run_reporter(
    publisher: EventPublisher,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    shutdown: CancellationToken,
) -> bool {
    let mut all_stored = true;
    while let Some(envelope) = rx.recv().await {
        all_stored &= publish_report(&publisher, &envelope, &shutdown).await;
    }
    all_stored
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn timeline() -> Timeline {
        Timeline::new(BuildInfo {
            build_id: "local:1234".into(),
            repository: "PRX/app".into(),
            account: "000000000000".into(),
            region: String::new(),
            clone_url: "file:///tmp/app".into(),
            source_version: "abc".into(),
            start_time: datetime!(2017-09-01 16:12:29 UTC),
            timeout_minutes: 16,
            environment: vec![("PRX_REPO".into(), "PRX/app".into())],
            log_url: "file:///data/builds/1234.log".into(),
            log_path: "/data/builds/1234.log".into(),
        })
    }

    #[test]
    fn codebuild_time_format() {
        assert_eq!(
            format_codebuild_time(datetime!(2017-09-01 16:12:29 UTC)),
            "Sep 1, 2017 4:12:29 PM"
        );
        assert_eq!(
            format_codebuild_time(datetime!(2024-12-11 00:05:09 UTC)),
            "Dec 11, 2024 12:05:09 AM"
        );
    }

    #[test]
    fn events_have_the_eventbridge_shape() {
        let mut t = timeline();
        let t0 = datetime!(2017-09-01 16:12:29 UTC);
        t.start_phase("SUBMITTED", t0);
        let started = serde_json::to_value(t.started(t0)).unwrap();
        assert_eq!(started["detail-type"], "CodeBuild Build State Change");
        assert_eq!(started["source"], "aws.codebuild");
        assert_eq!(started["time"], "2017-09-01T16:12:29Z");
        assert_eq!(started["detail"]["build-status"], "IN_PROGRESS");
        assert_eq!(started["detail"]["current-phase"], "SUBMITTED");
        assert_eq!(started["detail"]["build-id"], "local:1234");
        assert_eq!(
            started["detail"]["additional-information"]["environment"]["environment-variables"][0],
            serde_json::json!({"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"})
        );
        assert_eq!(
            started["detail"]["additional-information"]["logs"]["deep-link"],
            "file:///data/builds/1234.log"
        );

        let phase = t
            .end_phase(
                "FAILED",
                vec!["COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1".into()],
                t0 + time::Duration::seconds(3),
            )
            .unwrap();
        let phase = serde_json::to_value(phase).unwrap();
        assert_eq!(phase["detail-type"], "CodeBuild Build Phase Change");
        assert_eq!(phase["detail"]["completed-phase"], "SUBMITTED");
        assert_eq!(phase["detail"]["completed-phase-status"], "FAILED");
        assert_eq!(phase["detail"]["completed-phase-duration-seconds"], 3);
        assert_eq!(
            phase["detail"]["completed-phase-context"],
            "[COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1]"
        );
        assert!(
            t.end_phase("SUCCEEDED", vec![], t0).is_none(),
            "no phase runs"
        );

        let done = t.completed(
            status::FAILED,
            vec![("OUT".into(), "x".into())],
            t0 + time::Duration::seconds(4),
        );
        assert_eq!(
            done.detail.additional_information.build_complete,
            Some(true)
        );
        assert_eq!(done.detail.additional_information.phases.len(), 2);
        assert_eq!(
            done.detail.additional_information.phases[1].phase_type,
            "COMPLETED"
        );
        assert_eq!(done.merged_variables()["OUT"], "x");
        // Deterministic ids per (build, transition).
        let again = t.completed(status::FAILED, vec![], t0);
        assert_eq!(done.id, again.id);
        assert_eq!(t.phases.len(), 2, "COMPLETED opened once");
        let env = envelope(&done, "PRX/app", t0, None);
        assert_eq!(env.event_id, envelope(&again, "PRX/app", t0, None).event_id);
        assert_ne!(env.event_id, done.id);
        assert_eq!(
            prx_ci_shared::bus::envelope::subject_of(&env).unwrap(),
            "prx.runner.report.PRX.app"
        );
    }

    #[test]
    fn only_a_malformed_envelope_is_never_retried() {
        use prx_ci_shared::bus::envelope::EnvelopeError;
        assert_eq!(
            retry_decision(&PublishError::Envelope(EnvelopeError::NoPayload)),
            Retry::Never
        );
        assert_eq!(
            retry_decision(&PublishError::Envelope(EnvelopeError::NoEventId)),
            Retry::Never
        );
        let unacknowledged = PublishError::Timeout {
            event_id: "e".into(),
            subject: "prx.runner.report.PRX.app".into(),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(retry_decision(&unacknowledged), Retry::Backoff);
    }
}
