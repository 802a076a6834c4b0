//! The accumulated view of one build, folded from its events (pure, no I/O).
//!
//! Events of a build may arrive more than once (redelivery, replay) and, across consumers or
//! replicas, out of order. [`BuildView::apply`] is therefore idempotent (an event id already
//! applied changes nothing) and monotonic: the status only moves forward (requested, in
//! progress, final), the first final status wins, and a phase never moves back, so a late
//! `IN_PROGRESS` can never overwrite `SUCCEEDED`.

use std::collections::BTreeMap;

use crate::bus::envelope::from_timestamp;
use crate::codebuild::build::status;
use crate::codebuild::env;
use crate::codebuild::event::{is_dispatcher_variable, requested_variables};
use crate::domain::Architecture;
use prx_ci_proto::v1::{self, envelope::Payload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Event ids remembered per build for deduplication (a build has a few dozen events).
pub const MAX_APPLIED_IDS: usize = 512;

fn phase_rank(phase: &str) -> usize {
    crate::codebuild::event::phase_rank(&phase.to_ascii_uppercase()).unwrap_or(usize::MAX / 2)
}

/// Where a build is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Requested, not reported running yet.
    #[default]
    Requested,
    InProgress,
    Succeeded,
    Failed,
    Fault,
    Stopped,
    TimedOut,
}

impl BuildState {
    fn rank(self) -> u8 {
        match self {
            Self::Requested => 0,
            Self::InProgress => 1,
            _ => 2,
        }
    }

    pub fn is_final(self) -> bool {
        self.rank() == 2
    }

    fn from_proto(status: i32) -> Option<Self> {
        Some(match v1::BuildStatus::try_from(status).ok()? {
            v1::BuildStatus::Unspecified => return None,
            v1::BuildStatus::InProgress => Self::InProgress,
            v1::BuildStatus::Succeeded => Self::Succeeded,
            v1::BuildStatus::Failed => Self::Failed,
            v1::BuildStatus::Fault => Self::Fault,
            v1::BuildStatus::Stopped => Self::Stopped,
            v1::BuildStatus::TimedOut => Self::TimedOut,
        })
    }
}

/// The last lines of a build's log, as its completion carried them (`BuildCompleted.log_tail`:
/// untrusted build output, already redacted and bounded by `crate::log_tail`; show it only as
/// inert text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTailView {
    /// Oldest first.
    pub lines: Vec<String>,
    /// Earlier lines were (or may have been) left out, or a line was cut; false only when
    /// the lines are known to be the whole log.
    #[serde(default)]
    pub truncated: bool,
    /// Why there are no lines (`None` when the log was read).
    #[serde(default)]
    pub unavailable: Option<String>,
}

impl LogTailView {
    pub fn from_proto(tail: &v1::LogTail) -> Self {
        Self {
            lines: tail.lines.clone(),
            truncated: tail.truncated,
            unavailable: Some(tail.unavailable.clone()).filter(|u| !u.is_empty()),
        }
    }
}

/// One completed phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseView {
    pub name: String,
    pub status: String,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The build was stopped because a newer push superseded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub by_commit: String,
    pub by_sequence: u64,
}

/// What the publisher did with one parameter (or with the whole build, `parameter` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishView {
    pub parameter: String,
    pub value: String,
    pub label: String,
    /// `None` = written; `Some(reason)` = skipped (`superseded`, `prerelease`, ...).
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub superseded_by_commit: String,
    /// The check that refused a skip, by name (`order fence`, `ownership`, ...; "" for writes
    /// and from older publishers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
}

/// The causal context of the last event applied (for the events the notifier emits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainView {
    pub correlation_id: String,
    pub last_event_id: String,
    pub repository: String,
    pub branch: Option<String>,
    pub pull_request: Option<u64>,
    pub push_sequence: u64,
}

