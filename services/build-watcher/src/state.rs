//! The per-build state machine: which transitions a report causes, given what was already
//! emitted. Pure: no I/O.
//!
//! A build goes `Pending` (requested, nothing heard) → `InProgress` → `Final(status)`, and
//! never back. Every transition is emitted once: a report that tells nothing new (the same
//! state from a second source, a late phase, an `IN_PROGRESS` after the final state, a second
//! final) causes nothing. Phase changes are only emitted while the build runs and only
//! forward in CodeBuild's phase order, so a late phase never moves a build backwards.
//!
//! A final report for a build never seen running emits `Started` and then `Completed`: every
//! build's history has exactly one start before its end, so consumers (the notifier posts on
//! the first event and updates on later ones) need no special case for builds whose start
//! report was lost or arrived late.

use serde::{Deserialize, Serialize};

use prx_ci_shared::codebuild::build::FinalStatus;

use crate::report::{Report, ReportKind, phase_rank};

/// Where a build is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Lifecycle {
    /// Requested; nothing heard from the backend yet.
    #[default]
    Pending,
    InProgress,
    Final {
        status: FinalStatus,
    },
}

impl Lifecycle {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Final { .. })
    }
}

/// What the state machine remembers of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildState {
    pub lifecycle: Lifecycle,
    /// Phases whose change was emitted, in emission order.
    #[serde(default)]
    pub phases_reported: Vec<String>,
}

/// What a report says, reduced to what the state machine decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// An `IN_PROGRESS` state change, with the phases it lists as ended (in order).
    InProgress { ended_phases: &'a [&'a str] },
    /// A phase change: `phase` ended.
    Phase { phase: &'a str },
    /// A final state change.
    Final(FinalStatus),
}

/// A transition to emit as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Started,
    PhaseChanged { phase: String },
    Completed { status: FinalStatus },
}

/// Why a report changed nothing (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChange {
    /// Already in (or past) the reported state.
    AlreadyKnown,
    /// A report after the final state.
    AfterFinal,
    /// A second final state that disagrees with the first (the first stays).
    ConflictingFinal,
    /// A phase older than one already reported.
    LatePhase,
}

/// The result of applying one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: BuildState,
    pub transitions: Vec<Transition>,
    /// Set when nothing was emitted.
    pub no_change: Option<NoChange>,
}

/// Applies a report to a build's state.
pub fn apply(state: &BuildState, input: Input<'_>) -> Outcome {
    let mut next = state.clone();
    let mut transitions = Vec::new();
    let mut no_change = None;
    match (state.lifecycle, input) {
        (Lifecycle::Final { status }, Input::Final(reported)) => {
            no_change = Some(if status == reported {
                NoChange::AlreadyKnown
            } else {
                NoChange::ConflictingFinal
            });
        }
        (Lifecycle::Final { .. }, _) => no_change = Some(NoChange::AfterFinal),
        (lifecycle, Input::Final(status)) => {
            if lifecycle == Lifecycle::Pending {
                transitions.push(Transition::Started);
            }
            transitions.push(Transition::Completed { status });
            next.lifecycle = Lifecycle::Final { status };
        }
        (lifecycle, Input::InProgress { ended_phases }) => {
            if lifecycle == Lifecycle::Pending {
                transitions.push(Transition::Started);
                next.lifecycle = Lifecycle::InProgress;
            }
            for phase in ended_phases {
                if accepts_phase(&next, phase) {
                    next.phases_reported.push((*phase).to_owned());
                    transitions.push(Transition::PhaseChanged {
                        phase: (*phase).to_owned(),
                    });
                }
            }
            if transitions.is_empty() {
                no_change = Some(NoChange::AlreadyKnown);
            }
        }
        (lifecycle, Input::Phase { phase }) => {
            if lifecycle == Lifecycle::Pending {
                transitions.push(Transition::Started);
                next.lifecycle = Lifecycle::InProgress;
            }
            if accepts_phase(&next, phase) {
                next.phases_reported.push(phase.to_owned());
                transitions.push(Transition::PhaseChanged {
                    phase: phase.to_owned(),
                });
            } else if transitions.is_empty() {
                no_change = Some(if next.phases_reported.iter().any(|p| p == phase) {
                    NoChange::AlreadyKnown
                } else {
                    NoChange::LatePhase
                });
            }
        }
    }
    Outcome {
        state: next,
        transitions,
        no_change,
    }
}

