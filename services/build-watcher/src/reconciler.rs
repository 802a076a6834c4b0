//! The reconciler: asks CodeBuild (`BatchGetBuilds`) about builds in flight that have not been
//! heard of for `reconcile_after` (and, at start-up, about every build in flight), and stores
//! what it learns as an ordinary report (source `reconciler`, a synthesized `CodeBuild Build
//! State Change`), so a lost or delayed EventBridge event is caught by the same state machine.
//!
//! It reads only the in-flight index, so its AWS calls grow with builds in flight, never with
//! history: `ceil(due / batch_size)` calls per pass, spaced by `reconcile_call_spacing`.
//! Local builds (`local:` ids) and shadow requests' pseudo builds (backend `shadow`) are never
//! looked up in AWS. Several replicas each run a
//! reconciler; their reports carry the same ids for the same observation, so JetStream keeps
//! one, and the state machine ignores what it already knows.

use std::time::Duration;

use aws_sdk_codebuild::types::Build;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::build::{
    LOCAL_BACKEND, SHADOW_BACKEND, format_codebuild_time, is_local_build, parse_arn,
};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::codebuild::event::{
    self, AdditionalInformation, CodeBuildEvent, Detail, Environment, EnvironmentVariable, Logs,
    NameValue, Phase, Source,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::build_store::BuildStore;
use crate::metrics::Metrics;
use crate::watched_build::{InFlightRecord, unix_ms};

/// `source` of the reconciler's reports.
pub const SOURCE: &str = "reconciler";

fn to_time(t: &aws_smithy_types::DateTime) -> Option<OffsetDateTime> {
    let nanos = i128::from(t.secs()) * 1_000_000_000 + i128::from(t.subsec_nanos());
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

fn cb_time(t: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    t.and_then(to_time).map(format_codebuild_time)
}

/// A `CodeBuild Build State Change` event describing what `BatchGetBuilds` returned, as
/// EventBridge would have sent it.
pub fn event_from_build(build: &Build, observed_at: OffsetDateTime) -> CodeBuildEvent {
    let arn = build.arn().unwrap_or_default().to_owned();
    let id = build.id().unwrap_or_default();
    let parsed = parse_arn(&arn);
    let status = build
        .build_status()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let phases: Vec<Phase> = build
        .phases()
        .iter()
        .map(|p| Phase {
            phase_type: p
                .phase_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            phase_status: p.phase_status().map(|s| s.as_str().to_owned()),
            start_time: cb_time(p.start_time()),
            end_time: cb_time(p.end_time()),
            duration_in_seconds: p.duration_in_seconds().and_then(|d| u64::try_from(d).ok()),
            phase_context: p
                .contexts()
                .iter()
                .map(|c| {
                    format!(
                        "{}: {}",
                        c.status_code().unwrap_or_default(),
                        c.message().unwrap_or_default()
                    )
                })
                .collect(),
        })
        .collect();
    let environment = build
        .environment()
        .map(|e| Environment {
            image: e.image().to_owned(),
            kind: e.r#type().as_str().to_owned(),
            compute_type: e.compute_type().as_str().to_owned(),
            environment_variables: e
                .environment_variables()
                .iter()
                .map(|v| EnvironmentVariable {
                    name: v.name().to_owned(),
                    value: v.value().to_owned(),
                    kind: v
                        .r#type()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                })
                .collect(),
        })
        .unwrap_or_default();
    // The same observation always gives the same event id (replicas, repeated polls).
    let ended = phases.iter().filter(|p| p.phase_status.is_some()).count();
    let event_id = derived_event_id(
        &format!("reconciler:{id}"),
        &[
            &status,
            build.current_phase().unwrap_or_default(),
            &ended.to_string(),
        ],
    );
    let time = build
        .end_time()
        .and_then(to_time)
        .unwrap_or(observed_at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    CodeBuildEvent {
        version: "0".into(),
        id: event_id,
        detail_type: event::STATE_CHANGE.into(),
        source: event::SOURCE.into(),
        account: parsed
            .as_ref()
            .map(|a| a.account.to_owned())
            .unwrap_or_default(),
        time,
        region: parsed
            .as_ref()
            .map(|a| a.region.to_owned())
            .unwrap_or_default(),
        resources: if arn.is_empty() {
            vec![]
        } else {
            vec![arn.clone()]
        },
        detail: Detail {
            build_status: Some(status),
            project_name: build.project_name().unwrap_or_default().to_owned(),
            build_id: if arn.is_empty() { id.to_owned() } else { arn },
            current_phase: build.current_phase().map(str::to_owned),
            additional_information: AdditionalInformation {
                build_complete: Some(build.build_complete()),
                initiator: build.initiator().map(str::to_owned),
                build_start_time: cb_time(build.start_time()),
                source_version: build
                    .resolved_source_version()
                    .or(build.source_version())
                    .map(str::to_owned),
                source: build.source().map(|s| Source {
                    location: s.location().unwrap_or_default().to_owned(),
                    kind: s.r#type().as_str().to_owned(),
                }),
                timeout_in_minutes: build
                    .timeout_in_minutes()
                    .and_then(|t| u64::try_from(t).ok()),
                environment,
                logs: build.logs().map(|l| Logs {
                    group_name: l.group_name().unwrap_or_default().to_owned(),
                    stream_name: l.stream_name().unwrap_or_default().to_owned(),
                    deep_link: l.deep_link().unwrap_or_default().to_owned(),
                }),
                phases,
                exported_environment_variables: build
                    .exported_environment_variables()
                    .iter()
                    .map(|v| NameValue {
                        name: v.name().unwrap_or_default().to_owned(),
                        value: v.value().unwrap_or_default().to_owned(),
                    })
                    .collect(),
            },
            ..Detail::default()
        },
    }
}

/// The report envelope of a synthesized event.
pub fn report_envelope(event: &CodeBuildEvent) -> v1::Envelope {
    let repository = event
        .detail
        .additional_information
        .environment
        .environment_variables
        .iter()
        .find(|v| v.name == env::REPO)
        .map(|v| v.value.clone())
        .unwrap_or_default();
    let time = OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    Chain::starting(&event.id).envelope_at(
        event.id.clone(),
        time,
        Payload::BuildReportReceived(v1::BuildReportReceived {
            event_json: serde_json::to_vec(event).unwrap_or_default(),
            source: SOURCE.into(),
            build_id: event.detail.build_id.clone(),
            repository,
            log_tail: None,
        }),
    )
}

/// Which in-flight builds are due: all at start-up, else those not heard of for `after`.
pub fn due_builds(
    entries: &[(InFlightRecord, u64)],
    now_ms: i64,
    after: Duration,
    everything: bool,
) -> Vec<(InFlightRecord, u64)> {
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    entries
        .iter()
        .filter(|(e, _)| {
            !is_local_build(&e.build_id)
                && e.backend != LOCAL_BACKEND
                && e.backend != SHADOW_BACKEND
        })
        .filter(|(e, _)| everything || now_ms.saturating_sub(e.last_heard_ms) >= after_ms)
        .cloned()
        .collect()
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub in_flight: usize,
    pub due: usize,
    pub calls: usize,
    pub reported: usize,
    pub not_found: usize,
}

/// Polls CodeBuild for builds in flight.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub(crate) codebuild: aws_sdk_codebuild::Client,
    pub(crate) store: BuildStore,
    pub(crate) publisher: EventPublisher,
    pub(crate) reconcile_after: Duration,
    pub(crate) interval: Duration,
    pub(crate) batch_size: usize,
    pub(crate) call_spacing: Duration,
    pub(crate) metrics: Metrics,
}

impl Reconciler {
    pub fn new(
        codebuild: aws_sdk_codebuild::Client,
        store: BuildStore,
        publisher: EventPublisher,
        config: &crate::BuildWatcherConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            codebuild,
            store,
            publisher,
            reconcile_after: config.reconcile_after,
            interval: config.reconcile_interval,
            batch_size: config.reconcile_batch_size,
            call_spacing: config.reconcile_call_spacing,
            metrics,
        }
    }

    /// One pass. `everything`: every build in flight (start-up), else only the due ones.
    pub async fn reconcile(&self, everything: bool) -> anyhow::Result<PassOutcome> {
        let entries = self.store.in_flight().await?;
        let now = OffsetDateTime::now_utc();
        let due = due_builds(&entries, unix_ms(now), self.reconcile_after, everything);
        self.metrics
            .in_flight
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        let mut outcome = PassOutcome {
            in_flight: entries.len(),
            due: due.len(),
            ..PassOutcome::default()
        };
        let mut spacing = tokio::time::interval(self.call_spacing.max(Duration::from_millis(1)));
        spacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for batch in due.chunks(self.batch_size.max(1)) {
            spacing.tick().await;
            let ids: Vec<String> = batch.iter().map(|(e, _)| e.build_id.clone()).collect();
            outcome.calls += 1;
            let answer = match self
                .codebuild
                .batch_get_builds()
                .set_ids(Some(ids.clone()))
                .send()
                .await
            {
                Ok(answer) => {
                    self.metrics.reconciler_call("ok");
                    answer
                }
                Err(err) => {
                    // The next pass tries again; nothing is lost meanwhile.
                    self.metrics.reconciler_call("error");
                    tracing::warn!(error = %aws_sdk_codebuild::error::DisplayErrorContext(&err), builds = ids.len(), "BatchGetBuilds failed");
                    continue;
                }
            };
            outcome.not_found += answer.builds_not_found().len();
            for missing in answer.builds_not_found() {
                tracing::warn!(build_id = %missing, "CodeBuild does not know this build in flight");
            }
            let observed_at = OffsetDateTime::now_utc();
            for build in answer.builds() {
                let event = event_from_build(build, observed_at);
                let envelope = report_envelope(&event);
                self.publisher.publish(&envelope).await?;
                outcome.reported += 1;
                self.metrics.reconciled_builds.inc();
                // Heard of now: not due again before `reconcile_after` (unless it changes).
                let id = build.id().unwrap_or_default();
                if let Some((entry, revision)) = batch.iter().find(|(e, _)| e.build_id == id) {
                    let touched = InFlightRecord {
                        last_heard_ms: unix_ms(observed_at),
                        ..entry.clone()
                    };
                    match self.store.touch_in_flight(&touched, *revision).await {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot refresh in-flight entry"),
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// A pass over every build in flight at start-up, then a pass every `interval`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(reconcile_after = ?self.reconcile_after, "reconciler started");
        let mut everything = true;
        loop {
            match self.reconcile(everything).await {
                Ok(pass) => {
                    everything = false;
                    if pass.due > 0 {
                        tracing::info!(?pass, "reconciler pass");
                    }
                }
                Err(err) => tracing::warn!(error = format!("{err:#}"), "reconciler pass failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!("reconciler stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_codebuild::types::{
        BuildPhase, BuildPhaseType, ExportedEnvironmentVariable, PhaseContext, StatusType,
    };
    use aws_smithy_types::DateTime;

    use super::*;
    use prx_ci_shared::codebuild::build::FinalStatus;

    use crate::report::{ReportKind, parse_report};

    fn failed_build() -> Build {
        build_with(StatusType::Failed)
    }

    fn build_with(status: StatusType) -> Build {
        Build::builder()
            .id("proj:1")
            .arn("arn:aws:codebuild:us-east-1:123:build/proj:1")
            .project_name("proj")
            .build_status(status)
            .current_phase("COMPLETED")
            .start_time(DateTime::from_secs(1_504_282_349))
            .end_time(DateTime::from_secs(1_504_282_469))
            .phases(
                BuildPhase::builder()
                    .phase_type(BuildPhaseType::Build)
                    .phase_status(StatusType::Failed)
                    .duration_in_seconds(7)
                    .start_time(DateTime::from_secs(1_504_282_360))
                    .end_time(DateTime::from_secs(1_504_282_367))
                    .contexts(
                        PhaseContext::builder()
                            .status_code("COMMAND_EXECUTION_ERROR")
                            .message("Error while executing command: make")
                            .build(),
                    )
                    .build(),
            )
            .phases(
                BuildPhase::builder()
                    .phase_type(BuildPhaseType::Completed)
                    .start_time(DateTime::from_secs(1_504_282_469))
                    .build(),
            )
            .exported_environment_variables(
                ExportedEnvironmentVariable::builder()
                    .name("MY_APP")
                    .value("github/prx/app:abc-x86_64")
                    .build(),
            )
            .build()
    }

    #[test]
    fn a_build_becomes_a_state_change_the_parser_reads() {
        let event = event_from_build(&failed_build(), OffsetDateTime::now_utc());
        let json = serde_json::to_vec(&event).unwrap();
        let report = parse_report(&json).unwrap();
        assert_eq!(report.kind, ReportKind::Final(FinalStatus::Failed));
        assert_eq!(report.build_id, "proj:1");
        assert_eq!(report.duration_ms(), 120_000);
        let failed = report.failed_phase().unwrap();
        assert_eq!(failed.name, "BUILD");
        assert_eq!(
            failed.message,
            "COMMAND_EXECUTION_ERROR: Error while executing command: make"
        );
        assert_eq!(
            report.exported_variables()["MY_APP"],
            "github/prx/app:abc-x86_64"
        );
        assert_eq!(report.region(), "us-east-1");
        assert_eq!(event.time, "2017-09-01T16:14:29Z");
        // Same observation, same id; a different one, another id.
        let again = event_from_build(&failed_build(), OffsetDateTime::now_utc());
        assert_eq!(again.id, event.id);
        let running = build_with(StatusType::InProgress);
        assert_ne!(
            event_from_build(&running, OffsetDateTime::now_utc()).id,
            event.id
        );
    }

    #[test]
    fn due_builds_skip_local_and_recent_ones() {
        let entry = |id: &str, backend: &str, heard: i64| {
            (
                InFlightRecord {
                    build_id: id.into(),
                    backend: backend.into(),
                    last_heard_ms: heard,
                },
                1,
            )
        };
        let entries = vec![
            entry("proj:old", "codebuild", 0),
            entry("proj:new", "codebuild", 290_000),
            entry("local:1", "local", 0),
        ];
        let due = due_builds(&entries, 300_000, Duration::from_secs(60), false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.build_id, "proj:old");
        let all = due_builds(&entries, 300_000, Duration::from_secs(60), true);
        assert_eq!(all.len(), 2, "start-up: every CodeBuild build in flight");
    }
}
