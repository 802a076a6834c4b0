//! `prx-ci parked`: parked (dead-lettered) messages with their errors; `--retry ID` puts one
//! back, `--drop ID --reason TEXT` marks one as needing no retry (each once per entry).

use std::io::Write as _;

use prx_ci_proto::v1;

use crate::history::{OpsArgs, rfc3339, status_error};

/// Arguments of `prx-ci parked`.
#[derive(Debug, clap::Args)]
pub struct ParkedArgs {
    /// Put this entry back on its original subject.
    #[arg(long, value_name = "ID", conflicts_with = "drop")]
    retry: Option<u64>,
    /// Drop this entry: it stays parked, recorded as needing no retry (with --reason), and no
    /// longer counts as waiting.
    #[arg(long, value_name = "ID", requires = "reason")]
    drop: Option<u64>,
    /// Why the entry is dropped (required with --drop; kept in the drop record).
    #[arg(long, value_name = "TEXT", requires = "drop", conflicts_with = "retry")]
    reason: Option<String>,
    /// Only entries parked by this consumer.
    #[arg(long)]
    consumer: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(args: ParkedArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let mut out = std::io::stdout().lock();
    if let Some(id) = args.retry {
        let response = client
            .retry_parked(v1::RetryParkedRequest {
                id,
                // The ops API records the identity of the token it authenticated.
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        writeln!(
            out,
            "entry {id} put back on {} ({} #{}, message id {})",
            response.subject, response.stream, response.sequence, response.message_id
        )?;
        return Ok(());
    }
    if let Some(id) = args.drop {
        let response = client
            .drop_parked(v1::DropParkedRequest {
                id,
                // The ops API records the identity of the token it authenticated.
                reason: args.reason.unwrap_or_default(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        writeln!(
            out,
            "entry {id} dropped by {} at {}; it stays in PRX_PARKED",
            response.dropped_by,
            rfc3339(response.dropped_at.as_ref())
        )?;
        return Ok(());
    }
    let response = client
        .parked(v1::ParkedRequest {
            consumer: args.consumer.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    for entry in &response.entries {
        writeln!(out, "{}", render(entry, args.json))?;
    }
    Ok(())
}

fn render(entry: &v1::ParkedEntry, json: bool) -> String {
    let parked = entry.parked.clone().unwrap_or_default();
    if json {
        return serde_json::json!({
            "id": entry.id,
            "parked_at": rfc3339(entry.parked_at.as_ref()),
            "consumer": parked.consumer,
            "stream": parked.stream,
            "stream_sequence": parked.stream_sequence,
            "subject": parked.subject,
            "event_id": entry.event_id,
            "error": parked.error,
            "deliveries": parked.deliveries,
            "retried": entry.retried,
            "retried_by": entry.retried_by,
            "retried_at": rfc3339(entry.retried_at.as_ref()),
            "dropped": entry.dropped,
            "dropped_by": entry.dropped_by,
            "dropped_at": rfc3339(entry.dropped_at.as_ref()),
            "drop_reason": entry.drop_reason,
        })
        .to_string();
    }
    let handled = if entry.retried {
        format!(
            " [retried by {} at {}]",
            entry.retried_by,
            rfc3339(entry.retried_at.as_ref())
        )
    } else if entry.dropped {
        format!(
            " [dropped by {} at {}: {}]",
            entry.dropped_by,
            rfc3339(entry.dropped_at.as_ref()),
            entry.drop_reason.replace('\n', " ")
        )
    } else {
        String::new()
    };
    format!(
        "#{} {} {} {}#{} {} deliveries={} error: {}{handled}",
        entry.id,
        rfc3339(entry.parked_at.as_ref()),
        parked.consumer,
        parked.stream,
        parked.stream_sequence,
        parked.subject,
        parked.deliveries,
        parked.error.replace('\n', " "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_show_consumer_subject_error_and_retry() {
        let entry = v1::ParkedEntry {
            id: 7,
            parked: Some(v1::MessageParked {
                consumer: "notifier".into(),
                stream: "PRX_EVENTS".into(),
                stream_sequence: 12,
                subject: "prx.build.completed.PRX.app".into(),
                error: "slack: 503".into(),
                deliveries: 8,
                ..Default::default()
            }),
            retried: true,
            retried_by: "alice".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&entry, false),
            "#7  notifier PRX_EVENTS#12 prx.build.completed.PRX.app deliveries=8 error: slack: 503 [retried by alice at ]"
        );
    }

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        parked: ParkedArgs,
    }

    fn parse(args: &[&str]) -> Result<ParkedArgs, clap::error::ErrorKind> {
        use clap::Parser as _;
        Command::try_parse_from(std::iter::once("parked").chain(args.iter().copied()))
            .map(|c| c.parked)
            .map_err(|e| e.kind())
    }

    #[test]
    fn a_drop_takes_a_reason_and_no_retry() {
        let args = parse(&["--drop", "7", "--reason", "channel archived"]).unwrap();
        assert_eq!(
            (args.drop, args.reason.as_deref()),
            (Some(7), Some("channel archived"))
        );
        assert_eq!(
            parse(&["--drop", "7"]).unwrap_err(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["--reason", "x"]).unwrap_err(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["--retry", "7", "--reason", "x"]).unwrap_err(),
            clap::error::ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse(&["--retry", "7", "--drop", "7", "--reason", "x"]).unwrap_err(),
            clap::error::ErrorKind::ArgumentConflict
        );
        assert_eq!(parse(&["--retry", "7"]).unwrap().retry, Some(7));
    }

    #[test]
    fn dropped_entries_show_who_dropped_them_and_why() {
        let entry = v1::ParkedEntry {
            id: 9,
            parked: Some(v1::MessageParked {
                consumer: "notifier".into(),
                stream: "PRX_EVENTS".into(),
                stream_sequence: 14,
                subject: "prx.build.completed.PRX.app".into(),
                error: "slack: channel_not_found".into(),
                deliveries: 8,
                ..Default::default()
            }),
            dropped: true,
            dropped_by: "bob".into(),
            dropped_at: Some(prost_types::Timestamp {
                seconds: 1_796_083_200,
                nanos: 0,
            }),
            drop_reason: "channel archived;\nnothing to notify".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&entry, false),
            "#9  notifier PRX_EVENTS#14 prx.build.completed.PRX.app deliveries=8 error: slack: channel_not_found [dropped by bob at 2026-12-01T00:00:00Z: channel archived; nothing to notify]"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&entry, true)).unwrap();
        assert_eq!(json["dropped"], true);
        assert_eq!(json["dropped_by"], "bob");
        assert_eq!(json["drop_reason"], "channel archived;\nnothing to notify");
        assert_eq!(json["retried"], false);
    }
}
