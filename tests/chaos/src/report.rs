//! The run's summary (pure): what was sent, what was done to the system, and each invariant
//! with its count of violations (the first few quoted).

use std::fmt::Write as _;

use crate::checks::Outcome;

/// Violations quoted per invariant.
const QUOTED: usize = 5;

/// Figures of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub seed: u64,
    pub pushes: usize,
    pub pull_request_updates: usize,
    pub deliveries: usize,
    pub duplicate_deliveries: usize,
    pub sends: u64,
    pub accepted: u64,
    pub unavailable: u64,
    pub other_status: u64,
    pub no_answer: u64,
    pub builds: usize,
    pub reruns: usize,
    /// First attempts that ended FAULT (lost to the system's own failure).
    pub lost_builds: usize,
    pub own_failures: usize,
    pub service_kills: usize,
    pub service_exits: usize,
    pub node_restarts: usize,
    pub leader_restarts: usize,
    pub outage_seconds: f64,
    pub injected: Vec<(String, u64)>,
    pub seconds: f64,
    pub quiesced: bool,
}

/// Whether every invariant held.
pub fn passed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| o.violations.is_empty())
}

/// The printed summary.
pub fn render(f: &Figures, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chaos run, seed {} (`--seed {}` repeats the plan: pushes, deliveries, faults; the \
         interleavings around them differ)",
        f.seed, f.seed
    );
    let _ = writeln!(
        out,
        "webhooks: {} pushes ({} pull-request updates), {} deliveries ({} duplicates), {} sends: \
         {} accepted, {} answered 503, {} other refusals, {} unanswered",
        f.pushes,
        f.pull_request_updates,
        f.deliveries,
        f.duplicate_deliveries,
        f.sends,
        f.accepted,
        f.unavailable,
        f.other_status,
        f.no_answer
    );
    let _ = writeln!(
        out,
        "builds: {} requested, {} lost to the system (FAULT), {} re-runs of lost builds, {} pushes \
         failing by their own fault",
        f.builds, f.lost_builds, f.reruns, f.own_failures
    );
    let _ = writeln!(
        out,
        "faults: {} service SIGKILLs, {} exits restarted, {} NATS node restarts ({} of the stream \
         leader), {:.1} s whole-cluster outage",
        f.service_kills, f.service_exits, f.node_restarts, f.leader_restarts, f.outage_seconds
    );
    if f.injected.is_empty() {
        let _ = writeln!(out, "injected: none");
    } else {
        let list: Vec<String> = f.injected.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "injected: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "duration: {:.0} s{}",
        f.seconds,
        if f.quiesced {
            ""
        } else {
            " (did NOT quiesce before the timeout)"
        }
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "[{}] {}: {} checked, {} violations",
            if o.violations.is_empty() {
                "ok"
            } else {
                "FAIL"
            },
            o.name,
            o.checked,
            o.violations.len()
        );
        for v in o.violations.iter().take(QUOTED) {
            let _ = writeln!(out, "    {v}");
        }
        if o.violations.len() > QUOTED {
            let _ = writeln!(out, "    ... and {} more", o.violations.len() - QUOTED);
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if passed(outcomes) {
            "every invariant held"
        } else {
            "INVARIANTS VIOLATED"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_seed_and_every_invariant_with_its_violations() {
        let outcomes = vec![
            Outcome {
                name: "a",
                checked: 3,
                violations: vec![],
            },
            Outcome {
                name: "b",
                checked: 2,
                violations: (0..7).map(|i| format!("v{i}")).collect(),
            },
        ];
        let text = render(
            &Figures {
                seed: 42,
                ..Figures::default()
            },
            &outcomes,
        );
        assert!(
            text.contains("seed 42 (`--seed 42` repeats the plan"),
            "{text}"
        );
        assert!(text.contains("interleavings around them differ"), "{text}");
        assert!(text.contains("[ok] a: 3 checked, 0 violations"), "{text}");
        assert!(text.contains("[FAIL] b: 2 checked, 7 violations"), "{text}");
        assert!(text.contains("    v4\n    ... and 2 more"), "{text}");
        assert!(text.ends_with("INVARIANTS VIOLATED\n"), "{text}");
        assert!(!passed(&outcomes));
    }
}
