//! `prx-ci-dispatcher`: the dispatcher as its own process (GitHub contents API + CodeBuild, or
//! the local build runner in this process with `[dispatcher] backend = "local"`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prx_ci_dispatcher::config::BackendKind;
use prx_ci_dispatcher::{
    CodeBuildBackend, Dispatcher, DispatcherConfig, FaultPoint, GitHubBuildspecSource,
};
use prx_ci_local_runner::{LocalRunner, LocalRunnerConfig};
use prx_ci_shared::codebuild::backend::BuildBackend;
use prx_ci_shared::config::{AwsConfig, Sections};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "PRX CI dispatcher: decides build or skip for every webhook and starts builds"
)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [github], [aws], [dispatcher],
    /// and [runner] with `backend = "local"`).
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
    aws: AwsConfig,
    dispatcher: DispatcherConfig,
    runner: LocalRunnerConfig,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    Ok(Config {
        github: sections.load("github")?,
        aws: sections.load("aws")?,
        dispatcher: sections.load("dispatcher")?,
        runner: sections.load("runner")?,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-dispatcher", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-dispatcher", &sections, loaded);
    }
    let Config {
        github,
        aws,
        dispatcher,
        runner,
        process,
    } = loaded?;
    // Test-only, from the process environment only (see `prx_ci_dispatcher::fault`).
    let fault = FaultPoint::from_env()?;
    let mut process = ServiceProcess::start("prx-ci-dispatcher", process).await?;
    if fault != FaultPoint::Off {
        tracing::warn!(
            ?fault,
            "test-only fault point set; this process will abort there"
        );
    }

    let buildspecs = GitHubBuildspecSource::new(
        GitHubClient::new(github).context("cannot build the GitHub client")?,
    );
    let (backend, local): (Arc<dyn BuildBackend>, _) = match dispatcher.backend {
        BackendKind::Codebuild => (
            Arc::new(CodeBuildBackend::new(
                &aws.sdk_config().await,
                dispatcher.codebuild.clone(),
            )),
            None,
        ),
        BackendKind::Local => {
            let runner = LocalRunner::new(process.rt.clone(), runner)?;
            (runner.clone(), Some(runner))
        }
    };
    let ops_listen = dispatcher.ops_listen;
    let service = Dispatcher::new(
        process.rt.clone(),
        dispatcher,
        Arc::new(buildspecs),
        backend,
        &mut process.registry,
    )?
    .with_fault_point(fault);
    process
        .run(ops_listen, |shutdown| async move {
            let result = service.run(shutdown).await;
            // Running builds are interrupted (FAULT, re-run), queued ones kept for the next start.
            if let Some(runner) = local {
                runner.shutdown().await;
            }
            result
        })
        .await
}
