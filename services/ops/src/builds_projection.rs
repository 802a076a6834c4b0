//! The builds projection: builds in flight and recent ones, folded from the build events
//! (`build.requested`, `build.started`, `build.completed`, `build.cancelled`, `build.phase`;
//! every other event is ignored).
//!
//! Pure and deterministic: the state depends only on the sequence of events applied, so
//! rebuilding it from the stream from scratch gives exactly the state kept incrementally
//! (`tests/projection.rs` proves it). Applying an event at or below the current position is a
//! no-op, which makes re-reading an overlapping range harmless.

use std::collections::{BTreeMap, HashMap};

use prx_ci_proto::v1::{self, BuildState, BuildStatus, BuildView, Envelope, envelope::Payload};

fn rank(state: BuildState) -> u8 {
    match state {
        BuildState::Unspecified => 0,
        BuildState::Requested => 1,
        BuildState::Running => 2,
        _ => 3,
    }
}

/// Whether a build reached a final state.
pub fn is_final(state: BuildState) -> bool {
    rank(state) == 3
}

fn state_of(status: BuildStatus) -> BuildState {
    match status {
        BuildStatus::Succeeded => BuildState::Succeeded,
        BuildStatus::Failed => BuildState::Failed,
        BuildStatus::Fault => BuildState::Fault,
        BuildStatus::Stopped => BuildState::Stopped,
        BuildStatus::TimedOut => BuildState::TimedOut,
        BuildStatus::InProgress => BuildState::Running,
        BuildStatus::Unspecified => BuildState::Unspecified,
    }
}

/// Copies every non-empty field of `from` into `into`.
fn merge_ref(into: &mut v1::BuildRef, from: &v1::BuildRef) {
    fn set(a: &mut String, b: &str) {
        if !b.is_empty() {
            b.clone_into(a);
        }
    }
    set(&mut into.build_id, &from.build_id);
    set(&mut into.build_request_id, &from.build_request_id);
    set(&mut into.repository, &from.repository);
    set(&mut into.commit, &from.commit);
    set(&mut into.backend, &from.backend);
    set(&mut into.project, &from.project);
    set(&mut into.region, &from.region);
    set(&mut into.log_url, &from.log_url);
    if from.architecture != 0 {
        into.architecture = from.architecture;
    }
}

/// Builds in flight and recent ones.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildsProjection {
    builds: HashMap<String, BuildView>,
    /// Backend build id to projection key.
    aliases: HashMap<String, String>,
    /// Finished builds by the sequence that finished them (oldest first), for pruning and
    /// "recent" ordering.
    finished: BTreeMap<u64, String>,
    /// Requested-or-running builds by the sequence that first mentioned them.
    in_flight: BTreeMap<u64, String>,
    first_seen: HashMap<String, u64>,
    /// The last stream sequence applied.
    position: u64,
    keep_finished: usize,
}

impl BuildsProjection {
    /// An empty projection that remembers at most `keep_finished` finished builds.
    pub fn new(keep_finished: usize) -> Self {
        Self {
            builds: HashMap::new(),
            aliases: HashMap::new(),
            finished: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            first_seen: HashMap::new(),
            position: 0,
            keep_finished,
        }
    }

    /// The last `PRX_EVENTS` sequence applied (0 = none).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many builds are known.
    pub fn len(&self) -> usize {
        self.builds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.builds.is_empty()
    }

    /// The build known under `key`.
    pub fn get(&self, key: &str) -> Option<BuildView> {
        self.builds.get(key).cloned()
    }

    /// The key `build` is (or would be) known under: its request id, else the key its backend
    /// id joined, else its backend id; `None` for a reference with neither id.
    pub fn key_for(&self, build: &v1::BuildRef) -> Option<String> {
        if !build.build_request_id.is_empty() {
            Some(build.build_request_id.clone())
        } else if let Some(key) = self.aliases.get(&build.build_id) {
            Some(key.clone())
        } else if !build.build_id.is_empty() {
            Some(build.build_id.clone())
        } else {
            None
        }
    }

