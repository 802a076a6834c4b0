//! `prx-ci-build-watcher`: the build-watcher as its own process (SQS source and reconciler
//! against AWS, consumers against the NATS cluster).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prx_ci_build_watcher::cloudwatch_logs::CloudWatchLogs;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_shared::config::{AwsConfig, Sections};
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

/// Turns CodeBuild state changes into build events.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-build-watcher", version)]
struct Args {
    /// Configuration file (TOML); `PRX_CI_<SECTION>__<FIELD>` variables override it.
    #[arg(long, env = prx_ci_shared::config::CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Load and validate the configuration, print the sections read, and exit (connects to
    /// nothing).
    #[arg(long)]
    check_config: bool,
}

/// Every section this binary loads.
struct Config {
    aws: AwsConfig,
    watcher: BuildWatcherConfig,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    Ok(Config {
        aws: sections.load("aws")?,
        watcher: sections.load("build_watcher")?,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-build-watcher", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-build-watcher", &sections, loaded);
    }
    let Config {
        aws,
        watcher: watcher_config,
        process,
    } = loaded?;
    let mut process = ServiceProcess::start("prx-ci-build-watcher", process).await?;

    let sdk = aws.sdk_config().await;
    let codebuild = aws_sdk_codebuild::Client::new(&sdk);
    let sqs = watcher_config
        .queue_url
        .is_some()
        .then(|| aws_sdk_sqs::Client::new(&sdk));
    if sqs.is_none() {
        tracing::warn!(
            "no [build_watcher] queue_url: CodeBuild events arrive only through the reconciler"
        );
    }
    let ops_listen = watcher_config.ops_listen;
    let logs = CloudWatchLogs::new(aws_sdk_cloudwatchlogs::Client::new(&sdk));
    let watcher = BuildWatcher::new(
        process.rt.clone(),
        watcher_config,
        Some(codebuild),
        sqs,
        &mut process.registry,
    )?
    .with_log_source(Arc::new(logs));
    process
        .run(ops_listen, |shutdown| watcher.run(shutdown))
        .await
}
