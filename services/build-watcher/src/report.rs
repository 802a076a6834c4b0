//! Parsing a backend's report (a CodeBuild EventBridge event, whatever its source) into what
//! the state machine and the emitted events need. Pure: no I/O.

use std::collections::BTreeMap;

use prx_ci_proto::v1;
use prx_ci_shared::codebuild::build::{
    FinalStatus, SourceVersion, backend_of, build_id_of, console_build_url, parse_arn,
    parse_codebuild_time, status,
};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::codebuild::event::{self, CodeBuildEvent, Phase};
use time::OffsetDateTime;

pub use prx_ci_shared::codebuild::event::{COMPLETED_PHASE, PHASE_ORDER, phase_rank};

/// What a report says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportKind {
    /// `CodeBuild Build State Change` with `IN_PROGRESS`.
    InProgress,
    /// `CodeBuild Build State Change` with a final status.
    Final(FinalStatus),
    /// `CodeBuild Build Phase Change`: `completed_phase` ended.
    Phase { completed_phase: String },
}

/// One phase as the emitted events carry it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseInfo {
    pub name: String,
    /// `SUCCEEDED`, `FAILED`, ... ("" while the phase runs).
    pub status: String,
    pub duration_ms: u64,
    /// The phase context (why it failed), "" when there is nothing to say.
    pub message: String,
    #[serde(default)]
    pub ended: bool,
}

impl PhaseInfo {
    pub fn to_proto(&self) -> v1::PhaseRecord {
        v1::PhaseRecord {
            name: self.name.clone(),
            status: self.status.clone(),
            duration_ms: self.duration_ms,
            message: self.message.clone(),
        }
    }
}

/// Why a report cannot be used (the message is parked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report is not JSON of a CodeBuild event: {0}")]
    NotJson(String),
    #[error("report has detail-type {0:?}, not a CodeBuild state or phase change")]
    UnknownDetailType(String),
    #[error("report has no build-id")]
    NoBuildId,
    #[error("state change has unknown build-status {0:?}")]
    UnknownStatus(String),
    #[error("phase change names no completed-phase")]
    NoCompletedPhase,
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The build's id normalized to `project:uuid` / `local:<uuid>` (see [`build_id_of`]).
    pub build_id: String,
    pub kind: ReportKind,
    pub event: CodeBuildEvent,
}

/// Parses the JSON of a report.
pub fn parse_report(json: &[u8]) -> Result<Report, ReportError> {
    let event: CodeBuildEvent =
        serde_json::from_slice(json).map_err(|e| ReportError::NotJson(e.to_string()))?;
    report_from_event(event)
}

/// Classifies an already parsed event.
pub fn report_from_event(event: CodeBuildEvent) -> Result<Report, ReportError> {
    let detail = &event.detail;
    if ![event::STATE_CHANGE, event::PHASE_CHANGE].contains(&event.detail_type.as_str()) {
        return Err(ReportError::UnknownDetailType(event.detail_type.clone()));
    }
    let build_id = build_id_of(&detail.build_id).to_owned();
    if build_id.is_empty() {
        return Err(ReportError::NoBuildId);
    }
    let kind = match event.detail_type.as_str() {
        event::STATE_CHANGE => {
            let reported = detail.build_status.as_deref().unwrap_or_default();
            if reported == status::IN_PROGRESS {
                ReportKind::InProgress
            } else {
                ReportKind::Final(
                    FinalStatus::parse(reported)
                        .ok_or_else(|| ReportError::UnknownStatus(reported.to_owned()))?,
                )
            }
        }
        event::PHASE_CHANGE => {
            let phase = detail
                .completed_phase
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .ok_or(ReportError::NoCompletedPhase)?;
            ReportKind::Phase {
                completed_phase: phase.to_owned(),
            }
        }
        other => return Err(ReportError::UnknownDetailType(other.to_owned())),
    };
    Ok(Report {
        build_id,
        kind,
        event,
    })
}

/// The text of a phase context: CodeBuild sends `["STATUS_CODE: message"]`, or `[": "]` when
/// there is nothing to say; phase-change events send the same list serialized as a string.
pub fn context_message<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty() && *p != ":" && *p != "[]")
        .collect::<Vec<_>>()
        .join("; ")
}

/// A `completed-phase-context` string: CodeBuild writes the list in brackets without quotes
/// (`[: ]`, `[COMMAND_EXECUTION_ERROR: ...]`); a JSON list of strings is accepted too.
fn context_string_message(text: &str) -> String {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(text) {
        return context_message(list.iter().map(String::as_str));
    }
    let text = text.trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    context_message([inner])
}

