//! `prx-ci params`: what each deploy parameter points to, which push wrote it, and the latest
//! publish that was skipped and why; `params owners` and `params transfer`: which repository
//! may publish which name (through the ops API).

use async_nats::jetstream;
use prx_ci_proto::v1;
use prx_ci_publisher::{KvParameterStore, ParameterStore, SsmParameterStore, parameter_views};
use prx_ci_shared::config::{self, AwsConfig};
use prx_ci_shared::domain::short_sha;

use crate::history::{OpsArgs, status_error};

/// Arguments of `prx-ci params`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ParamsArgs {
    #[command(subcommand)]
    command: Option<ParamsCommand>,
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
        env = prx_ci_shared::config::NATS_URL_ENV,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The data directory of a local `prx-ci up` (its NATS credentials are read from there
    /// unless `[nats]` configures some).
    #[arg(long, default_value = "./.prx-ci")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum ParamsCommand {
    /// Who owns which parameter names: [publisher.owners] entries and claimed names.
    Owners(OwnersArgs),
    /// Move a parameter name to another repository (audited; refused for names
    /// [publisher.owners] covers).
    Transfer(TransferArgs),
}

/// Arguments of `prx-ci params owners`.
#[derive(Debug, clap::Args)]
struct OwnersArgs {
    /// Only names starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// One JSON object per owner.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

/// Arguments of `prx-ci params transfer`.
#[derive(Debug, clap::Args)]
struct TransferArgs {
    /// The parameter name.
    name: String,
    /// `owner/repo` that owns it from now on.
    repository: String,
    /// Why (recorded in the event; the requester is the identity the ops API authenticates).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(config_file: Option<&std::path::Path>, args: ParamsArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ParamsCommand::Owners(owners)) => return run_owners(owners).await,
        Some(ParamsCommand::Transfer(transfer)) => return run_transfer(transfer).await,
        None => {}
    }
    let nats = prx_ci::local_nats::client_config(config_file, &args.nats_url, &args.data_dir)?;
    let client = prx_ci_shared::bus::nats::connect(&nats, "cli").await?;
    let js = jetstream::new(client);
    let store: Box<dyn ParameterStore> = if args.ssm {
        let aws: AwsConfig = config::load(config_file, "aws")?;
        Box::new(SsmParameterStore::new(&aws.sdk_config().await))
    } else {
        Box::new(KvParameterStore::new(&js).await?)
    };
    let reports = parameter_views(&js, store.as_ref(), &args.prefix).await?;
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

async fn run_owners(args: OwnersArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .parameter_owners(v1::ParameterOwnersRequest {
            prefix: args.prefix.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if response.owners.is_empty() && !args.json {
        println!("no owners under {:?}", args.prefix);
    }
    for owner in &response.owners {
        println!("{}", render_owner(owner, args.json));
    }
    Ok(())
}

async fn run_transfer(args: TransferArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .transfer_parameter(v1::TransferParameterRequest {
            parameter: args.name.clone(),
            repository: args.repository.clone(),
            reason: args.reason,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{} now belongs to {} (was {}); recorded by {} as event {} (PRX_EVENTS #{})",
        args.name,
        args.repository,
        if response.previous.is_empty() {
            "unowned"
        } else {
            &response.previous
        },
        response.requested_by,
        response.event_id,
        response.sequence
    );
    Ok(())
}

fn render_owner(owner: &v1::ParameterOwner, json: bool) -> String {
    if json {
        return serde_json::json!({
            "parameter": owner.parameter,
            "repository": owner.repository,
            "source": owner.source,
            "build_id": owner.build_id,
            "commit": owner.commit,
            "at": owner.at,
            "requested_by": owner.requested_by,
            "reason": owner.reason,
            "previous": owner.previous,
        })
        .to_string();
    }
    let how = match owner.source.as_str() {
        "config" => "config [publisher.owners]".to_owned(),
        "claim" => format!(
            "claimed at {} by build {} ({})",
            owner.at,
            owner.build_id,
            short_sha(&owner.commit)
        ),
        "transfer" => {
            let mut how = format!(
                "transferred at {} by {} from {}",
                owner.at,
                owner.requested_by,
                if owner.previous.is_empty() {
                    "unowned"
                } else {
                    &owner.previous
                }
            );
            if !owner.reason.is_empty() {
                how.push_str(&format!(": {}", owner.reason));
            }
            how
        }
        other => other.to_owned(),
    };
    format!("{} -> {}  ({how})", owner.parameter, owner.repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_show_config_claims_and_transfers() {
        let config = v1::ParameterOwner {
            parameter: "/prx/stag/Spire/App/".into(),
            repository: "PRX/app".into(),
            source: "config".into(),
            ..Default::default()
        };
        assert_eq!(
            render_owner(&config, false),
            "/prx/stag/Spire/App/ -> PRX/app  (config [publisher.owners])"
        );
        let claim = v1::ParameterOwner {
            parameter: "/prx/stag/Spire/Other/pkg/tag".into(),
            repository: "PRX/other".into(),
            source: "claim".into(),
            build_id: "local:7".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            render_owner(&claim, false),
            "/prx/stag/Spire/Other/pkg/tag -> PRX/other  (claimed at 2026-01-01T00:00:00Z by build local:7 (0123456))"
        );
        let transfer = v1::ParameterOwner {
            source: "transfer".into(),
            requested_by: "ops-token".into(),
            reason: "renamed".into(),
            previous: "PRX/old".into(),
            build_id: String::new(),
            commit: String::new(),
            ..claim
        };
        assert_eq!(
            render_owner(&transfer, false),
            "/prx/stag/Spire/Other/pkg/tag -> PRX/other  (transferred at 2026-01-01T00:00:00Z by ops-token from PRX/old: renamed)"
        );
        let json: serde_json::Value = serde_json::from_str(&render_owner(&transfer, true)).unwrap();
        assert_eq!(json["requested_by"], "ops-token");
        assert_eq!(json["source"], "transfer");
    }
}
