//! A watched build's KV records and how a request, a cancellation or a report changes them (pure).
//!
//! One [`WatchedBuildRecord`] per build (what was requested, the chain its events carry, the
//! state machine's state, when it was last heard of) and one [`InFlightRecord`] per build in
//! flight (all the reconciler reads). The JSON is what the build-watcher has always stored.

use std::collections::BTreeMap;

use prx_ci_proto::v1;
use prx_ci_shared::bus::envelope::Chain;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::console_retry::RequestedBuild;
use crate::report::{PhaseInfo, Report, ReportKind};
use crate::state::{BuildState, Lifecycle, Outcome};

/// Unix milliseconds of a time.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The causal chain every event of the build carries (a serializable [`Chain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainData {
    pub correlation_id: String,
    /// The event the build's events are caused by (the BuildRequested, or for builds nobody
    /// requested, the first report).
    pub causation_id: String,
    pub repository: String,
    pub branch: Option<String>,
    pub pull_request: Option<u64>,
    pub push_sequence: u64,
}

impl ChainData {
    /// The chain of events caused by `cause` (keeps correlation, ordering key and sequence).
    pub fn caused_by(cause: &v1::Envelope) -> Self {
        let chain = Chain::caused_by(cause);
        let (repository, branch, pull_request) = match &chain.ordering_key {
            Some(key) => match &key.lane {
                Some(v1::ordering_key::Lane::Branch(b)) => {
                    (key.repository.clone(), Some(b.clone()), None)
                }
                Some(v1::ordering_key::Lane::PullRequest(n)) => {
                    (key.repository.clone(), None, Some(*n))
                }
                None => (key.repository.clone(), None, None),
            },
            None => (String::new(), None, None),
        };
        Self {
            correlation_id: chain.correlation_id,
            causation_id: chain.causation_id,
            repository,
            branch,
            pull_request,
            push_sequence: chain.push_sequence,
        }
    }

    pub fn to_chain(&self) -> Chain {
        let lane = match (&self.branch, self.pull_request) {
            (Some(b), _) => Some(v1::ordering_key::Lane::Branch(b.clone())),
            (None, Some(n)) => Some(v1::ordering_key::Lane::PullRequest(n)),
            (None, None) => None,
        };
        let ordering_key =
            (!self.repository.is_empty() || lane.is_some()).then(|| v1::OrderingKey {
                repository: self.repository.clone(),
                lane,
            });
        Chain {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            ordering_key,
            push_sequence: self.push_sequence,
        }
    }
}

/// The dispatcher's `BuildRequested` as kept for the build's events (`BuildStarted.requested`,
/// `BuildCompleted.requested`): the authority on what was built and whether it may publish.
/// The buildspec is left out (large, and nobody downstream reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestData {
    pub environment: BTreeMap<String, String>,
    pub clone_url: String,
    pub source_version: String,
    pub event_name: String,
    pub action: String,
    pub fork: bool,
    pub branch: String,
    pub pull_request: u64,
    /// `BuildRequested.primary_architecture` (the proto enum's number; 0 = unspecified), left
    /// out of the JSON while unspecified so records keep their shape.
    #[serde(skip_serializing_if = "is_unspecified")]
    pub primary_architecture: i32,
    /// `BuildRequested.rerun` (0 for the webhook's own build), left out of the JSON while 0.
    #[serde(skip_serializing_if = "is_first_attempt")]
    pub rerun: u32,
    /// `BuildRequested.shadow` (a shadow request: nothing of ours runs, the original system's
    /// build is adopted), left out of the JSON while false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

fn is_first_attempt(rerun: &u32) -> bool {
    *rerun == 0
}

fn is_unspecified(architecture: &i32) -> bool {
    *architecture == 0
}

impl From<&v1::BuildRequested> for RequestData {
    fn from(r: &v1::BuildRequested) -> Self {
        Self {
            environment: r
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clone_url: r.clone_url.clone(),
            source_version: r.source_version.clone(),
            event_name: r.event_name.clone(),
            action: r.action.clone(),
            fork: r.fork,
            branch: r.branch.clone(),
            pull_request: r.pull_request,
            primary_architecture: r.primary_architecture,
            rerun: r.rerun,
            shadow: r.shadow,
        }
    }
}

