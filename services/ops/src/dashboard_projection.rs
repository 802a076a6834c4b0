//! The dashboard projection: what the web pages show, folded from every event of `PRX_EVENTS`
//! and `PRX_WEBHOOKS` (builds with their details, each branch's pushes in GitHub's order, each
//! parameter's writes and skips), so no page reads the streams per request.
//!
//! Pure and deterministic like [`crate::builds_projection`]: the state depends only on the
//! events applied, each stream's events in stream order (the two streams may interleave in any
//! way: a build event applied before its webhook finds its push row all the same). Applying a
//! sequence at or below a stream's position is a no-op. Memory is bounded: finished builds as
//! [`BuildsProjection`] keeps them, [`MAX_PUSHES_PER_BRANCH`] pushes per branch (the oldest in
//! push order go first, then the earliest stored undecided ones), [`MAX_BRANCHES`] branches,
//! [`MAX_PARAMETERS`] parameters with [`MAX_PARAMETER_HISTORY`] entries each.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prx_ci_proto::v1::{self, BuildState, Envelope, envelope::Payload, ordering_key::Lane};
use prx_ci_shared::bus::envelope::build_of;
use serde::Deserialize;

use crate::builds_projection::{BuildsProjection, is_final};

/// Pushes kept per branch (the oldest in GitHub's order are forgotten).
pub const MAX_PUSHES_PER_BRANCH: usize = 100;
/// Writes and skips kept per parameter.
pub const MAX_PARAMETER_HISTORY: usize = 50;
/// Branches kept (the one pushed to least recently is forgotten first): feature branches come
/// and go, and every push to one is recorded (as skipped).
pub const MAX_BRANCHES: usize = 5000;
/// Parameters kept (the one written or skipped least recently is forgotten first): names come
/// from the builds' mappings.
pub const MAX_PARAMETERS: usize = 20_000;
/// Publish outcomes and notifications kept per build.
const MAX_PER_BUILD: usize = 200;

/// Which stream an event was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Events,
    Webhooks,
}

/// What one applied event changed, for the live updates (Server-Sent Events) of the pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The build (projection key) whose page changed.
    pub build: Option<String>,
    /// The branch `(repository, branch)` whose timeline changed.
    pub branch: Option<(String, String)>,
    /// The parameter whose view changed.
    pub parameter: Option<String>,
    /// A message was parked.
    pub parked: bool,
}

impl Change {
    /// The topics a page subscribes to: `builds`, `build:<key>`, `branches`,
    /// `branch:<repo>/<branch>`,
    /// `parameters`, `parameter:<name>`, `parked`.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = Vec::new();
        if let Some(build) = &self.build {
            topics.push("builds".to_owned());
            topics.push(format!("build:{build}"));
        }
        if let Some((repository, branch)) = &self.branch {
            topics.push("branches".to_owned());
            topics.push(format!("branch:{repository}/{branch}"));
        }
        if let Some(parameter) = &self.parameter {
            topics.push("parameters".to_owned());
            topics.push(format!("parameter:{parameter}"));
        }
        if self.parked {
            topics.push("parked".to_owned());
        }
        topics
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One phase of a build, as the phase events and the completion report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub status: String,
    pub duration_ms: u64,
    pub message: String,
}

/// One publish outcome of a build: a parameter written, or not and why.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishOutcome {
    Applied(v1::PublishApplied),
    Skipped(v1::PublishSkipped),
}

/// Everything the build page shows beyond the [`v1::BuildView`] of the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildDetail {
    /// The dispatcher's request (its variables and buildspec).
    pub requested: Option<v1::BuildRequested>,
    pub started_at: Option<prost_types::Timestamp>,
    /// The phase running now ("" when none is known).
    pub current_phase: String,
    pub phases: Vec<Phase>,
    pub completed: Option<v1::BuildCompleted>,
    pub cancelled: Option<v1::BuildCancelled>,
    pub publishes: Vec<(prost_types::Timestamp, PublishOutcome)>,
    pub notifications: Vec<(prost_types::Timestamp, v1::NotificationDelivered)>,
    /// The build as the notifier folds it (`notice::view`), so the page shows the Slack
    /// message and commit status the notifier renders from the same events.
    pub notice: prx_ci_shared::notice::view::BuildView,
}

/// What the dispatcher decided for a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not decided yet (or the decision is not stored yet).
    Pending,
    /// Builds requested, with what each did (kept with the push, so a build the builds list
    /// forgot still counts).
    Built(Vec<PushBuild>),
    /// No build, and why.
    Skipped { reason: String, detail: String },
}

