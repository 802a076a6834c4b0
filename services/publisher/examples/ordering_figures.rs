//! Prints how often the original's last-writer-wins publishing regresses a parameter, under
//! realistic timings (pushes to one branch as a Poisson process, build durations log-normal
//! around a median) and under adversarial ones (every report within a burst, in random
//! order). The figures quoted in `docs/ordering.md`:
//! `cargo run -p prx-ci-publisher --example ordering_figures`.

use std::time::Duration;

use prx_ci_publisher::simulation::workload::{LwwFigures, Timing};
use prx_ci_publisher::simulation::{Run, Variant};

const SCHEDULES: u64 = 100_000;
/// Schedules per row through the fence simulation (with the seeds' faults).
const FENCE_SCHEDULES: u64 = 2_000;
const SEED: u64 = 0x0f1e_2d3c;

fn minutes(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

fn row(label: &str, timing: Timing) {
    let f = LwwFigures::measure(SEED, SCHEDULES, timing);
    let fence_violations = (0..FENCE_SCHEDULES)
        .filter(|seed| {
            let mut run = Run::with_timing(*seed, Variant::Fence, Some(timing));
            let finished = run.run();
            !run.violations(finished).is_empty()
        })
        .count();
    println!(
        "| {label} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {fence_violations} of {FENCE_SCHEDULES} |",
        f.percent(f.went_back_in_push_order),
        f.percent(f.went_back_in_arch_order),
        f.percent(f.wrong_final),
        f.percent(f.regressed),
    );
}

fn main() {
    println!(
        "last-writer-wins, {SCHEDULES} schedules per row (seed {SEED:#x}; 3-6 pushes to one branch, \
         40 % two-arch, 25 % of builds failing, 25 % of reports sent twice up to 30 s later)\n"
    );
    println!(
        "| timing | went back in push order | secondary arch after primary | wrong final value | any | fence (simulated, with faults): schedules violating the invariant |"
    );
    println!("|---|---|---|---|---|---|");
    for (gap, median, sigma) in [
        (60, 10, 0.3),
        (60, 10, 0.6),
        (20, 10, 0.3),
        (20, 10, 0.6),
        (5, 10, 0.3),
        (5, 10, 0.6),
        (5, 25, 0.6),
    ] {
        row(
            &format!(
                "realistic: a push every {gap} min on average, builds {median} min median, sigma {sigma}"
            ),
            Timing::Realistic {
                mean_push_gap: minutes(gap),
                median_build: minutes(median),
                sigma,
            },
        );
    }
    row(
        "adversarial: all reports within 30 s, random order",
        Timing::Burst {
            window: Duration::from_secs(30),
        },
    );
    row(
        "adversarial: uniform shuffle (all at once)",
        Timing::Burst {
            window: Duration::ZERO,
        },
    );
}