impl ChainView {
    fn from_envelope(envelope: &v1::Envelope) -> Self {
        let key = envelope.ordering_key.as_ref();
        Self {
            correlation_id: envelope.correlation_id.clone(),
            last_event_id: envelope.event_id.clone(),
            repository: key.map(|k| k.repository.clone()).unwrap_or_default(),
            branch: key.and_then(|k| match &k.lane {
                Some(v1::ordering_key::Lane::Branch(b)) => Some(b.clone()),
                _ => None,
            }),
            pull_request: key.and_then(|k| match &k.lane {
                Some(v1::ordering_key::Lane::PullRequest(n)) => Some(*n),
                _ => None,
            }),
            push_sequence: envelope.push_sequence,
        }
    }

    /// The chain for an event caused by the last applied event.
    pub fn chain(&self) -> crate::Chain {
        let lane = match (&self.branch, self.pull_request) {
            (Some(b), _) => Some(v1::ordering_key::Lane::Branch(b.clone())),
            (None, Some(n)) => Some(v1::ordering_key::Lane::PullRequest(n)),
            (None, None) => None,
        };
        crate::Chain {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.last_event_id.clone(),
            ordering_key: lane.map(|lane| v1::OrderingKey {
                repository: self.repository.clone(),
                lane: Some(lane),
            }),
            push_sequence: self.push_sequence,
        }
    }
}

/// Everything the notifier knows about one build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildView {
    pub build_id: String,
    pub build_request_id: String,
    pub repository: String,
    pub commit: String,
    pub architecture: Option<Architecture>,
    pub backend: String,
    pub project: String,
    pub region: String,
    pub log_url: String,
    pub event_name: String,
    pub action: String,
    /// The build's environment (the dispatcher's `PRX_*` variables, then the backend's).
    pub environment: BTreeMap<String, String>,
    /// Final variables: environment then exported, exported winning. Untrusted: read only
    /// for artifact lines; the dispatcher's variables come from `requested`.
    pub variables: BTreeMap<String, String>,
    /// The dispatcher's variables for the build it requested (from its `BuildRequested`, or the
    /// `requested` a build event carries): the authority on repository, commit, branch, pull
    /// request and architecture. `None` for builds nobody requested (started in the console).
    #[serde(default)]
    pub requested: Option<BTreeMap<String, String>>,
    pub state: BuildState,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub finished_at: Option<OffsetDateTime>,
    pub current_phase: Option<String>,
    pub phases: Vec<PhaseView>,
    pub failed_phase: Option<String>,
    pub failure_message: Option<String>,
    pub duration_ms: Option<u64>,
    pub cancelled: Option<Cancellation>,
    pub publishes: Vec<PublishView>,
    /// The last lines of the log of a build that failed, faulted or timed out (from its
    /// completion; `None` for other builds and for completions written before tails existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<LogTailView>,
    /// Bumped by every event that was applied (not by duplicates).
    pub version: u64,
    pub chain: ChainView,
    /// Ids of the events applied, oldest first (bounded by [`MAX_APPLIED_IDS`]).
    pub applied: Vec<String>,
}

/// Why an event cannot be applied (it is parked: it will never apply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event has no build reference")]
    NoBuild,
    #[error("event's build reference has neither a build id nor a request id")]
    NoBuildId,
}

/// What an event means for the notifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Relevance {
    /// About build `key`; fold it into that build's view.
    Build(String),
    /// Nothing to show (skipped builds: the original says nothing about filtered events).
    Ignore,
}

/// The projection key of the build an event is about: the backend's build id, or the request
/// id for a request not yet started.
pub fn relevance(payload: &Payload) -> Result<Relevance, ApplyError> {
    let build = match payload {
        Payload::BuildRequested(p) => p.build.as_ref(),
        Payload::BuildStarted(p) => p.build.as_ref(),
        Payload::BuildPhaseChanged(p) => p.build.as_ref(),
        Payload::BuildCompleted(p) => p.build.as_ref(),
        Payload::BuildCancelled(p) => p.build.as_ref(),
        Payload::PublishApplied(p) => p.build.as_ref(),
        Payload::PublishSkipped(p) => p.build.as_ref(),
        _ => return Ok(Relevance::Ignore),
    };
    let build = build.ok_or(ApplyError::NoBuild)?;
    if !build.build_id.is_empty() {
        Ok(Relevance::Build(build.build_id.clone()))
    } else if !build.build_request_id.is_empty() {
        Ok(Relevance::Build(format!(
            "request:{}",
            build.build_request_id
        )))
    } else {
        Err(ApplyError::NoBuildId)
    }
}