    /// Folds the event stored at `sequence`. Events of other kinds, and sequences already
    /// applied, change nothing.
    pub fn apply(&mut self, sequence: u64, envelope: &Envelope) {
        if sequence <= self.position {
            return;
        }
        self.position = sequence;
        let Some(payload) = &envelope.payload else {
            return;
        };
        let (build, state) = match payload {
            Payload::BuildRequested(p) => (p.build.as_ref(), BuildState::Requested),
            Payload::BuildStarted(p) => (p.build.as_ref(), BuildState::Running),
            Payload::BuildPhaseChanged(p) => (p.build.as_ref(), BuildState::Running),
            Payload::BuildCompleted(p) => (p.build.as_ref(), state_of(p.status())),
            Payload::BuildCancelled(p) => (p.build.as_ref(), BuildState::Cancelled),
            _ => return,
        };
        let Some(build) = build else { return };
        let Some(key) = self.key_for(build) else {
            return;
        };
        if !build.build_id.is_empty() && build.build_id != key {
            self.aliases.insert(build.build_id.clone(), key.clone());
        }
        let view = self.builds.entry(key.clone()).or_insert_with(|| BuildView {
            key: key.clone(),
            requested_at: envelope.time,
            ..Default::default()
        });
        if view.ordering_key.is_none() {
            view.ordering_key = envelope.ordering_key.clone();
            view.push_sequence = envelope.push_sequence;
        }
        if view.correlation_id.is_empty() {
            view.correlation_id = envelope.correlation_id.clone();
        }
        let mut merged = view.build.take().unwrap_or_default();
        merge_ref(&mut merged, build);
        view.build = Some(merged);
        view.updated_at = envelope.time;
        if let Payload::BuildCompleted(p) = payload
            && !is_final(view.state())
        {
            view.failed_phase = p.failed_phase.clone();
            view.duration_ms = p.duration_ms;
        }
        let current = view.state();
        // States only move forward; the first final state sticks (a late "started" or a
        // second final report does not reopen or rewrite a finished build).
        if rank(state) > rank(current) || (rank(state) == rank(current) && !is_final(current)) {
            view.set_state(state);
        }
        let now_final = is_final(view.state());
        let first = *self.first_seen.entry(key.clone()).or_insert(sequence);
        if now_final && !is_final(current) {
            self.in_flight.remove(&first);
            self.finished.insert(sequence, key);
            self.prune();
        } else if !now_final {
            self.in_flight.insert(first, key);
        }
    }

    fn prune(&mut self) {
        while self.finished.len() > self.keep_finished {
            let Some((_, key)) = self.finished.pop_first() else {
                break;
            };
            if let Some(view) = self.builds.remove(&key)
                && let Some(id) = view.build.as_ref().map(|b| &b.build_id)
            {
                self.aliases.remove(id);
            }
            self.first_seen.remove(&key);
        }
    }

    /// Builds requested or running, oldest first.
    pub fn in_flight(&self, repository: &str) -> Vec<BuildView> {
        self.in_flight
            .values()
            .filter_map(|k| self.builds.get(k))
            .filter(|v| repository.is_empty() || repo_of(v) == repository)
            .cloned()
            .collect()
    }

    /// The `n` most recently finished builds, newest first.
    pub fn recent(&self, n: usize, repository: &str) -> Vec<BuildView> {
        self.finished
            .values()
            .rev()
            .filter_map(|k| self.builds.get(k))
            .filter(|v| repository.is_empty() || repo_of(v) == repository)
            .take(n)
            .cloned()
            .collect()
    }

