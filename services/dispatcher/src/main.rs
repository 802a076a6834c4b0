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
use prx_ci_shared::config::{self, AwsConfig};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::service::startup::{ServiceProcess, exit_code};

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
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-dispatcher", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.as_deref();
    let github: GitHubConfig = config::load(file, "github")?;
    let aws: AwsConfig = config::load(file, "aws")?;
    let dispatcher: DispatcherConfig = config::load(file, "dispatcher")?;
    let runner: LocalRunnerConfig = config::load(file, "runner")?;
    // Test-only, from the process environment only (see `prx_ci_dispatcher::fault`).
    let fault = FaultPoint::from_env()?;
    let mut process = ServiceProcess::start("prx-ci-dispatcher", file).await?;
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
