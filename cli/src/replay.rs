//! `prx-ci replay`: re-delivers a range of a stream, in order, to one consumer (see
//! docs/operations.md for how the target service picks the replay up).

use std::io::Write as _;

use prx_ci_ops::replay_range;
use prx_ci_proto::v1;

use crate::history::{OpsArgs, render_event, status_error};

/// Arguments of `prx-ci replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The stream (PRX_WEBHOOKS, PRX_EVENTS).
    #[arg(long)]
    stream: String,
    /// First message: a stream sequence or an RFC 3339 time. Default: the first stored.
    #[arg(long)]
    from: Option<String>,
    /// Last message: a stream sequence or an RFC 3339 time. Default: the last stored now.
    #[arg(long)]
    to: Option<String>,
    /// Only subjects matching this filter (within the consumer's own filter).
    #[arg(long)]
    subject: Option<String>,
    /// The durable consumer to re-deliver to (e.g. notifier).
    #[arg(long)]
    into: String,
    /// Only list what would be re-delivered.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per line (with --dry-run).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

fn request(args: &ReplayArgs) -> anyhow::Result<v1::ReplayRequest> {
    Ok(v1::ReplayRequest {
        stream: args.stream.clone(),
        from: replay_range::from(args.from.as_deref())?,
        to: replay_range::to(args.to.as_deref())?,
        subject: args.subject.clone().unwrap_or_default(),
        consumer: args.into.clone(),
        dry_run: args.dry_run,
    })
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let request = request(&args)?;
    let mut client = args.ops.connect().await?;
    let response = client
        .replay(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for event in &response.events {
            writeln!(out, "{}", render_event(event, args.json))?;
        }
        if !args.json {
            writeln!(
                out,
                "dry run: {} message(s) #{}..#{} would be re-delivered to {}; nothing changed",
                response.count, response.first_sequence, response.last_sequence, args.into
            )?;
        }
    } else {
        writeln!(
            out,
            "replaying {} message(s) #{}..#{} of {} into {} through {}",
            response.count,
            response.first_sequence,
            response.last_sequence,
            args.stream,
            args.into,
            response.replay_consumer
        )?;
    }
    Ok(())
}
