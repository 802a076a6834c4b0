//! `prx-ci rebuild`: requests a build of a commit or branch as if the push had come again
//! (recorded as an operator action, under the identity of the ops token used).

use prx_ci_proto::v1;

use crate::history::{OpsArgs, status_error};

/// Arguments of `prx-ci rebuild`.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// `owner/repo`.
    repository: String,
    /// A branch name (the head GitHub last pushed to it; pull request branches do not count),
    /// or a commit SHA or unambiguous prefix (rebuilt only if it is in its branch's history).
    revision: String,
    /// For a commit: the branch to rebuild it on (default: a branch it was pushed to,
    /// preferring the default branch).
    #[arg(long)]
    branch: Option<String>,
    /// Why (recorded with the rebuild; who asked is the name of the ops token).
    #[arg(long, default_value = "")]
    reason: String,
    /// Only resolve and check the revision, and say what would be rebuilt; store nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .rebuild(v1::RebuildRequest {
            repository: args.repository.clone(),
            revision: args.revision,
            branch: args.branch.unwrap_or_default(),
            reason: args.reason,
            dry_run: args.dry_run,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.dry_run {
        let older = if response.commit == response.head {
            String::new()
        } else {
            format!(
                " (an older commit of the branch, whose head is {}: it becomes the branch's newest push)",
                response.head
            )
        };
        println!(
            "dry run: would rebuild {}@{} {}{older} as a push by {}; nothing stored",
            args.repository, response.branch, response.commit, response.requested_by
        );
        return Ok(());
    }
    println!(
        "rebuild of {}@{} {} requested by {}: delivery {} (PRX_WEBHOOKS #{}); follow it with `prx-ci history {} --commit {}`",
        args.repository,
        response.branch,
        response.commit,
        response.requested_by,
        response.delivery_id,
        response.sequence,
        args.repository,
        response.commit
    );
    Ok(())
}