/// One build of a push, as its timeline entry shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBuild {
    /// The build's projection key.
    pub key: String,
    pub architecture: v1::Architecture,
    pub state: BuildState,
    /// A newer push superseded it and the dispatcher stopped it (whatever final state the
    /// backend reported first).
    pub cancelled: bool,
    /// What the publisher did for it, in order (at most [`MAX_PUBLISHES_PER_PUSH_BUILD`]).
    pub publishes: Vec<PushPublish>,
}

/// One publish outcome of a push's build, in brief.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPublish {
    /// "" for a skip of the whole build.
    pub parameter: String,
    pub written: bool,
    /// The skip reason (`PublishSkipReason`), unspecified for a write.
    pub reason: v1::PublishSkipReason,
}

impl From<&PublishOutcome> for PushPublish {
    fn from(outcome: &PublishOutcome) -> Self {
        match outcome {
            PublishOutcome::Applied(a) => Self {
                parameter: a.parameter.clone(),
                written: true,
                reason: v1::PublishSkipReason::Unspecified,
            },
            PublishOutcome::Skipped(s) => Self {
                parameter: s.parameter.clone(),
                written: false,
                reason: s.reason(),
            },
        }
    }
}

/// Publish outcomes kept per build of a push in the timeline.
pub const MAX_PUBLISHES_PER_PUSH_BUILD: usize = 20;

/// One push on a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The delivery (or operator action) that carried it: the chain's correlation id.
    pub correlation_id: String,
    /// GitHub's push order (`PushPosition` on the wire); 0 until the dispatcher decided.
    pub push_sequence: u64,
    /// Where its webhook is stored in `PRX_WEBHOOKS` (0 until it is read).
    pub webhook_sequence: u64,
    pub commit: String,
    /// Display text from the payload (untrusted: escaped when rendered).
    pub message: String,
    pub pusher: String,
    pub received_at: Option<prost_types::Timestamp>,
    /// An operator's rebuild: who asked.
    pub requested_by: String,
    pub decision: Decision,
}

impl Push {
    /// A push's outcome from its decision, its builds' states and their publishes.
    pub fn outcome(&self) -> Outcome {
        let builds = match &self.decision {
            Decision::Pending => return Outcome::Pending,
            Decision::Skipped { .. } => return Outcome::Skipped,
            Decision::Built(builds) => builds,
        };
        let mut outcome = Outcome::NotPublished;
        for build in builds {
            let published = build.publishes.iter().any(|p| p.written);
            let superseded = build.cancelled
                || build.state == BuildState::Cancelled
                || build
                    .publishes
                    .iter()
                    .any(|p| p.reason == v1::PublishSkipReason::Superseded);
            let this = if published {
                Outcome::Published
            } else if superseded {
                Outcome::Superseded
            } else if !is_final(build.state) {
                Outcome::Building
            } else if build.state != BuildState::Succeeded {
                Outcome::Failed
            } else {
                Outcome::NotPublished
            };
            outcome = outcome.max_with(this);
        }
        outcome
    }
}

/// A push's outcome as the timeline shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No decision yet.
    Pending,
    /// The dispatcher built nothing.
    Skipped,
    /// A build is requested or running.
    Building,
    /// A parameter was written.
    Published,
    /// A newer push won: a publish was skipped as superseded, or a build was cancelled.
    Superseded,
    /// A build failed (or faulted, timed out, was stopped).
    Failed,
    /// Built, nothing written (publishing off, prerelease, nothing mapped, refused values).
    NotPublished,
}

impl Outcome {
    /// The word pages and tests use (`data-outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::Building => "building",
            Self::Published => "published",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
            Self::NotPublished => "not-published",
        }
    }
}

/// One write or skip of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterEntry {
    pub at: Option<prost_types::Timestamp>,
    pub push_sequence: u64,
    /// The build's projection key.
    pub build: String,
    pub outcome: PublishOutcome,
}

impl ParameterEntry {
    fn build_ref(&self) -> Option<&v1::BuildRef> {
        match &self.outcome {
            PublishOutcome::Applied(a) => a.build.as_ref(),
            PublishOutcome::Skipped(s) => s.build.as_ref(),
        }
    }

    /// The commit of the build that wrote (or did not write) the parameter.
    pub fn commit(&self) -> &str {
        self.build_ref().map_or("", |b| b.commit.as_str())
    }

    pub fn repository(&self) -> &str {
        self.build_ref().map_or("", |b| b.repository.as_str())
    }
}

/// A parameter: its current value as the newest push wrote it, its owner, its history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameter {
    /// The write of the newest push (by push order, then stream order).
    pub current: Option<ParameterEntry>,
    /// The repository that owns the name (claimed or transferred), "" when unknown.
    pub owner: String,
    /// Newest first.
    pub history: VecDeque<ParameterEntry>,
}

