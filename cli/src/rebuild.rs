//! `prx-ci rebuild`: requests a build of a commit or branch as if the push had come again
//! (recorded as an operator action).

use prx_ci_proto::v1;

use crate::history::{OpsArgs, status_error};

/// Arguments of `prx-ci rebuild`.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// `owner/repo`.
    repository: String,
    /// A commit SHA (or unambiguous prefix) or a branch name (its latest pushed commit).
    revision: String,
    /// Who asks (recorded in the event). Default: $USER.
    #[arg(long, env = "USER", default_value = "operator")]
    requested_by: String,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .rebuild(v1::RebuildRequest {
            repository: args.repository.clone(),
            revision: args.revision,
            requested_by: args.requested_by,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "rebuild of {}@{} {} requested: delivery {} (PRX_WEBHOOKS #{}); follow it with `prx-ci history {} --commit {}`",
        args.repository,
        response.branch,
        response.commit,
        response.delivery_id,
        response.sequence,
        args.repository,
        response.commit
    );
    Ok(())
}
