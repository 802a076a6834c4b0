//! `prx-ci-notifier`: the notifier as its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prx_ci_notifier::{Notifier, NotifierConfig};
use prx_ci_shared::config;
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::service::startup::{ServiceProcess, exit_code};

/// Slack messages and GitHub commit statuses for PRX CI builds.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-notifier", version)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [notifier]).
    #[arg(long, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-notifier", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.as_deref();
    let github: GitHubConfig = config::load(file, "github")?;
    let notifier_config: NotifierConfig = config::load(file, "notifier")?;
    let mut process = ServiceProcess::start("prx-ci-notifier", file).await?;

    let chat = prx_ci_notifier::chat_sink(&notifier_config.slack)?;
    let statuses = prx_ci_notifier::status_sink(&github, &notifier_config.statuses)?;
    let commits = prx_ci_notifier::commit_source(&github)?;
    if notifier_config.slack.token.is_none() {
        tracing::warn!("no [notifier.slack] token: build messages go to the log");
    }
    if github.token.is_none() {
        tracing::warn!("no [github] token: commit statuses go to the log, no commit lists");
    }
    let ops_listen = notifier_config.ops_listen;
    let notifier = Notifier::new(
        process.rt.clone(),
        notifier_config,
        chat,
        statuses,
        commits,
        &mut process.registry,
    )?;
    process
        .run(ops_listen, |shutdown| notifier.run(shutdown))
        .await
}
