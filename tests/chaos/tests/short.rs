//! The chaos short form, run by CI on every change (`scripts/test`): the whole pipeline as
//! separate processes under SIGKILLs, NATS node restarts, one whole-cluster outage and injected
//! HTTP faults, every invariant asserted. Seed: `PRX_CI_CHAOS_SEED`, default 13 (the plan is
//! repeated; the interleavings differ from run to run). The run dir is kept when it fails.
//!
//! Needs the service binaries next to `prx-ci-chaos` (`cargo build --workspace --bins
//! --locked`, which `scripts/test` runs first): a missing one fails the test, naming it.

use std::path::Path;
use std::time::Instant;

use prx_ci_chaos::report;
use prx_ci_chaos::run::{RunConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_chaos_run_keeps_every_invariant() {
    let seed = std::env::var("PRX_CI_CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("PRX_CI_CHAOS_SEED is a number"))
        .unwrap_or(13);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_prx-ci-chaos"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let result = run(&RunConfig::short(seed, bin_dir, dir.path().to_path_buf())).await;
    let elapsed = started.elapsed();
    let result = match result {
        Ok(result) => result,
        Err(err) => {
            let kept = dir.keep();
            panic!(
                "the chaos run (seed {seed}) could not be carried out: {err:#}\nrun dir kept: {}",
                kept.display()
            );
        }
    };
    let summary = report::render(&result.figures, &result.outcomes);
    println!("{summary}");
    if !report::passed(&result.outcomes) {
        let kept = dir.keep();
        panic!(
            "invariants violated (seed {seed}, run dir kept: {}):\n{summary}",
            kept.display()
        );
    }
    assert!(result.figures.quiesced, "{summary}");
    assert!(result.figures.service_kills > 0, "{summary}");
    assert!(result.figures.outage_seconds > 0.0, "{summary}");
    // Its length is bounded by its configuration (25 s of load, at most 90 s to quiesce), not
    // asserted: speed is measured, never tested (docs/reliability.md has the measured times).
    println!("the short form took {elapsed:?}");
}