    /// The `n` most recently finished builds that `keep` accepts, newest first.
    pub fn recent_matching(&self, n: usize, keep: impl Fn(&BuildView) -> bool) -> Vec<BuildView> {
        self.finished
            .values()
            .rev()
            .filter_map(|k| self.builds.get(k))
            .filter(|v| keep(v))
            .take(n)
            .cloned()
            .collect()
    }
}

fn repo_of(view: &BuildView) -> &str {
    view.build.as_ref().map_or("", |b| b.repository.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bref(request: &str, build_id: &str) -> Option<v1::BuildRef> {
        Some(v1::BuildRef {
            build_request_id: request.into(),
            build_id: build_id.into(),
            repository: "PRX/app".into(),
            commit: "abc".into(),
            ..Default::default()
        })
    }

    fn env(payload: Payload) -> Envelope {
        Envelope {
            event_id: "e".into(),
            correlation_id: "d".into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn requested(r: &str) -> Envelope {
        env(Payload::BuildRequested(v1::BuildRequested {
            build: bref(r, ""),
            ..Default::default()
        }))
    }

    fn started(r: &str, id: &str) -> Envelope {
        env(Payload::BuildStarted(v1::BuildStarted {
            build: Some(v1::BuildRef {
                log_url: format!("https://logs/{id}"),
                ..bref(r, id).unwrap()
            }),
            ..Default::default()
        }))
    }

    fn completed(r: &str, id: &str, status: BuildStatus) -> Envelope {
        env(Payload::BuildCompleted(v1::BuildCompleted {
            build: bref(r, id),
            status: status as i32,
            failed_phase: "BUILD".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_build_moves_from_requested_to_finished() {
        let mut p = BuildsProjection::new(10);
        p.apply(1, &requested("r1"));
        assert_eq!(p.in_flight("")[0].state(), BuildState::Requested);
        p.apply(2, &started("r1", "local:1"));
        let view = &p.in_flight("")[0];
        assert_eq!(view.state(), BuildState::Running);
        assert_eq!(view.build.as_ref().unwrap().log_url, "https://logs/local:1");
        // Completion that names only the backend id joins through the alias.
        p.apply(3, &completed("", "local:1", BuildStatus::Failed));
        assert!(p.in_flight("").is_empty());
        let recent = p.recent(5, "PRX/app");
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].state(), BuildState::Failed);
        assert_eq!(recent[0].failed_phase, "BUILD");
        assert_eq!(recent[0].build.as_ref().unwrap().build_request_id, "r1");
        assert!(p.recent(5, "PRX/other").is_empty());
    }

    #[test]
    fn late_and_repeated_events_do_not_reopen_builds() {
        let mut p = BuildsProjection::new(10);
        p.apply(1, &requested("r1"));
        p.apply(2, &completed("r1", "b1", BuildStatus::Succeeded));
        p.apply(3, &started("r1", "b1"));
        p.apply(4, &completed("r1", "b1", BuildStatus::Failed));
        let before = p.clone();
        p.apply(2, &completed("r1", "b1", BuildStatus::Fault));
        assert_eq!(p, before, "an already applied sequence is a no-op");
        assert_eq!(p.recent(5, "")[0].state(), BuildState::Succeeded);
        assert!(p.in_flight("").is_empty());
    }

    #[test]
    fn cancelled_builds_are_final_and_old_finished_builds_are_pruned() {
        let mut p = BuildsProjection::new(2);
        for (i, r) in ["a", "b", "c"].iter().enumerate() {
            let seq = (i as u64) * 2 + 1;
            p.apply(seq, &requested(r));
            p.apply(
                seq + 1,
                &env(Payload::BuildCancelled(v1::BuildCancelled {
                    build: bref(r, ""),
                    ..Default::default()
                })),
            );
        }
        let keys: Vec<_> = p.recent(10, "").into_iter().map(|v| v.key).collect();
        assert_eq!(keys, ["c", "b"]);
        assert_eq!(p.len(), 2);
        p.apply(7, &requested("d"));
        assert_eq!(p.in_flight("").len(), 1);
    }
}
