//! What a run leaves behind, as plain data the checks read: the load generator's answers, the
//! streams' facts, SSM histories, the fakes' recordings and the runner's records.

use std::collections::BTreeMap;

/// The build results the checks distinguish (`BuildCompleted.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuildResult {
    Succeeded,
    Failed,
    Fault,
    Stopped,
    TimedOut,
    Other,
}

impl BuildResult {
    /// The commit status state the notifier must leave for this result.
    pub fn status_state(self) -> &'static str {
        match self {
            Self::Succeeded => "success",
            Self::Failed | Self::Fault | Self::TimedOut => "failure",
            Self::Stopped | Self::Other => "error",
        }
    }
}

/// One delivery id the load generator sent (all its copies and attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentDelivery {
    pub delivery_id: String,
    /// Some send of it was answered 2xx.
    pub accepted: bool,
}

/// A dispatcher decision (a `BuildRequested` or `BuildSkipped` event) about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Requested {
        event_id: String,
        delivery_id: String,
        build_id: String,
        architecture: String,
        repository: String,
        commit: String,
        /// The lost build this one re-runs ("" for a first attempt).
        retry_of: String,
    },
    Skipped {
        event_id: String,
        delivery_id: String,
    },
}

impl Decision {
    pub fn delivery_id(&self) -> &str {
        match self {
            Self::Requested { delivery_id, .. } | Self::Skipped { delivery_id, .. } => delivery_id,
        }
    }
}

/// A `BuildCompleted` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub event_id: String,
    pub build_id: String,
    pub result: BuildResult,
}

/// A build the local runner recorded (`builds/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerBuild {
    pub build_id: String,
    pub request_id: String,
    pub final_status: Option<String>,
}

/// One call the fake Slack received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackCall {
    Post { ts: String, build: String },
    Update { ts: String, build: String },
}

/// One commit status the fake GitHub recorded, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWrite {
    pub repository: String,
    pub sha: String,
    pub context: String,
    pub state: String,
}

/// A message on `PRX_PARKED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub consumer: String,
    /// The parked message's subject.
    pub subject: String,
    /// Why it was parked.
    pub error: String,
    pub data: Vec<u8>,
}

/// What the SSM history of one parameter must look like: the value each push of its lane
/// would write, oldest push first, and the value it must end on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterExpectation {
    /// Values in GitHub's push order of the lane.
    pub values_in_push_order: Vec<String>,
    /// The newest push whose build did not fail by its own fault (`None`: no write expected).
    pub final_value: Option<String>,
}

/// Everything the checks read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub sent: Vec<SentDelivery>,
    /// Delivery ids of the messages stored on `PRX_WEBHOOKS` (one entry per message).
    pub stored_webhooks: Vec<String>,
    pub decisions: Vec<Decision>,
    pub completions: Vec<Completion>,
    pub runner_builds: Vec<RunnerBuild>,
    /// `GetParameterHistory` values, oldest first.
    pub ssm: BTreeMap<String, Vec<String>>,
    pub expectations: BTreeMap<String, ParameterExpectation>,
    pub slack: Vec<SlackCall>,
    pub statuses: Vec<StatusWrite>,
    pub parked: Vec<Parked>,
    /// Payloads published on purpose to be parked.
    pub poisoned: Vec<Vec<u8>>,
}
