//! `prx-ci-publisher`: the publisher as its own process (AWS SSM + ECR/S3 artifact checks).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prx_ci_publisher::{AwsArtifactChecker, Publisher, PublisherConfig, SsmParameterStore};
use prx_ci_shared::config::{AwsConfig, Sections};
use prx_ci_shared::service::startup::{ProcessConfig, ServiceProcess, check_config, exit_code};

/// PRX CI publisher: writes SSM parameters for successful publishable builds, in push order.
#[derive(Debug, Parser)]
#[command(name = "prx-ci-publisher", version)]
struct Args {
    /// Configuration file (TOML; sections [nats], [telemetry], [aws], [publisher]).
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
    publisher: PublisherConfig,
    process: ProcessConfig,
}

fn load_config(sections: &mut Sections<'_>) -> anyhow::Result<Config> {
    let aws = sections.load("aws")?;
    let publisher: PublisherConfig = sections.load("publisher")?;
    if publisher.application_code_bucket.is_empty() {
        anyhow::bail!(
            "invalid configuration [publisher]: application_code_bucket is required (S3 artifact checks)"
        );
    }
    Ok(Config {
        aws,
        publisher,
        process: ProcessConfig::load(sections)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code("prx-ci-publisher", try_main().await)
}

async fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sections = Sections::new(args.config.as_deref());
    let loaded = load_config(&mut sections);
    if args.check_config {
        return check_config("prx-ci-publisher", &sections, loaded);
    }
    let Config {
        aws,
        publisher,
        process,
    } = loaded?;
    let mut process = ServiceProcess::start("prx-ci-publisher", process).await?;
    let sdk_config = aws.sdk_config().await;
    let store = SsmParameterStore::new(&sdk_config);
    let artifacts = AwsArtifactChecker::with_path_style(
        &sdk_config,
        publisher.application_code_bucket.clone(),
        publisher.s3_force_path_style,
    );
    let ops_listen = publisher.ops_listen;
    let service = Publisher::new(
        process.rt.clone(),
        publisher,
        Arc::new(store),
        Arc::new(artifacts),
        &mut process.registry,
    )?;
    process
        .run(ops_listen, |shutdown| service.run(shutdown))
        .await
}