/// The dashboard projection (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardProjection {
    builds: BuildsProjection,
    details: HashMap<String, BuildDetail>,
    branches: BTreeMap<(String, String), HashMap<String, Push>>,
    /// When each branch last changed (a count of applied events), to forget the stalest.
    branch_activity: HashMap<(String, String), u64>,
    parameters: BTreeMap<String, Parameter>,
    /// Events applied (both streams).
    applied: u64,
    events_position: u64,
    webhooks_position: u64,
}

#[derive(Deserialize, Default)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    head_commit: Option<HeadCommit>,
    pusher: Option<Pusher>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct HeadCommit {
    message: Option<String>,
}

#[derive(Deserialize)]
struct Pusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: Option<String>,
}

/// The first line of a commit message, at most 120 characters.
fn headline(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

impl DashboardProjection {
    /// An empty projection keeping at most `keep_finished` finished builds.
    pub fn new(keep_finished: usize) -> Self {
        Self {
            builds: BuildsProjection::new(keep_finished),
            details: HashMap::new(),
            branches: BTreeMap::new(),
            branch_activity: HashMap::new(),
            parameters: BTreeMap::new(),
            applied: 0,
            events_position: 0,
            webhooks_position: 0,
        }
    }

    /// The last sequence applied from `source` (0 = none).
    pub fn position(&self, source: Source) -> u64 {
        match source {
            Source::Events => self.events_position,
            Source::Webhooks => self.webhooks_position,
        }
    }

    /// The builds list (in flight and recent).
    pub fn builds(&self) -> &BuildsProjection {
        &self.builds
    }

    /// A build's list view and details.
    pub fn build(&self, key: &str) -> Option<(v1::BuildView, &BuildDetail)> {
        let view = self.builds.get(key)?;
        Some((view, self.details.get(key)?))
    }

    /// The branches known, by repository.
    pub fn branches(&self) -> impl Iterator<Item = &(String, String)> {
        self.branches.keys()
    }

    /// A branch's pushes in GitHub's order, newest first (undecided ones, whose place is not
    /// known yet, first).
    pub fn timeline(&self, repository: &str, branch: &str) -> Vec<&Push> {
        let Some(pushes) = self
            .branches
            .get(&(repository.to_owned(), branch.to_owned()))
        else {
            return Vec::new();
        };
        let mut out: Vec<&Push> = pushes.values().collect();
        out.sort_by(|a, b| {
            let undecided = |p: &Push| p.push_sequence == 0;
            undecided(b)
                .cmp(&undecided(a))
                .then(b.push_sequence.cmp(&a.push_sequence))
                .then(b.correlation_id.cmp(&a.correlation_id))
        });
        out
    }

    /// Every parameter by name.
    pub fn parameters(&self) -> &BTreeMap<String, Parameter> {
        &self.parameters
    }

    /// Folds the event stored at `sequence` of `source`; returns what it changed.
    pub fn apply(&mut self, source: Source, sequence: u64, envelope: &Envelope) -> Change {
        let position = match source {
            Source::Events => &mut self.events_position,
            Source::Webhooks => &mut self.webhooks_position,
        };
        if sequence <= *position {
            return Change::default();
        }
        *position = sequence;
        self.applied += 1;
        let Some(payload) = &envelope.payload else {
            return Change::default();
        };
        match payload {
            Payload::WebhookReceived(webhook) => self.apply_webhook(sequence, envelope, webhook),
            Payload::BuildSkipped(skip) => self.apply_skip(envelope, skip),
            Payload::ParameterOwnerChanged(owner) => {
                self.parameters
                    .entry(owner.parameter.clone())
                    .or_default()
                    .owner
                    .clone_from(&owner.repository);
                Change {
                    parameter: Some(owner.parameter.clone()),
                    ..Change::default()
                }
            }
            Payload::MessageParked(_) => Change {
                parked: true,
                ..Change::default()
            },
            other => match build_of(other) {
                Some(build) => self.apply_build_event(sequence, envelope, build.clone()),
                None => Change::default(),
            },
        }
    }

    fn push_mut(&mut self, envelope: &Envelope) -> Option<(&mut Push, (String, String))> {
        let key = envelope.ordering_key.as_ref()?;
        let Some(Lane::Branch(branch)) = &key.lane else {
            return None;
        };
        if envelope.correlation_id.is_empty() {
            return None;
        }
        let lane = (key.repository.clone(), branch.clone());
        let pushes = self.branches.entry(lane.clone()).or_default();
        let push = pushes
            .entry(envelope.correlation_id.clone())
            .or_insert_with(|| Push {
                correlation_id: envelope.correlation_id.clone(),
                push_sequence: 0,
                webhook_sequence: 0,
                commit: String::new(),
                message: String::new(),
                pusher: String::new(),
                received_at: None,
                requested_by: String::new(),
                decision: Decision::Pending,
            });
        if push.push_sequence == 0 {
            push.push_sequence = envelope.push_sequence;
        }
        Some((push, lane))
    }

    fn apply_webhook(
        &mut self,
        sequence: u64,
        envelope: &Envelope,
        webhook: &v1::WebhookReceived,
    ) -> Change {
        if webhook.event_name != "push" {
            return Change::default();
        }
        let payload: PushPayload = serde_json::from_slice(&webhook.payload).unwrap_or_default();
        let Some(branch) = payload
            .git_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("refs/heads/"))
        else {
            return Change::default();
        };
        let repository = if webhook.repository.is_empty() {
            payload
                .repository
                .and_then(|r| r.full_name)
                .unwrap_or_default()
        } else {
            webhook.repository.clone()
        };
        let mut keyed = envelope.clone();
        keyed.ordering_key = Some(v1::OrderingKey {
            repository,
            lane: Some(Lane::Branch(branch.to_owned())),
        });
        if keyed.correlation_id.is_empty() {
            keyed.correlation_id.clone_from(&webhook.delivery_id);
        }
        let Some((push, lane)) = self.push_mut(&keyed) else {
            return Change::default();
        };
        if push.commit.is_empty() {
            push.commit = payload.after.unwrap_or_default();
        }
        push.message = headline(
            payload
                .head_commit
                .and_then(|c| c.message)
                .as_deref()
                .unwrap_or(""),
        );
        push.pusher = payload.pusher.and_then(|p| p.name).unwrap_or_default();
        push.received_at = envelope.time;
        push.webhook_sequence = sequence;
        push.requested_by.clone_from(&webhook.requested_by);
        let lane = self.bound_branch(lane);
        Change {
            branch: Some(lane),
            ..Change::default()
        }
    }

    fn apply_skip(&mut self, envelope: &Envelope, skip: &v1::BuildSkipped) -> Change {
        let Some((push, lane)) = self.push_mut(envelope) else {
            return Change::default();
        };
        if push.commit.is_empty() {
            push.commit.clone_from(&skip.commit);
        }
        if !matches!(push.decision, Decision::Built(_)) {
            push.decision = Decision::Skipped {
                reason: skip.reason().as_str_name().to_owned(),
                detail: skip.detail.clone(),
            };
        }
        let lane = self.bound_branch(lane);
        Change {
            branch: Some(lane),
            ..Change::default()
        }
    }

    /// Forgets the oldest push of `lane` beyond [`MAX_PUSHES_PER_BRANCH`] (the lowest in push
    /// order, else the earliest stored undecided one), and the stalest branch beyond
    /// [`MAX_BRANCHES`].
    fn bound_branch(&mut self, lane: (String, String)) -> (String, String) {
        if let Some(pushes) = self.branches.get_mut(&lane)
            && pushes.len() > MAX_PUSHES_PER_BRANCH
        {
            let oldest = pushes
                .values()
                .filter(|p| p.push_sequence != 0)
                .min_by_key(|p| p.push_sequence)
                .or_else(|| {
                    pushes.values().min_by(|a, b| {
                        (a.webhook_sequence, &a.correlation_id)
                            .cmp(&(b.webhook_sequence, &b.correlation_id))
                    })
                })
                .map(|p| p.correlation_id.clone());
            if let Some(oldest) = oldest {
                pushes.remove(&oldest);
            }
        }
        self.branch_activity.insert(lane.clone(), self.applied);
        if self.branches.len() > MAX_BRANCHES {
            let stalest = self
                .branch_activity
                .iter()
                .min_by_key(|(l, at)| (**at, *l))
                .map(|(l, _)| l.clone());
            if let Some(stalest) = stalest {
                self.branches.remove(&stalest);
                self.branch_activity.remove(&stalest);
            }
        }
        lane
    }

    fn apply_build_event(
        &mut self,
        sequence: u64,
        envelope: &Envelope,
        build: v1::BuildRef,
    ) -> Change {
        let payload = envelope.payload.as_ref().expect("checked by apply");
        let is_build_event = matches!(
            payload,
            Payload::BuildRequested(_)
                | Payload::BuildStarted(_)
                | Payload::BuildPhaseChanged(_)
                | Payload::BuildCompleted(_)
                | Payload::BuildCancelled(_)
        );
        if is_build_event {
            self.builds.apply(sequence, envelope);
        }
        let Some(key) = self.builds.key_for(&build) else {
            return Change::default();
        };
        let mut change = Change {
            build: Some(key.clone()),
            ..Change::default()
        };
        let at = envelope.time.unwrap_or_default();
        let detail = self.details.entry(key.clone()).or_default();
        // Events the notifier's view does not take (or already took) change nothing there.
        let _ = detail.notice.apply(envelope);
        match payload {
            Payload::BuildRequested(requested) => detail.requested = Some(requested.clone()),
            Payload::BuildStarted(started) => {
                detail.started_at = started.started_at.or(envelope.time);
                if detail.requested.is_none() {
                    detail.requested.clone_from(&started.requested);
                }
            }
            Payload::BuildPhaseChanged(phase) => {
                if !phase.completed_phase.is_empty()
                    && !detail
                        .phases
                        .iter()
                        .any(|p| p.name == phase.completed_phase)
                {
                    detail.phases.push(Phase {
                        name: phase.completed_phase.clone(),
                        status: phase.completed_phase_status.clone(),
                        duration_ms: phase.duration_ms,
                        message: phase.message.clone(),
                    });
                }
                if detail.completed.is_none() {
                    detail.current_phase.clone_from(&phase.current_phase);
                }
            }
            Payload::BuildCompleted(completed) if detail.completed.is_none() => {
                if !completed.phases.is_empty() {
                    detail.phases = completed
                        .phases
                        .iter()
                        .map(|p| Phase {
                            name: p.name.clone(),
                            status: p.status.clone(),
                            duration_ms: p.duration_ms,
                            message: p.message.clone(),
                        })
                        .collect();
                }
                detail.current_phase.clear();
                if detail.requested.is_none() {
                    detail.requested.clone_from(&completed.requested);
                }
                detail.completed = Some(completed.clone());
            }
            Payload::BuildCancelled(cancelled) if detail.cancelled.is_none() => {
                detail.cancelled = Some(cancelled.clone());
            }
            Payload::PublishApplied(applied) => {
                let outcome = PublishOutcome::Applied(applied.clone());
                push_bounded(&mut detail.publishes, (at, outcome.clone()));
                change.parameter =
                    self.record_parameter(&applied.parameter, envelope, &key, outcome);
            }
            Payload::PublishSkipped(skipped) => {
                let outcome = PublishOutcome::Skipped(skipped.clone());
                push_bounded(&mut detail.publishes, (at, outcome.clone()));
                if !skipped.parameter.is_empty() {
                    change.parameter =
                        self.record_parameter(&skipped.parameter, envelope, &key, outcome);
                }
            }
            Payload::NotificationDelivered(delivered) => {
                push_bounded(&mut detail.notifications, (at, delivered.clone()));
            }
            _ => {}
        }
        let state = self
            .builds
            .get(&key)
            .map_or(BuildState::Requested, |v| v.state());
        if let Payload::BuildRequested(_) = payload
            && let Some((push, lane)) = self.push_mut(envelope)
        {
            if push.commit.is_empty() {
                push.commit.clone_from(&build.commit);
            }
            let this = PushBuild {
                key: key.clone(),
                architecture: build.architecture(),
                state,
                cancelled: false,
                publishes: Vec::new(),
            };
            match &mut push.decision {
                Decision::Built(builds) => {
                    if !builds.iter().any(|b| b.key == key) {
                        builds.push(this);
                    }
                }
                decision => *decision = Decision::Built(vec![this]),
            }
            change.branch = Some(self.bound_branch(lane));
        } else if let Some(v1::OrderingKey {
            repository,
            lane: Some(Lane::Branch(branch)),
        }) = &envelope.ordering_key
        {
            let lane = (repository.clone(), branch.clone());
            let summary = self
                .branches
                .get_mut(&lane)
                .and_then(|pushes| pushes.get_mut(&envelope.correlation_id))
                .and_then(|push| match &mut push.decision {
                    Decision::Built(builds) => builds.iter_mut().find(|b| b.key == key),
                    _ => None,
                });
            if let Some(summary) = summary {
                if is_build_event {
                    summary.state = state;
                }
                if let Payload::BuildCancelled(_) = payload {
                    summary.cancelled = true;
                }
                let publish = match payload {
                    Payload::PublishApplied(a) => {
                        Some(PushPublish::from(&PublishOutcome::Applied(a.clone())))
                    }
                    Payload::PublishSkipped(s) => {
                        Some(PushPublish::from(&PublishOutcome::Skipped(s.clone())))
                    }
                    _ => None,
                };
                if let Some(publish) = publish
                    && summary.publishes.len() < MAX_PUBLISHES_PER_PUSH_BUILD
                    && !summary.publishes.contains(&publish)
                {
                    summary.publishes.push(publish);
                }
            }
            change.branch = Some(lane);
        }
        // Details of builds the list forgot go too.
        if self.details.len() > self.builds.len() + 64 {
            let builds = &self.builds;
            self.details.retain(|k, _| builds.get(k).is_some());
        }
        change
    }

    fn record_parameter(
        &mut self,
        name: &str,
        envelope: &Envelope,
        build: &str,
        outcome: PublishOutcome,
    ) -> Option<String> {
        let entry = ParameterEntry {
            at: envelope.time,
            push_sequence: envelope.push_sequence,
            build: build.to_owned(),
            outcome,
        };
        let parameter = self.parameters.entry(name.to_owned()).or_default();
        if matches!(entry.outcome, PublishOutcome::Applied(_))
            && parameter
                .current
                .as_ref()
                .is_none_or(|c| c.push_sequence <= entry.push_sequence)
        {
            parameter.current = Some(entry.clone());
        }
        parameter.history.push_front(entry);
        parameter.history.truncate(MAX_PARAMETER_HISTORY);
        if self.parameters.len() > MAX_PARAMETERS {
            let stalest = self
                .parameters
                .iter()
                .filter(|(n, _)| n.as_str() != name)
                .min_by_key(|(n, p)| {
                    (
                        p.history
                            .front()
                            .and_then(|e| e.at)
                            .map(|t| (t.seconds, t.nanos)),
                        *n,
                    )
                })
                .map(|(n, _)| n.clone());
            if let Some(stalest) = stalest {
                self.parameters.remove(&stalest);
            }
        }
        Some(name.to_owned())
    }
}