fn seconds_to_ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

fn phase_info(phase: &Phase) -> PhaseInfo {
    let duration_ms = match phase.duration_in_seconds {
        Some(s) => seconds_to_ms(s),
        None => match (
            phase.start_time.as_deref().and_then(parse_codebuild_time),
            phase.end_time.as_deref().and_then(parse_codebuild_time),
        ) {
            (Some(start), Some(end)) if end >= start => {
                u64::try_from((end - start).whole_milliseconds()).unwrap_or(0)
            }
            _ => 0,
        },
    };
    PhaseInfo {
        name: phase.phase_type.clone(),
        status: phase.phase_status.clone().unwrap_or_default(),
        duration_ms,
        message: context_message(phase.phase_context.iter().map(String::as_str)),
        ended: phase.end_time.is_some() || phase.phase_status.is_some(),
    }
}

impl Report {
    /// Every phase the event lists, in its order.
    pub fn phases(&self) -> Vec<PhaseInfo> {
        self.event
            .detail
            .additional_information
            .phases
            .iter()
            .filter(|p| !p.phase_type.is_empty())
            .map(phase_info)
            .collect()
    }

    /// The phases that have ended (have a status), in order: what an in-progress state change
    /// tells about phase changes that may have been missed.
    pub fn ended_phases(&self) -> Vec<PhaseInfo> {
        self.phases()
            .into_iter()
            .filter(|p| !p.status.is_empty() && p.name != COMPLETED_PHASE)
            .collect()
    }

    /// The completed phase of a phase change, with its status, duration and context.
    pub fn completed_phase(&self) -> Option<PhaseInfo> {
        let ReportKind::Phase { completed_phase } = &self.kind else {
            return None;
        };
        let d = &self.event.detail;
        let listed = self
            .phases()
            .into_iter()
            .find(|p| &p.name == completed_phase);
        let duration_ms = d
            .completed_phase_duration_seconds
            .map(seconds_to_ms)
            .or_else(|| listed.as_ref().map(|p| p.duration_ms))
            .unwrap_or(0);
        let message = d
            .completed_phase_context
            .as_deref()
            .map(context_string_message)
            .filter(|m| !m.is_empty())
            .or_else(|| listed.as_ref().map(|p| p.message.clone()))
            .unwrap_or_default();
        Some(PhaseInfo {
            name: completed_phase.clone(),
            status: d
                .completed_phase_status
                .clone()
                .or_else(|| listed.map(|p| p.status))
                .unwrap_or_default(),
            duration_ms,
            message,
            ended: true,
        })
    }

    /// When `phase` ended, per the report (`completed-phase-end`, else the phase list).
    pub fn completed_phase_end(&self, phase: &str) -> Option<OffsetDateTime> {
        let d = &self.event.detail;
        if matches!(&self.kind, ReportKind::Phase { completed_phase } if completed_phase == phase)
            && let Some(end) = d
                .completed_phase_end
                .as_deref()
                .and_then(parse_codebuild_time)
        {
            return Some(end);
        }
        d.additional_information
            .phases
            .iter()
            .find(|p| p.phase_type == phase)
            .and_then(|p| p.end_time.as_deref())
            .and_then(parse_codebuild_time)
    }

    /// The phase that runs after `completed` (the event's `current-phase` when it names a
    /// later one, else CodeBuild's documented order).
    pub fn phase_after(&self, completed: &str) -> String {
        if let Some(current) = self.event.detail.current_phase.as_deref()
            && current != completed
            && !current.is_empty()
            && phase_rank(current) > phase_rank(completed)
        {
            return current.to_owned();
        }
        phase_rank(completed)
            .and_then(|i| PHASE_ORDER.get(i + 1))
            .map(|p| (*p).to_owned())
            .unwrap_or_default()
    }

    /// When the event happened (its RFC 3339 `time`).
    pub fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(
            self.event.time.trim(),
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    }

    /// When the build started (`build-start-time`, else the first phase's start).
    pub fn started_at(&self) -> Option<OffsetDateTime> {
        let info = &self.event.detail.additional_information;
        info.build_start_time
            .as_deref()
            .and_then(parse_codebuild_time)
            .or_else(|| {
                info.phases
                    .iter()
                    .find_map(|p| p.start_time.as_deref().and_then(parse_codebuild_time))
            })
    }

