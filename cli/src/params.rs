//! `prx-ci params`: what each deploy parameter points to, which push wrote it, and the latest
//! publish that was skipped and why.

use async_nats::jetstream;
use prx_ci_publisher::{KvParameterStore, ParameterStore, SsmParameterStore, parameter_report};
use prx_ci_shared::config::{self, AwsConfig};

/// Arguments of `prx-ci params`.
#[derive(Debug, clap::Args)]
pub struct ParamsArgs {
    /// Read parameters from AWS SSM (with `[aws]` settings) instead of the local KV store.
    #[arg(long)]
    ssm: bool,
    /// Parameter name prefix.
    #[arg(long, default_value = "/prx/stag/Spire/")]
    prefix: String,
    /// One JSON object per parameter.
    #[arg(long)]
    json: bool,
    /// NATS server of a running system (fence records and skipped publishes live there).
    #[arg(
        long,
        env = "PRX_CI_NATS__URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The data directory of a local `prx-ci up` (its NATS credentials are read from there
    /// unless `[nats]` configures some).
    #[arg(long, default_value = "./.prx-ci")]
    data_dir: std::path::PathBuf,
}

pub async fn run(config_file: Option<&std::path::Path>, args: ParamsArgs) -> anyhow::Result<()> {
    let nats = prx_ci::local_nats::client_config(config_file, &args.nats_url, &args.data_dir)?;
    let client = prx_ci_shared::nats::connect(&nats, "cli").await?;
    let js = jetstream::new(client);
    let store: Box<dyn ParameterStore> = if args.ssm {
        let aws: AwsConfig = config::load(config_file, "aws")?;
        Box::new(SsmParameterStore::new(&aws.sdk_config().await))
    } else {
        Box::new(KvParameterStore::new(&js).await?)
    };
    let reports = parameter_report(&js, store.as_ref(), &args.prefix).await?;
    if reports.is_empty() && !args.json {
        println!("no parameters under {}", args.prefix);
    }
    for report in reports {
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{report}");
        }
    }
    Ok(())
}