impl RequestData {
    /// The request for the build's events, with `build` as its reference (buildspec omitted).
    pub fn to_proto(&self, build: v1::BuildRef) -> v1::BuildRequested {
        v1::BuildRequested {
            build: Some(build),
            environment: self
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            buildspec: String::new(),
            clone_url: self.clone_url.clone(),
            source_version: self.source_version.clone(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            fork: self.fork,
            branch: self.branch.clone(),
            pull_request: self.pull_request,
            primary_architecture: self.primary_architecture,
            rerun: self.rerun,
            shadow: self.shadow,
            // Not kept in the record (docs/reruns.md): the `BuildRequested` event has it.
            rerun_request: None,
        }
    }
}

/// The superseding push of a cancelled build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CancelData {
    pub event_id: String,
    pub superseded_by_sequence: u64,
    pub superseded_by_commit: String,
}

impl CancelData {
    /// The cancellation `envelope` records.
    pub fn from_event(envelope: &v1::Envelope, cancelled: &v1::BuildCancelled) -> Self {
        Self {
            event_id: envelope.event_id.clone(),
            superseded_by_sequence: cancelled.superseded_by_sequence,
            superseded_by_commit: cancelled.superseded_by_commit.clone(),
        }
    }
}

/// Everything the build-watcher knows about one build (bucket `prx_ci_builds`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchedBuildRecord {
    /// The normalized build id (the key's source); empty only in a record not yet stored.
    pub build_id: String,
    pub build: v1::BuildRef,
    /// Whether a BuildRequested was seen, or the build was adopted as a console retry of one
    /// (`build.retry_of` set) (false: a build nobody requested, so far).
    pub requested: bool,
    /// The event id of the BuildRequested.
    pub requested_event_id: String,
    /// The BuildRequested itself (`None`: nobody requested the build, or the record predates
    /// this field; its events then carry no request and never publish).
    pub request: Option<RequestData>,
    pub chain: ChainData,
    pub cancelled: Option<CancelData>,
    pub state: BuildState,
    /// Unix milliseconds of the last report (or of the request).
    pub last_heard_ms: i64,
    /// Phases as last reported.
    pub phases: Vec<PhaseInfo>,
    /// The status of the final state reported first (also in `state`), for operators.
    pub final_status: Option<String>,
}

impl WatchedBuildRecord {
    /// Whether this is the empty record of a build not stored yet (what reading an absent key
    /// gives).
    pub fn is_new(&self) -> bool {
        self.build_id.is_empty()
    }

    /// The record of a build nobody requested (so far), from its first report: what the report
    /// says of the build, in a chain of its own (caused by the report's envelope, without push).
    pub fn unrequested(report: &Report, envelope: &v1::Envelope) -> Self {
        let mut chain = ChainData::caused_by(envelope);
        // The report's own chain has no push behind it.
        chain.push_sequence = 0;
        Self {
            build_id: report.build_id.clone(),
            build: report.build_ref(),
            requested: false,
            chain,
            ..Self::default()
        }
    }

    /// The record of a build nobody requested that retries `original` (a CodeBuild console
    /// "Retry build": see [`crate::console_retry`]), from its first report: the original's
    /// request and chain (correlation, ordering key, push sequence), so its events carry them;
    /// its own reference (build id, project, log link) with `retry_of` naming the original and
    /// no request id (it is not the original's request: views keyed by request id keep the two
    /// apart).
    pub fn adopted(report: &Report, original: &RequestedBuild) -> Self {
        let mut build = report.build_ref();
        build.build_request_id = String::new();
        build.repository = original.build.repository.clone();
        build.commit = original.build.commit.clone();
        build.architecture = original.build.architecture;
        build.retry_of = original.build.build_id.clone();
        Self {
            build_id: report.build_id.clone(),
            build,
            requested: true,
            requested_event_id: original.requested_event_id.clone(),
            request: Some(original.request.clone()),
            chain: original.chain.clone(),
            ..Self::default()
        }
    }

