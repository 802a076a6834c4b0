//! `prx-ci replay`: re-delivers a range of a stream, in order, to one consumer (see
//! docs/operations.md for how the target service picks the replay up).

use std::io::Write as _;

use prx_ci_proto::v1::{self, replay_request};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// A bound: a sequence number or an RFC 3339 time.
#[derive(Debug, PartialEq)]
enum Bound {
    Sequence(u64),
    Time(OffsetDateTime),
}

fn parse_bound(text: &str) -> anyhow::Result<Bound> {
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(Bound::Sequence(sequence));
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(Bound::Time)
        .map_err(|_| anyhow::anyhow!("{text:?} is neither a sequence number nor an RFC 3339 time"))
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prx_ci_shared::bus::envelope::timestamp(t)
}

fn request(args: &ReplayArgs) -> anyhow::Result<v1::ReplayRequest> {
    let from = args
        .from
        .as_deref()
        .map(parse_bound)
        .transpose()?
        .map(|b| match b {
            Bound::Sequence(s) => replay_request::From::FromSequence(s),
            Bound::Time(t) => replay_request::From::FromTime(timestamp(t)),
        });
    let to = args
        .to
        .as_deref()
        .map(parse_bound)
        .transpose()?
        .map(|b| match b {
            Bound::Sequence(s) => replay_request::To::ToSequence(s),
            Bound::Time(t) => replay_request::To::ToTime(timestamp(t)),
        });
    Ok(v1::ReplayRequest {
        stream: args.stream.clone(),
        from,
        to,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequences_or_times() {
        assert_eq!(parse_bound("42").unwrap(), Bound::Sequence(42));
        assert!(matches!(
            parse_bound("2026-01-01T10:00:00Z").unwrap(),
            Bound::Time(_)
        ));
        assert!(parse_bound("yesterday").is_err());
    }
}
