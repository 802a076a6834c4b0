//! The simulation's schedules: the fence keeps the invariant on 10,000 seeds, deliberately
//! broken variants are caught, and a seed replays exactly.

use std::time::Instant;

use super::*;

/// Seeds per run (override: `PRX_CI_FENCE_SEEDS=<first>..<end>`; one seed:
/// `PRX_CI_FENCE_SEED=<n>`).
const SCHEDULES: u64 = 10_000;

fn seeds() -> std::ops::Range<u64> {
    if let Ok(seed) = std::env::var("PRX_CI_FENCE_SEED") {
        let seed: u64 = seed
            .parse()
            .unwrap_or_else(|_| panic!("PRX_CI_FENCE_SEED={seed:?} is not a number"));
        return seed..seed + 1;
    }
    if let Ok(range) = std::env::var("PRX_CI_FENCE_SEEDS") {
        let parsed = range
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        let (first, end) =
            parsed.unwrap_or_else(|| panic!("PRX_CI_FENCE_SEEDS={range:?} is not <first>..<end>"));
        return first..end;
    }
    0..SCHEDULES
}

/// Runs `variant` on the default seeds; asserts it is caught, prints how often and how.
fn assert_caught(variant: Variant) {
    let started = Instant::now();
    let (mut caught, mut went_back, mut first) = (0, 0, None);
    for seed in 0..SCHEDULES {
        let mut run = Run::new(seed, variant);
        let finished = run.run();
        let violations = run.violations(finished);
        went_back += u64::from(
            run.history()
                .windows(2)
                .any(|w| w[1].push_sequence < w[0].push_sequence),
        );
        if !violations.is_empty() {
            caught += 1;
            first.get_or_insert((seed, violations));
        }
    }
    let first = first.unwrap_or_else(|| panic!("the simulation never caught {variant:?}"));
    println!(
        "{variant:?}: caught on {caught} of {SCHEDULES} seeds ({went_back} went back in push order) in {:.2?}; first: seed {} {:?}",
        started.elapsed(),
        first.0,
        first.1
    );
}

#[test]
fn the_fence_keeps_its_invariant_on_ten_thousand_simulated_schedules() {
    let seeds = seeds();
    let started = Instant::now();
    let mut total = Stats::default();
    let mut by_replicas = [0_u64; 5];
    let count = seeds.end - seeds.start;
    for seed in seeds.clone() {
        let result = simulate(seed, Variant::Fence);
        assert!(
            result.violations.is_empty(),
            "fence invariant broken on seed {seed} (replay: PRX_CI_FENCE_SEED={seed} cargo test -p prx-ci-publisher --lib the_fence_keeps_its_invariant -- --nocapture): {:?}\n{}",
            result.violations,
            describe(seed, Variant::Fence)
        );
        by_replicas[result.replicas] += 1;
        let s = result.stats;
        total.steps += s.steps;
        total.crashes += s.crashes;
        total.stalls += s.stalls;
        total.lost_messages += s.lost_messages;
        total.writes += s.writes;
        total.takeovers += s.takeovers;
        total.stale_reads += s.stale_reads;
        total.timed_out_writes += s.timed_out_writes;
    }
    println!(
        "fence simulation: seeds {seeds:?} ({count} schedules; 2/3/4 replicas: {}/{}/{}) in {:.2?}, \
         0 violations; {} protocol steps, {} crashes, {} stalls, {} messages lost for good, \
         {} SSM writes, {} abandoned claims resolved (compare-and-sets sent), {} stale reads, {} writes past the timeout",
        by_replicas[2],
        by_replicas[3],
        by_replicas[4],
        started.elapsed(),
        total.steps,
        total.crashes,
        total.stalls,
        total.lost_messages,
        total.writes,
        total.takeovers,
        total.stale_reads,
        total.timed_out_writes,
    );
    if count >= SCHEDULES {
        // The faults the protocol exists for were exercised.
        assert!(total.crashes > 1_000 && total.takeovers > 100 && total.stalls > 1_000);
        assert!(total.lost_messages > 0 && total.timed_out_writes > 0);
    }
}

#[test]
fn last_writer_wins_is_caught_within_ten_thousand_schedules() {
    assert_caught(Variant::LastWriterWins);
}

#[test]
fn resolving_claims_without_reading_the_store_is_caught_within_ten_thousand_schedules() {
    assert_caught(Variant::BlindResolve);
}

#[test]
fn a_write_sent_after_the_lease_is_caught_within_ten_thousand_schedules() {
    assert_caught(Variant::UnboundedWrite);
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 4_242, 9_999] {
        let (mut a, mut b) = (
            Run::new(seed, Variant::Fence),
            Run::new(seed, Variant::Fence),
        );
        let (fa, fb) = (a.run(), b.run());
        assert_eq!(fa, fb);
        assert_eq!(a.ssm, b.ssm);
        assert_eq!(a.now, b.now);
        assert_eq!(a.stats.steps, b.stats.steps);
        assert_eq!(a.kv, b.kv);
    }
}
