//! `prx-ci`: the operator's and newcomer's entry point.
//!
//! `prx-ci up` runs the whole system on one machine; the other subcommands inspect and operate
//! a running system through NATS (and, for the ops API, gRPC).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod builds;
mod events;
mod healthz;
mod history;
mod params;
mod parked;
mod rebuild;
mod replay;
mod shadow_report;
mod up;

use prx_ci::demo;

/// PRX CI: webhook-driven builds, notifications and deploy pointers over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "prx-ci", version, about)]
struct Cli {
    /// Configuration file (TOML, one section per service; see prx-ci.example.toml).
    #[arg(long, global = true, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process against a local nats-server (or --nats-url).
    Up(up::UpArgs),
    /// List stored events, oldest first.
    Events(events::EventsArgs),
    /// The events of a repository (one branch, PR or commit), from delivery to publish: the
    /// newest page (200 events by default), or --limit N, or --all.
    ///
    /// Events print oldest first. When the history holds older events than those printed, a
    /// line on stderr says how many ("N older events not shown"); stdout holds only events,
    /// also with --json. The page size is the server's `[ops] history_page`.
    History(history::HistoryArgs),
    /// Builds in flight and recent ones, with state and log link.
    Builds(builds::BuildsArgs),
    /// Request a build of a commit or branch as if the push had come again.
    Rebuild(rebuild::RebuildArgs),
    /// Re-deliver a range of a stream, in order, to one consumer.
    Replay(replay::ReplayArgs),
    /// Parked (dead-lettered) messages; --retry ID puts one back, --drop ID --reason TEXT drops one.
    Parked(parked::ParkedArgs),
    /// Deploy parameters: value, the push that wrote it, the latest skipped publish and why.
    ///
    /// `params owners` / `params transfer NAME REPO`: which repository may publish which name.
    Params(params::ParamsArgs),
    /// Two pushes whose builds finish in reverse order, against a running `prx-ci up`.
    Demo(demo::DemoArgs),
    /// Shadow mode: per webhook and parameter, this system's decisions beside the original's.
    ShadowReport(shadow_report::ShadowReportArgs),
    /// GET a service's `/healthz` (URL or PRX_CI_HEALTHZ_URL); exit 0 on 2xx, else 1. The
    /// container image's HEALTHCHECK.
    Healthz(healthz::HealthzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(cli.config.as_deref(), args).await,
            Command::Events(args) => events::run(cli.config.as_deref(), args).await,
            Command::History(args) => history::run(args).await,
            Command::Builds(args) => builds::run(args).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Parked(args) => parked::run(args).await,
            Command::Params(args) => params::run(cli.config.as_deref(), args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::ShadowReport(args) => shadow_report::run(args).await,
            Command::Healthz(args) => healthz::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
