//! `prx-ci-notifier`: the notifier as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prx_ci_notifier::{Notifier, NotifierConfig};
use prx_ci_shared::config::Sections;
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

/// Slack messages and GitHub commit statuses for PRX CI builds.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-notifier", version)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [notifier]).
    #[arg(long, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print the sections read, and exit (connects to
    /// nothing).
    #[arg(long)]
    check_config: bool,
}

/// Every section this binary loads.
struct Config {
    github: GitHubConfig,
    notifier: NotifierConfig,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    Ok(Config {
        github: sections.load("github")?,
        notifier: sections.load("notifier")?,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-notifier", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-notifier", &sections, loaded);
    }
    let Config {
        github,
        notifier: notifier_config,
        process,
    } = loaded?;
    let mut process = ServiceProcess::start("prx-ci-notifier", process).await?;

    let chat = prx_ci_notifier::chat_sink(&notifier_config.slack)?;
    let statuses = prx_ci_notifier::status_sink(&github, &notifier_config.statuses)?;
    let commits = prx_ci_notifier::commit_source(&github)?;
    let checks = prx_ci_notifier::check_run_sink(&github, &notifier_config.checks)?;
    if notifier_config.slack.token.is_none() {
        tracing::warn!("no [notifier.slack] token: build messages go to the log");
    }
    if !github.has_credentials() {
        tracing::warn!(
            "no [github] token or app_id: commit statuses go to the log, no commit lists"
        );
    }
    let ops_listen = notifier_config.ops_listen;
    let mut notifier = Notifier::new(
        process.rt.clone(),
        notifier_config,
        chat,
        statuses,
        commits,
        &mut process.registry,
    )?;
    if let Some(checks) = checks {
        tracing::info!("GitHub App: check runs instead of commit statuses");
        notifier = notifier.with_check_runs(checks);
    }
    process
        .run(ops_listen, |shutdown| notifier.run(shutdown))
        .await
}
