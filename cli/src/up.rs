//! `prx-ci up`: the whole system in one process, on embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_shared::config::{self, NatsConfig};
use prx_ci_shared::{CancellationToken, Runtime};

use crate::local_nats::LocalNats;

/// Arguments of `prx-ci up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the local nats-server, build runner and logs keep their state.
    #[arg(long, default_value = "./.prx-ci")]
    data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "PRX_CI_NATS__URL")]
    nats_url: Option<String>,
    /// Port of the nats-server started locally.
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// Address the webhook endpoint listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub async fn run(config_file: Option<&Path>, args: UpArgs) -> anyhow::Result<()> {
    let telemetry: prx_ci_shared::telemetry::TelemetryConfig =
        config::load(config_file, "telemetry")?;
    let _telemetry = prx_ci_shared::telemetry::init("prx-ci", &telemetry)?;
    let mut nats_config: NatsConfig = config::load(config_file, "nats")?;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let local = match &args.nats_url {
        Some(url) => {
            nats_config.url.clone_from(url);
            None
        }
        None => {
            let addr = SocketAddr::from(([127, 0, 0, 1], args.nats_port));
            let nats = LocalNats::start(
                addr,
                &args.data_dir.join("nats"),
                &args.data_dir.join("nats-server.log"),
            )
            .await?;
            nats_config.url.clone_from(&nats.url);
            Some(nats)
        }
    };

    let mut registry = Registry::default();
    let rt = Runtime::connect(&nats_config, "up", &mut registry).await?;
    rt.provision(nats_config.replicas)
        .await
        .context("cannot provision streams and consumers")?;
    println!("prx-ci: NATS at {} (JetStream ready)", nats_config.url);

    let shutdown = CancellationToken::new();
    prx_ci_shared::shutdown_signal().await;
    shutdown.cancel();
    if let Some(nats) = local {
        nats.stop().await;
    }
    Ok(())
}