    /// The record of the original system's build, from its first report, adopted into the
    /// chain of `request`, this system's shadow request of the same repository, commit and
    /// architecture (shadow mode, see [`crate::console_retry::match_shadow`]): its events carry
    /// the request (`BuildRequested.shadow`) and its chain (ordered as our push); its own
    /// reference (the original's build id, project, log link) with `shadowed` set and the
    /// request's id (the original's build is what became of our request), `retry_of` empty.
    /// Its environment stays the original's.
    pub fn shadowed(report: &Report, request: &RequestedBuild) -> Self {
        let mut build = report.build_ref();
        build.build_request_id = request.build.build_request_id.clone();
        build.repository = request.build.repository.clone();
        build.commit = request.build.commit.clone();
        build.architecture = request.build.architecture;
        build.retry_of = String::new();
        build.shadowed = true;
        Self {
            build_id: report.build_id.clone(),
            build,
            requested: true,
            requested_event_id: request.requested_event_id.clone(),
            request: Some(request.request.clone()),
            chain: request.chain.clone(),
            ..Self::default()
        }
    }

    /// Records the BuildRequested `envelope` of `build_id` (requested at `requested_at`). A
    /// new record starts heard of at the request; an existing one (a report came first, or the
    /// build was first reported as nobody's) takes the request's reference and chain, keeping
    /// what reports taught (log link, region) where the request left it empty. False when
    /// nothing changed (a redelivery).
    pub fn record_request(
        &mut self,
        build_id: &str,
        requested_at: OffsetDateTime,
        envelope: &v1::Envelope,
        request: &v1::BuildRequested,
    ) -> bool {
        let is_new = self.is_new();
        if is_new {
            *self = Self {
                build_id: build_id.to_owned(),
                last_heard_ms: unix_ms(requested_at),
                ..Self::default()
            };
        }
        let before = self.clone();
        let mut build = request.build.clone().unwrap_or_default();
        if build.log_url.is_empty() {
            build.log_url = self.build.log_url.clone();
        }
        if build.region.is_empty() {
            build.region = self.build.region.clone();
        }
        self.build = build;
        self.requested = true;
        self.requested_event_id = envelope.event_id.clone();
        self.request = Some(RequestData::from(request));
        self.chain = ChainData::caused_by(envelope);
        is_new || *self != before
    }

    /// Records a cancellation of a known build. False when nothing changed: the build is not
    /// known (nothing to record) or the cancellation is already recorded.
    pub fn record_cancel(&mut self, cancel: CancelData) -> bool {
        if self.is_new() || self.cancelled.as_ref() == Some(&cancel) {
            return false;
        }
        self.cancelled = Some(cancel);
        true
    }

    /// Takes in a report the state machine decided on (`outcome`, from this record's state),
    /// heard of at `now`: the new state, and when something moved, the phases as listed, the
    /// first final status, and the log link and region the report adds.
    pub fn record_report(&mut self, report: &Report, outcome: &Outcome, now: OffsetDateTime) {
        if !outcome.transitions.is_empty() {
            let phases = report.phases();
            if !phases.is_empty()
                && matches!(report.kind, ReportKind::InProgress | ReportKind::Final(_))
            {
                self.phases = phases;
            }
            if let Lifecycle::Final { status } = outcome.state.lifecycle {
                self.final_status = Some(status.as_str().to_owned());
            }
            let reported = report.build_ref();
            if self.build.log_url.is_empty() || !self.requested {
                self.build.log_url = reported.log_url;
            }
            if self.build.region.is_empty() {
                self.build.region = reported.region;
            }
        }
        self.state = outcome.state.clone();
        self.last_heard_ms = unix_ms(now);
    }

    /// The in-flight entry of this build.
    pub fn in_flight(&self) -> InFlightRecord {
        InFlightRecord {
            build_id: self.build_id.clone(),
            backend: self.build.backend.clone(),
            last_heard_ms: self.last_heard_ms,
        }
    }
}

/// One build in flight (bucket `prx_ci_builds_in_flight`): what the reconciler needs without
/// reading the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightRecord {
    pub build_id: String,
    pub backend: String,
    pub last_heard_ms: i64,
}

#[cfg(test)]
#[path = "watched_build_tests.rs"]
mod tests;