/// Applies a parsed report to a build's state: an in-progress state change with the phases it
/// lists as ended, a phase change with its completed phase, a final state change.
pub fn apply_report(state: &BuildState, report: &Report) -> Outcome {
    match &report.kind {
        ReportKind::InProgress => {
            let ended = report.ended_phases();
            let ended_names: Vec<&str> = ended.iter().map(|p| p.name.as_str()).collect();
            apply(
                state,
                Input::InProgress {
                    ended_phases: &ended_names,
                },
            )
        }
        ReportKind::Final(status) => apply(state, Input::Final(*status)),
        ReportKind::Phase { completed_phase } => apply(
            state,
            Input::Phase {
                phase: completed_phase,
            },
        ),
    }
}

/// A phase is new when it was not reported and, if CodeBuild documents it, comes after every
/// documented phase already reported.
fn accepts_phase(state: &BuildState, phase: &str) -> bool {
    if phase.is_empty() || state.phases_reported.iter().any(|p| p == phase) {
        return false;
    }
    let Some(rank) = phase_rank(phase) else {
        return true;
    };
    state
        .phases_reported
        .iter()
        .filter_map(|p| phase_rank(p))
        .all(|reported| reported < rank)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn started() -> BuildState {
        BuildState {
            lifecycle: Lifecycle::InProgress,
            phases_reported: vec![],
        }
    }

    fn final_state(status: FinalStatus) -> BuildState {
        BuildState {
            lifecycle: Lifecycle::Final { status },
            phases_reported: vec![],
        }
    }

    fn phase(name: &str) -> Transition {
        Transition::PhaseChanged {
            phase: name.to_owned(),
        }
    }

    #[test]
    fn in_progress_starts_a_pending_build_once() {
        let out = apply(
            &BuildState::default(),
            Input::InProgress { ended_phases: &[] },
        );
        assert_eq!(out.transitions, vec![Transition::Started]);
        assert_eq!(out.state.lifecycle, Lifecycle::InProgress);
        let again = apply(&out.state, Input::InProgress { ended_phases: &[] });
        assert!(again.transitions.is_empty());
        assert_eq!(again.no_change, Some(NoChange::AlreadyKnown));
    }

    #[test]
    fn in_progress_reports_fill_in_missed_phases_in_order() {
        let out = apply(
            &BuildState::default(),
            Input::InProgress {
                ended_phases: &["SUBMITTED", "QUEUED"],
            },
        );
        assert_eq!(
            out.transitions,
            vec![Transition::Started, phase("SUBMITTED"), phase("QUEUED")]
        );
        let later = apply(
            &out.state,
            Input::InProgress {
                ended_phases: &["SUBMITTED", "QUEUED", "PROVISIONING"],
            },
        );
        assert_eq!(later.transitions, vec![phase("PROVISIONING")]);
    }

    #[test]
    fn a_final_state_completes_a_running_build() {
        let out = apply(&started(), Input::Final(FinalStatus::Succeeded));
        assert_eq!(
            out.transitions,
            vec![Transition::Completed {
                status: FinalStatus::Succeeded
            }]
        );
        assert!(out.state.lifecycle.is_final());
    }

    #[test]
    fn a_final_state_without_a_start_emits_started_then_completed() {
        let out = apply(&BuildState::default(), Input::Final(FinalStatus::Failed));
        assert_eq!(
            out.transitions,
            vec![
                Transition::Started,
                Transition::Completed {
                    status: FinalStatus::Failed
                }
            ]
        );
    }

    #[test]
    fn nothing_moves_a_final_build() {
        let done = final_state(FinalStatus::Succeeded);
        let late_in_progress = apply(
            &done,
            Input::InProgress {
                ended_phases: &["BUILD"],
            },
        );
        assert!(late_in_progress.transitions.is_empty());
        assert_eq!(late_in_progress.no_change, Some(NoChange::AfterFinal));
        assert_eq!(late_in_progress.state, done);
        let late_phase = apply(&done, Input::Phase { phase: "COMPLETED" });
        assert!(late_phase.transitions.is_empty());
        assert_eq!(late_phase.no_change, Some(NoChange::AfterFinal));
        let duplicate = apply(&done, Input::Final(FinalStatus::Succeeded));
        assert_eq!(duplicate.no_change, Some(NoChange::AlreadyKnown));
        let conflicting = apply(&done, Input::Final(FinalStatus::Failed));
        assert_eq!(conflicting.no_change, Some(NoChange::ConflictingFinal));
        assert_eq!(conflicting.state, done, "the first final status stays");
    }

    #[test]
    fn phases_are_emitted_once_and_only_forward() {
        let s = started();
        let build = apply(&s, Input::Phase { phase: "BUILD" });
        assert_eq!(build.transitions, vec![phase("BUILD")]);
        let dup = apply(&build.state, Input::Phase { phase: "BUILD" });
        assert_eq!(dup.no_change, Some(NoChange::AlreadyKnown));
        let late = apply(&build.state, Input::Phase { phase: "INSTALL" });
        assert_eq!(late.no_change, Some(NoChange::LatePhase));
        let next = apply(
            &build.state,
            Input::Phase {
                phase: "POST_BUILD",
            },
        );
        assert_eq!(next.transitions, vec![phase("POST_BUILD")]);
        // Undocumented phase names (a future CodeBuild) are passed on once.
        let odd = apply(
            &next.state,
            Input::Phase {
                phase: "WARP_DRIVE",
            },
        );
        assert_eq!(odd.transitions, vec![phase("WARP_DRIVE")]);
        let empty = apply(&next.state, Input::Phase { phase: "" });
        assert!(empty.transitions.is_empty());
    }

    #[test]
    fn a_phase_before_any_state_report_starts_the_build() {
        let out = apply(&BuildState::default(), Input::Phase { phase: "INSTALL" });
        assert_eq!(out.transitions, vec![Transition::Started, phase("INSTALL")]);
        assert_eq!(out.state.lifecycle, Lifecycle::InProgress);
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = BuildState {
            lifecycle: Lifecycle::Final {
                status: FinalStatus::TimedOut,
            },
            phases_reported: vec!["BUILD".into()],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("TIMED_OUT"), "{json}");
        assert_eq!(serde_json::from_str::<BuildState>(&json).unwrap(), s);
    }

    const PHASES: [&str; 6] = [
        "SUBMITTED",
        "INSTALL",
        "PRE_BUILD",
        "BUILD",
        "POST_BUILD",
        "COMPLETED",
    ];

    fn any_input() -> impl Strategy<Value = (u8, usize, usize)> {
        (0u8..3, 0..PHASES.len(), 0usize..5)
    }

    fn to_input<'a>(kind: u8, p: usize, s: usize, ended: &'a [&'a str]) -> Input<'a> {
        let statuses = [
            FinalStatus::Succeeded,
            FinalStatus::Failed,
            FinalStatus::Fault,
            FinalStatus::Stopped,
            FinalStatus::TimedOut,
        ];
        match kind {
            0 => Input::InProgress {
                ended_phases: &ended[..p.min(ended.len())],
            },
            1 => Input::Phase { phase: PHASES[p] },
            _ => Input::Final(statuses[s]),
        }
    }

    proptest! {
        /// Whatever the order and duplication of reports: at most one start, at most one
        /// completion and it is last, the start comes first, each phase once and in order, and
        /// the lifecycle never goes back.
        #[test]
        fn any_report_sequence_keeps_the_invariants(inputs in proptest::collection::vec(any_input(), 0..30)) {
            let ended = PHASES;
            let mut state = BuildState::default();
            let mut all = Vec::new();
            let rank = |l: Lifecycle| match l { Lifecycle::Pending => 0, Lifecycle::InProgress => 1, Lifecycle::Final { .. } => 2 };
            for (kind, p, s) in inputs {
                let out = apply(&state, to_input(kind, p, s, &ended));
                prop_assert!(rank(out.state.lifecycle) >= rank(state.lifecycle));
                if let Lifecycle::Final { status } = state.lifecycle {
                    prop_assert_eq!(out.state.lifecycle, Lifecycle::Final { status });
                }
                prop_assert_eq!(out.transitions.is_empty(), out.no_change.is_some());
                all.extend(out.transitions);
                state = out.state;
            }
            let starts = all.iter().filter(|t| **t == Transition::Started).count();
            let is_completion = |t: &&Transition| matches!(t, Transition::Completed { .. });
            let completions = all.iter().filter(is_completion).count();
            prop_assert!(starts <= 1 && completions <= 1);
            if !all.is_empty() {
                prop_assert_eq!(&all[0], &Transition::Started);
            }
            if completions == 1 {
                let last_is_completion = matches!(all.last(), Some(Transition::Completed { .. }));
                prop_assert!(last_is_completion);
            }
            let phases: Vec<_> = all.iter().filter_map(|t| match t {
                Transition::PhaseChanged { phase } => phase_rank(phase),
                _ => None,
            }).collect();
            prop_assert!(phases.windows(2).all(|w| w[0] < w[1]), "{:?}", phases);
        }
    }
}