fn fill(slot: &mut String, value: &str) {
    if slot.is_empty() && !value.is_empty() {
        value.clone_into(slot);
    }
}

/// `superseded`, `prerelease`, ... (the enum value's name without its prefix, lower case), so
/// reasons added to the contract later still read sensibly.
fn skip_reason_name(reason: i32) -> String {
    v1::PublishSkipReason::try_from(reason)
        .map_or("unspecified", |r| r.as_str_name())
        .trim_start_matches("PUBLISH_SKIP_REASON_")
        .to_ascii_lowercase()
}

impl BuildView {
    /// Folds `envelope` into the view. Returns `false` (and changes nothing) when the event was
    /// already applied or says nothing about a build.
    pub fn apply(&mut self, envelope: &v1::Envelope) -> Result<bool, ApplyError> {
        let Some(payload) = envelope.payload.as_ref() else {
            return Ok(false);
        };
        if relevance(payload)? == Relevance::Ignore {
            return Ok(false);
        }
        if self.applied.iter().any(|id| id == &envelope.event_id) {
            return Ok(false);
        }
        let at = from_timestamp(envelope.time.as_ref());
        match payload {
            Payload::BuildRequested(p) => {
                self.trust(p);
                self.merge_ref(p.build.as_ref());
                for (k, v) in &p.environment {
                    self.environment
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                fill(&mut self.event_name, &p.event_name);
                fill(&mut self.action, &p.action);
            }
            Payload::BuildStarted(p) => {
                if let Some(requested) = &p.requested {
                    self.trust(requested);
                }
                self.merge_ref(p.build.as_ref());
                for (k, v) in &p.environment {
                    self.environment
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                self.started_at = self
                    .started_at
                    .or_else(|| from_timestamp(p.started_at.as_ref()))
                    .or(at);
                self.advance(BuildState::InProgress);
            }
            Payload::BuildPhaseChanged(p) => {
                self.merge_ref(p.build.as_ref());
                self.advance(BuildState::InProgress);
                if !p.completed_phase.is_empty() {
                    self.record_phase(PhaseView {
                        name: p.completed_phase.clone(),
                        status: p.completed_phase_status.clone(),
                        duration_ms: p.duration_ms,
                        message: p.message.clone(),
                    });
                }
                if !self.state.is_final() && !p.current_phase.is_empty() {
                    let newer = self
                        .current_phase
                        .as_deref()
                        .is_none_or(|cur| phase_rank(&p.current_phase) >= phase_rank(cur));
                    if newer {
                        self.current_phase = Some(p.current_phase.clone());
                    }
                }
            }
            Payload::BuildCompleted(p) => {
                if let Some(requested) = &p.requested {
                    self.trust(requested);
                }
                self.merge_ref(p.build.as_ref());
                let state = BuildState::from_proto(p.status).unwrap_or(BuildState::Failed);
                if !self.state.is_final() {
                    self.state = if state.is_final() {
                        state
                    } else {
                        BuildState::Failed
                    };
                    self.current_phase = None;
                    for (k, v) in &p.variables {
                        self.variables.insert(k.clone(), v.clone());
                    }
                    for (k, v) in &p.exported_variables {
                        self.variables.insert(k.clone(), v.clone());
                    }
                    if !p.failed_phase.is_empty() {
                        self.failed_phase = Some(p.failed_phase.clone());
                        self.failure_message =
                            Some(p.failure_message.clone()).filter(|m| !m.is_empty());
                    }
                    if p.duration_ms > 0 {
                        self.duration_ms = Some(p.duration_ms);
                    }
                    self.finished_at = from_timestamp(p.finished_at.as_ref()).or(at);
                    self.log_tail = p.log_tail.as_ref().map(LogTailView::from_proto);
                    for phase in &p.phases {
                        self.record_phase(PhaseView {
                            name: phase.name.clone(),
                            status: phase.status.clone(),
                            duration_ms: phase.duration_ms,
                            message: phase.message.clone(),
                        });
                    }
                }
            }
            Payload::BuildCancelled(p) => {
                self.merge_ref(p.build.as_ref());
                self.cancelled.get_or_insert(Cancellation {
                    by_commit: p.superseded_by_commit.clone(),
                    by_sequence: p.superseded_by_sequence,
                });
            }
            Payload::PublishApplied(p) => {
                self.merge_ref(p.build.as_ref());
                self.record_publish(PublishView {
                    parameter: p.parameter.clone(),
                    value: p.value.clone(),
                    label: p.label.clone(),
                    skipped: None,
                    detail: String::new(),
                    superseded_by_commit: String::new(),
                    check: String::new(),
                });
            }
            Payload::PublishSkipped(p) => {
                self.merge_ref(p.build.as_ref());
                self.record_publish(PublishView {
                    parameter: p.parameter.clone(),
                    value: p.value.clone(),
                    label: p.label.clone(),
                    skipped: Some(skip_reason_name(p.reason)),
                    detail: p.detail.clone(),
                    superseded_by_commit: p.superseded_by_commit.clone(),
                    check: p.check.clone(),
                });
            }
            _ => return Ok(false),
        }
        // The chain follows the newest cause (the notifier's own events hang off it).
        if self.chain.correlation_id.is_empty() || !envelope.correlation_id.is_empty() {
            let previous_key = self.chain.clone();
            self.chain = ChainView::from_envelope(envelope);
            if self.chain.repository.is_empty() {
                self.chain.repository = previous_key.repository;
                self.chain.branch = previous_key.branch;
                self.chain.pull_request = previous_key.pull_request;
                self.chain.push_sequence = previous_key.push_sequence;
            }
        }
        self.applied.push(envelope.event_id.clone());
        if self.applied.len() > MAX_APPLIED_IDS {
            let excess = self.applied.len() - MAX_APPLIED_IDS;
            self.applied.drain(..excess);
        }
        self.version += 1;
        Ok(true)
    }

    /// Takes the dispatcher's word for the build (every copy of the request says the same: the
    /// first one stays). Its repository and commit win over what a report said first.
    fn trust(&mut self, request: &v1::BuildRequested) {
        if self.requested.is_some() {
            return;
        }
        if let Some(b) = &request.build {
            if !b.repository.is_empty() {
                b.repository.clone_into(&mut self.repository);
            }
            if !b.commit.is_empty() {
                b.commit.clone_into(&mut self.commit);
            }
            if let Some(arch) = Architecture::from_proto(b.architecture) {
                self.architecture = Some(arch);
            }
        }
        self.requested = Some(requested_variables(request));
    }

    fn advance(&mut self, state: BuildState) {
        if state.rank() > self.state.rank() {
            self.state = state;
        }
    }

    fn merge_ref(&mut self, build: Option<&v1::BuildRef>) {
        let Some(b) = build else { return };
        fill(&mut self.build_id, &b.build_id);
        fill(&mut self.build_request_id, &b.build_request_id);
        fill(&mut self.repository, &b.repository);
        fill(&mut self.commit, &b.commit);
        fill(&mut self.backend, &b.backend);
        fill(&mut self.project, &b.project);
        fill(&mut self.region, &b.region);
        if !b.log_url.is_empty() {
            b.log_url.clone_into(&mut self.log_url);
        }
        if self.architecture.is_none() {
            self.architecture = Architecture::from_proto(b.architecture);
        }
    }

    fn record_phase(&mut self, phase: PhaseView) {
        let failed = !phase.status.is_empty()
            && !phase.status.eq_ignore_ascii_case(status::SUCCEEDED)
            && !phase.name.eq_ignore_ascii_case("COMPLETED");
        if failed && self.failed_phase.is_none() {
            self.failed_phase = Some(phase.name.clone());
            self.failure_message = Some(phase.message.clone()).filter(|m| !m.is_empty());
        }
        match self.phases.iter_mut().find(|p| p.name == phase.name) {
            Some(existing) => *existing = phase,
            None => self.phases.push(phase),
        }
        self.phases.sort_by_key(|p| phase_rank(&p.name));
    }

    fn record_publish(&mut self, publish: PublishView) {
        // Whole-build skips (no parameter) stand side by side: a fork's skip and the variables
        // it tried to override are separate lines.
        let same = |p: &PublishView| {
            p.parameter == publish.parameter
                && p.label == publish.label
                && (!p.parameter.is_empty()
                    || (p.skipped == publish.skipped && p.detail == publish.detail))
        };
        match self.publishes.iter_mut().find(|p| same(p)) {
            // A write beats a skip of the same parameter (a redelivery says "already published").
            Some(existing) if existing.skipped.is_none() && publish.skipped.is_some() => {}
            Some(existing) => *existing = publish,
            None => self.publishes.push(publish),
        }
    }

    /// A variable. The dispatcher's (`PRX_REPO`, `PRX_COMMIT`, `PRX_BRANCH`, `PRX_GITHUB_*`, ...)
    /// come from its request only, or for builds nobody requested from the environment the
    /// backend reported, never from what the build exported; any other variable from the final
    /// variables first, then the environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        let value = match &self.requested {
            Some(trusted) if is_dispatcher_variable(name, trusted) => trusted.get(name),
            None if is_dispatcher_variable(name, &BTreeMap::new()) => self.environment.get(name),
            _ => self
                .variables
                .get(name)
                .or_else(|| self.environment.get(name)),
        };
        value.map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The repository and commit the dispatcher built; `None` for builds nobody requested.
    pub fn requested_commit(&self) -> Option<(&str, &str)> {
        let trusted = self.requested.as_ref()?;
        let repository = trusted
            .get(env::REPO)
            .map_or(self.repository.as_str(), String::as_str);
        let commit = trusted
            .get(env::COMMIT)
            .map_or(self.commit.as_str(), String::as_str);
        Some((repository, commit))
    }

    /// The status people see: a stop caused by a newer push reads as superseded.
    pub fn effective_state(&self) -> BuildState {
        if self.cancelled.is_some() && !self.state.is_final() {
            BuildState::Stopped
        } else {
            self.state
        }
    }

    /// The commit built (`PRX_COMMIT`, else the build reference's).
    pub fn commit_sha(&self) -> &str {
        self.var(env::COMMIT).unwrap_or(&self.commit)
    }

    /// Whether the build is a pull-request build.
    pub fn pull_request(&self) -> Option<&str> {
        self.var(env::GITHUB_PR)
    }

    /// The build reference the view has gathered (for the events the notifier emits).
    pub fn build_ref(&self) -> v1::BuildRef {
        v1::BuildRef {
            build_id: self.build_id.clone(),
            build_request_id: self.build_request_id.clone(),
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            architecture: self
                .architecture
                .map_or(v1::Architecture::Unspecified, |a| a.to_proto())
                as i32,
            backend: self.backend.clone(),
            project: self.project.clone(),
            region: self.region.clone(),
            log_url: self.log_url.clone(),
            ..v1::BuildRef::default()
        }
    }

    /// The duration: reported, else from start and finish.
    pub fn duration(&self) -> Option<std::time::Duration> {
        if let Some(ms) = self.duration_ms {
            return Some(std::time::Duration::from_millis(ms));
        }
        let (start, end) = (self.started_at?, self.finished_at?);
        std::time::Duration::try_from(end - start).ok()
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
