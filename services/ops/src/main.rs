//! `prx-ci-ops`: the ops service binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use std::sync::Arc;

use prx_ci_ops::ancestry::Ancestry;
use prx_ci_ops::api::ParameterOwnership;
use prx_ci_ops::web::pages::notice::NoticeSettings;
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_shared::config::Sections;
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::ownership::OwnershipConfig;
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

/// The PRX CI ops service: the operators' gRPC API.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-ops", version, about)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [ops], [publisher] for
    /// parameter ownership, and [notifier] links and statuses for the dashboard's build pages).
    #[arg(long, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print the sections read, and exit (connects to
    /// nothing).
    #[arg(long)]
    check_config: bool,
}

/// Every section this binary loads.
struct Config {
    ops: OpsConfig,
    github: GitHubConfig,
    ownership: ParameterOwnership,
    notice: NoticeSettings,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    let ops = sections.load("ops")?;
    // Rebuilds of a commit given by hand check it is in its branch's history (compare API).
    let github = sections.load("github")?;
    let publisher: OwnershipConfig = sections.load("publisher")?;
    // The dashboard renders a build's Slack message and commit status as the notifier does.
    let notice = sections.load_unvalidated("notifier")?;
    let ownership = ParameterOwnership::from_publisher(&publisher)?;
    Ok(Config {
        ops,
        github,
        ownership,
        notice,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-ops", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-ops", &sections, loaded);
    }
    let Config {
        ops,
        github,
        ownership,
        notice,
        process,
    } = loaded?;
    let commits =
        Ancestry::new(GitHubClient::new(github).context("cannot build the GitHub client")?);
    let mut process = ServiceProcess::start("prx-ci-ops", process).await?;
    let grpc = tokio::net::TcpListener::bind(ops.listen)
        .await
        .with_context(|| format!("cannot listen on {}", ops.listen))?;
    let dashboard = match ops.dashboard_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (dashboard)"))?,
        ),
        None => None,
    };
    let ops_listen = ops.ops_listen;
    let mut service = OpsService::new(process.rt.clone(), ops, &mut process.registry)?
        .with_commit_graph(Arc::new(commits))
        .with_ownership(ownership)
        .with_notice_settings(notice);
    if let Some(listener) = dashboard {
        service = service.with_dashboard(listener);
    }
    process
        .run(ops_listen, |shutdown| service.run(grpc, shutdown))
        .await
}