fn push_bounded<T>(list: &mut Vec<T>, item: T) {
    if list.len() < MAX_PER_BUILD {
        list.push(item);
    }
}

impl Outcome {
    /// Combines the outcomes of a push's builds: published wins, then superseded, building,
    /// failed, not published.
    fn max_with(self, other: Self) -> Self {
        fn rank(o: Outcome) -> u8 {
            match o {
                Outcome::Published => 6,
                Outcome::Superseded => 5,
                Outcome::Building => 4,
                Outcome::Failed => 3,
                Outcome::NotPublished => 2,
                Outcome::Skipped => 1,
                Outcome::Pending => 0,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "PRX/app";

    fn envelope(correlation: &str, push_sequence: u64, payload: Payload) -> Envelope {
        Envelope {
            event_id: format!("{correlation}-{push_sequence}"),
            correlation_id: correlation.into(),
            ordering_key: Some(v1::OrderingKey {
                repository: REPO.into(),
                lane: Some(Lane::Branch("main".into())),
            }),
            push_sequence,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::try_from(push_sequence).unwrap(),
                nanos: 0,
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn webhook(delivery: &str, commit: &str) -> Envelope {
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "after": commit,
            "head_commit": {"message": "Fix the thing\n\nlong body"},
            "pusher": {"name": "octocat"},
            "repository": {"full_name": REPO},
        });
        Envelope {
            correlation_id: delivery.into(),
            payload: Some(Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery.into(),
                event_name: "push".into(),
                payload: serde_json::to_vec(&body).unwrap().into(),
                repository: REPO.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn bref(request: &str, commit: &str) -> Option<v1::BuildRef> {
        Some(v1::BuildRef {
            build_request_id: request.into(),
            build_id: format!("local:{request}"),
            repository: REPO.into(),
            commit: commit.into(),
            ..Default::default()
        })
    }

    fn requested(delivery: &str, seq: u64, request: &str, commit: &str) -> Envelope {
        envelope(
            delivery,
            seq,
            Payload::BuildRequested(v1::BuildRequested {
                build: bref(request, commit),
                ..Default::default()
            }),
        )
    }

    fn completed(delivery: &str, seq: u64, request: &str, commit: &str) -> Envelope {
        envelope(
            delivery,
            seq,
            Payload::BuildCompleted(v1::BuildCompleted {
                build: bref(request, commit),
                status: v1::BuildStatus::Succeeded as i32,
                phases: vec![v1::PhaseRecord {
                    name: "BUILD".into(),
                    status: "SUCCEEDED".into(),
                    duration_ms: 1500,
                    message: String::new(),
                }],
                ..Default::default()
            }),
        )
    }

    fn applied(delivery: &str, seq: u64, request: &str, commit: &str) -> Envelope {
        envelope(
            delivery,
            seq,
            Payload::PublishApplied(v1::PublishApplied {
                parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
                value: format!("github/prx/app:{commit}"),
                build: bref(request, commit),
                ..Default::default()
            }),
        )
    }

    fn superseded(delivery: &str, seq: u64, request: &str, commit: &str) -> Envelope {
        envelope(
            delivery,
            seq,
            Payload::PublishSkipped(v1::PublishSkipped {
                parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
                value: format!("github/prx/app:{commit}"),
                build: bref(request, commit),
                reason: v1::PublishSkipReason::Superseded as i32,
                ..Default::default()
            }),
        )
    }

    /// The demo: two pushes, the older one finishing last.
    fn demo() -> Vec<(Source, u64, Envelope)> {
        vec![
            (Source::Webhooks, 1, webhook("d1", "aaa")),
            (Source::Events, 1, requested("d1", 10, "r1", "aaa")),
            (Source::Webhooks, 2, webhook("d2", "bbb")),
            (Source::Events, 2, requested("d2", 20, "r2", "bbb")),
            (Source::Events, 3, completed("d2", 20, "r2", "bbb")),
            (Source::Events, 4, applied("d2", 20, "r2", "bbb")),
            (Source::Events, 5, completed("d1", 10, "r1", "aaa")),
            (Source::Events, 6, superseded("d1", 10, "r1", "aaa")),
        ]
    }

    #[test]
    fn the_demo_reads_as_one_published_push_and_one_superseded() {
        let mut p = DashboardProjection::new(100);
        for (source, seq, e) in demo() {
            p.apply(source, seq, &e);
        }
        let timeline = p.timeline(REPO, "main");
        let rows: Vec<(&str, Outcome)> = timeline
            .iter()
            .map(|push| (push.commit.as_str(), push.outcome()))
            .collect();
        assert_eq!(
            rows,
            [("bbb", Outcome::Published), ("aaa", Outcome::Superseded)]
        );
        assert_eq!(timeline[0].message, "Fix the thing");
        assert_eq!(timeline[0].pusher, "octocat");
        let parameter = &p.parameters()["/prx/stag/Spire/App/pkg/docker-image-tag"];
        assert_eq!(parameter.current.as_ref().unwrap().commit(), "bbb");
        assert_eq!(parameter.history.len(), 2);
        assert!(matches!(
            parameter.history[0].outcome,
            PublishOutcome::Skipped(_)
        ));
        let (view, detail) = p.build("r1").unwrap();
        assert_eq!(view.state(), BuildState::Succeeded);
        assert_eq!(detail.phases[0].duration_ms, 1500);
        assert_eq!(detail.publishes.len(), 1);
    }

    #[test]
    fn the_streams_may_interleave_in_any_order() {
        let in_order = {
            let mut p = DashboardProjection::new(100);
            for (source, seq, e) in demo() {
                p.apply(source, seq, &e);
            }
            p
        };
        // Every event first, the webhooks last: the same pushes, outcomes and parameters.
        let mut late_webhooks = DashboardProjection::new(100);
        let events = demo();
        for (source, seq, e) in events.iter().filter(|(s, ..)| *s == Source::Events) {
            late_webhooks.apply(*source, *seq, e);
        }
        for (source, seq, e) in events.iter().filter(|(s, ..)| *s == Source::Webhooks) {
            late_webhooks.apply(*source, *seq, e);
        }
        let outcomes = |p: &DashboardProjection| -> Vec<(String, Outcome, String)> {
            p.timeline(REPO, "main")
                .iter()
                .map(|push| (push.commit.clone(), push.outcome(), push.message.clone()))
                .collect()
        };
        assert_eq!(outcomes(&late_webhooks), outcomes(&in_order));
        assert_eq!(late_webhooks.parameters(), in_order.parameters());
        // Re-applying stored sequences changes nothing.
        let before = late_webhooks.clone();
        for (source, seq, e) in demo() {
            assert!(late_webhooks.apply(source, seq, &e).is_empty());
        }
        assert_eq!(late_webhooks, before);
    }

    #[test]
    fn changes_name_the_pages_to_refresh() {
        let mut p = DashboardProjection::new(100);
        let change = p.apply(Source::Events, 1, &requested("d1", 10, "r1", "aaa"));
        assert_eq!(
            change.topics(),
            ["builds", "build:r1", "branches", "branch:PRX/app/main"]
        );
        let change = p.apply(Source::Events, 2, &applied("d1", 10, "r1", "aaa"));
        assert!(
            change
                .topics()
                .contains(&"parameter:/prx/stag/Spire/App/pkg/docker-image-tag".to_owned())
        );
    }

    #[test]
    fn undecided_pushes_come_first_and_old_pushes_are_forgotten() {
        let mut p = DashboardProjection::new(100);
        let total = MAX_PUSHES_PER_BRANCH + 5;
        for i in 1..=total {
            let seq = u64::try_from(i).unwrap();
            let delivery = format!("d{i}");
            p.apply(Source::Webhooks, seq, &webhook(&delivery, &format!("c{i}")));
            if i < total {
                p.apply(
                    Source::Events,
                    seq,
                    &requested(&delivery, seq * 10, &format!("r{i}"), &format!("c{i}")),
                );
            }
        }
        let timeline = p.timeline(REPO, "main");
        assert_eq!(timeline.len(), MAX_PUSHES_PER_BRANCH);
        assert_eq!(timeline[0].commit, format!("c{total}"));
        assert_eq!(timeline[0].outcome(), Outcome::Pending);
        assert_eq!(timeline[1].commit, format!("c{}", total - 1));
        assert_eq!(timeline[1].outcome(), Outcome::Building);
    }

    #[test]
    fn a_push_keeps_its_outcome_after_its_builds_are_forgotten() {
        // Keep one finished build: the older push's build is forgotten by the builds list.
        let mut p = DashboardProjection::new(1);
        for (source, seq, e) in demo() {
            p.apply(source, seq, &e);
        }
        assert!(
            p.build("r2").is_none(),
            "the first build to finish is forgotten"
        );
        let rows: Vec<(String, Outcome)> = p
            .timeline(REPO, "main")
            .iter()
            .map(|push| (push.commit.clone(), push.outcome()))
            .collect();
        assert_eq!(
            rows,
            [
                ("bbb".to_owned(), Outcome::Published),
                ("aaa".to_owned(), Outcome::Superseded)
            ]
        );
        let Decision::Built(builds) = &p.timeline(REPO, "main")[0].decision else {
            panic!("built")
        };
        assert_eq!(builds[0].state, BuildState::Succeeded);
        assert!(builds[0].publishes[0].written);
    }

    #[test]
    fn with_the_webhooks_read_far_ahead_the_newest_pushes_keep_their_details() {
        // After a restart the webhooks' reader runs ahead: every push is undecided when the
        // branch overflows, then the decisions arrive.
        let total = MAX_PUSHES_PER_BRANCH + 50;
        let mut p = DashboardProjection::new(1000);
        for i in 1..=total {
            let seq = u64::try_from(i).unwrap();
            p.apply(
                Source::Webhooks,
                seq,
                &webhook(&format!("d{i}"), &format!("c{i}")),
            );
        }
        for i in 1..=total {
            let seq = u64::try_from(i).unwrap();
            let delivery = format!("d{i}");
            p.apply(
                Source::Events,
                seq,
                &requested(&delivery, seq * 10, &format!("r{i}"), &format!("c{i}")),
            );
        }
        let timeline = p.timeline(REPO, "main");
        assert_eq!(timeline.len(), MAX_PUSHES_PER_BRANCH);
        assert_eq!(timeline[0].commit, format!("c{total}"));
        assert!(
            timeline
                .iter()
                .all(|push| push.message == "Fix the thing" && push.pusher == "octocat"),
            "every kept push has its webhook's details"
        );
        assert_eq!(
            timeline.last().unwrap().commit,
            format!("c{}", total - MAX_PUSHES_PER_BRANCH + 1)
        );
    }

    #[test]
    fn a_build_stopped_for_a_newer_push_reads_superseded_whichever_report_came_first() {
        let mut p = DashboardProjection::new(100);
        p.apply(Source::Webhooks, 1, &webhook("d1", "aaa"));
        p.apply(Source::Events, 1, &requested("d1", 10, "r1", "aaa"));
        // The backend's STOPPED report is stored before the dispatcher's cancellation.
        p.apply(
            Source::Events,
            2,
            &envelope(
                "d1",
                10,
                Payload::BuildCompleted(v1::BuildCompleted {
                    build: bref("r1", "aaa"),
                    status: v1::BuildStatus::Stopped as i32,
                    ..Default::default()
                }),
            ),
        );
        p.apply(
            Source::Events,
            3,
            &envelope(
                "d1",
                10,
                Payload::BuildCancelled(v1::BuildCancelled {
                    build: bref("r1", "aaa"),
                    superseded_by_commit: "bbb".into(),
                    ..Default::default()
                }),
            ),
        );
        assert_eq!(p.timeline(REPO, "main")[0].outcome(), Outcome::Superseded);
    }

    #[test]
    fn the_stalest_branch_is_forgotten_beyond_the_limit() {
        let mut p = DashboardProjection::new(10);
        let branch_push = |i: usize| {
            let mut e = webhook(&format!("d{i}"), "aaa");
            if let Some(Payload::WebhookReceived(w)) = &mut e.payload {
                let body =
                    serde_json::json!({"ref": format!("refs/heads/feature-{i}"), "after": "aaa"});
                w.payload = serde_json::to_vec(&body).unwrap().into();
            }
            e
        };
        for i in 0..=MAX_BRANCHES {
            p.apply(
                Source::Webhooks,
                u64::try_from(i + 1).unwrap(),
                &branch_push(i),
            );
        }
        assert_eq!(p.branches().count(), MAX_BRANCHES);
        assert!(p.timeline(REPO, "feature-0").is_empty(), "the stalest went");
        assert_eq!(
            p.timeline(REPO, &format!("feature-{MAX_BRANCHES}")).len(),
            1
        );
    }
}
