//! `prx-ci-chaos`: runs the chaos run, prints its summary, exits non-zero on any violated
//! invariant (2 when the run itself could not be carried out).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use prx_ci_chaos::report;
use prx_ci_chaos::run::{RunConfig, run};

#[derive(Debug, Parser)]
#[command(about = "PRX CI chaos run: the whole pipeline under kills, outages and faults")]
struct Args {
    /// The plan's seed (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Pushes and pull-request updates to send.
    #[arg(long, default_value_t = 300)]
    pushes: usize,
    /// How long the load is spread over (e.g. "3m").
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The CI short form (40 pushes over 25 s; overrides --pushes and --duration).
    #[arg(long)]
    short: bool,
    /// No faults at all (no kills, restarts, outage or injected HTTP faults): a baseline run
    /// that tells a fault's effect from a plain race between replicas.
    #[arg(long)]
    no_faults: bool,
    /// Where configs, logs, stores and repositories go (default: a new temporary directory).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let bin_dir = match args.bin_dir.map_or_else(next_to_this_binary, Ok) {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("prx-ci-chaos: {err:#}");
            return ExitCode::from(2);
        }
    };
    let run_dir = args.run_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("prx-ci-chaos-{seed}-{}", std::process::id()))
    });
    let config = if args.short {
        RunConfig::short(seed, bin_dir, run_dir)
    } else {
        RunConfig {
            pushes: args.pushes,
            duration: args.duration,
            fault_interval: Duration::from_secs(3),
            quiesce_timeout: Duration::from_secs(600),
            ..RunConfig::short(seed, bin_dir, run_dir)
        }
    };
    let config = RunConfig {
        faults: !args.no_faults,
        ..config
    };
    match run(&config).await {
        Ok(result) => {
            print!("{}", report::render(&result.figures, &result.outcomes));
            if report::passed(&result.outcomes) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("prx-ci-chaos: the run could not be carried out (seed {seed}): {err:#}");
            ExitCode::from(2)
        }
    }
}

fn next_to_this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))
}
