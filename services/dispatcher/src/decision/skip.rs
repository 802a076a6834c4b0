//! A decision not to build: its reason and everything known about the event.

use prx_ci_proto::v1;
use prx_ci_shared::domain::OrderingKey;

/// Why a webhook builds nothing (mirrors `prx.ci.v1.SkipReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    EventTypeNotBuilt,
    NonDefaultBranch,
    TagPush,
    BranchDeleted,
    PullRequestActionNotBuilt,
    OwnerNotAllowed,
    NoBuildspec,
    NoMarker,
    MalformedPayload,
    InvalidBuildspec,
    Fork,
    RerunNotDispatched,
}

impl SkipReason {
    pub fn to_proto(self) -> v1::SkipReason {
        match self {
            Self::EventTypeNotBuilt => v1::SkipReason::EventTypeNotBuilt,
            Self::NonDefaultBranch => v1::SkipReason::NonDefaultBranch,
            Self::TagPush => v1::SkipReason::TagPush,
            Self::BranchDeleted => v1::SkipReason::BranchDeleted,
            Self::PullRequestActionNotBuilt => v1::SkipReason::PullRequestActionNotBuilt,
            Self::OwnerNotAllowed => v1::SkipReason::OwnerNotAllowed,
            Self::NoBuildspec => v1::SkipReason::NoBuildspec,
            Self::NoMarker => v1::SkipReason::NoMarker,
            Self::MalformedPayload => v1::SkipReason::MalformedPayload,
            Self::InvalidBuildspec => v1::SkipReason::InvalidBuildspec,
            Self::Fork => v1::SkipReason::Fork,
            Self::RerunNotDispatched => v1::SkipReason::RerunNotDispatched,
        }
    }

    /// `NO_BUILDSPEC` etc., for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::EventTypeNotBuilt => "EVENT_TYPE_NOT_BUILT",
            Self::NonDefaultBranch => "NON_DEFAULT_BRANCH",
            Self::TagPush => "TAG_PUSH",
            Self::BranchDeleted => "BRANCH_DELETED",
            Self::PullRequestActionNotBuilt => "PULL_REQUEST_ACTION_NOT_BUILT",
            Self::OwnerNotAllowed => "OWNER_NOT_ALLOWED",
            Self::NoBuildspec => "NO_BUILDSPEC",
            Self::NoMarker => "NO_MARKER",
            Self::MalformedPayload => "MALFORMED_PAYLOAD",
            Self::InvalidBuildspec => "INVALID_BUILDSPEC",
            Self::Fork => "FORK",
            Self::RerunNotDispatched => "RERUN_NOT_DISPATCHED",
        }
    }
}

/// A decision not to build, with everything known about the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    /// What a person needs to understand the skip (the branch, the action, the field...).
    pub detail: String,
    pub event_name: String,
    /// `action` of the payload ("" when it has none).
    pub action: String,
    /// `owner/repo` as the payload names it ("" when it does not).
    pub repository: String,
    /// The commit the event is about ("" when unknown).
    pub commit: String,
    /// The git ref of a push ("" otherwise).
    pub git_ref: String,
    /// Set when the event names a repository and a lane (branch or pull request).
    pub ordering_key: Option<OrderingKey>,
}

impl Skip {
    pub fn to_proto(&self) -> v1::BuildSkipped {
        v1::BuildSkipped {
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            reason: self.reason.to_proto() as i32,
            detail: self.detail.clone(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            r#ref: self.git_ref.clone(),
            shadow: false,
        }
    }
}