    /// When the build ended: the latest phase end (or the `COMPLETED` phase's start), else
    /// the event's time.
    pub fn finished_at(&self) -> Option<OffsetDateTime> {
        let info = &self.event.detail.additional_information;
        let from_phases = info
            .phases
            .iter()
            .filter_map(|p| {
                let end = p.end_time.as_deref().and_then(parse_codebuild_time);
                if p.phase_type == COMPLETED_PHASE {
                    end.or_else(|| p.start_time.as_deref().and_then(parse_codebuild_time))
                } else {
                    end
                }
            })
            .max();
        from_phases.or_else(|| self.time())
    }

    /// Build duration in milliseconds (start to end), 0 when either is unknown.
    pub fn duration_ms(&self) -> u64 {
        match (self.started_at(), self.finished_at()) {
            (Some(start), Some(end)) if end >= start => {
                u64::try_from((end - start).whole_milliseconds()).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The first phase that did not succeed (ignoring `COMPLETED` and phases without a
    /// status), with its message.
    pub fn failed_phase(&self) -> Option<PhaseInfo> {
        self.phases().into_iter().find(|p| {
            p.name != COMPLETED_PHASE && !p.status.is_empty() && p.status != status::SUCCEEDED
        })
    }

    /// The build's environment variables as CodeBuild reports them.
    pub fn environment(&self) -> BTreeMap<String, String> {
        self.event
            .detail
            .additional_information
            .environment
            .environment_variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// What the build checked out, as its report says (empty parts when it does not).
    pub fn source(&self) -> crate::console_retry::ReportedSource {
        let info = &self.event.detail.additional_information;
        crate::console_retry::ReportedSource {
            version: info.source_version.clone().unwrap_or_default(),
            location: info
                .source
                .as_ref()
                .map(|s| s.location.clone())
                .unwrap_or_default(),
        }
    }

    /// The buildspec's exported variables alone.
    pub fn exported_variables(&self) -> BTreeMap<String, String> {
        self.event
            .detail
            .additional_information
            .exported_environment_variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// Where a person reads the build's log: the event's `logs.deep-link`, else the CodeBuild
    /// console page of the build (from the ARN), else "".
    pub fn log_url(&self) -> String {
        let info = &self.event.detail.additional_information;
        if let Some(link) = info
            .logs
            .as_ref()
            .map(|l| l.deep_link.trim())
            .filter(|l| !l.is_empty())
        {
            return link.to_owned();
        }
        parse_arn(&self.event.detail.build_id)
            .map(|a| console_build_url(a.region, a.account, a.project, a.uuid))
            .unwrap_or_default()
    }

    /// The AWS region of the build ("" for local builds).
    pub fn region(&self) -> String {
        if !self.event.region.is_empty() {
            return self.event.region.clone();
        }
        parse_arn(&self.event.detail.build_id)
            .map(|a| a.region.to_owned())
            .unwrap_or_default()
    }

    /// `local` for the local runner's builds, else `codebuild`.
    pub fn backend(&self) -> &'static str {
        backend_of(&self.build_id)
    }

    /// What is known of a build nobody requested: project, id, and the repository and commit
    /// from the build's `PRX_REPO` / `PRX_COMMIT` (else the commit its source version names:
    /// `<ref>^{<sha>}` or a bare SHA, see `SourceVersion`).
    pub fn build_ref(&self) -> v1::BuildRef {
        let vars = self.environment();
        let source_version = self
            .event
            .detail
            .additional_information
            .source_version
            .as_deref()
            .and_then(|text| SourceVersion::parse(text).ok());
        let commit = vars
            .get(env::COMMIT)
            .cloned()
            .filter(|c| !c.is_empty())
            .or_else(|| {
                source_version
                    .as_ref()
                    .and_then(SourceVersion::commit)
                    .map(ToString::to_string)
            })
            .unwrap_or_default();
        let architecture = vars
            .get(env::TARGET_ARCHITECTURE)
            .and_then(|a| prx_ci_shared::domain::Architecture::parse(a))
            .map_or(v1::Architecture::Unspecified, |a| a.to_proto());
        v1::BuildRef {
            build_id: self.event.detail.build_id.clone(),
            build_request_id: String::new(),
            repository: vars.get(env::REPO).cloned().unwrap_or_default(),
            commit,
            architecture: architecture as i32,
            backend: self.backend().to_owned(),
            project: self.event.detail.project_name.clone(),
            region: self.region(),
            log_url: self.log_url(),
            retry_of: String::new(),
            shadowed: false,
        }
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
