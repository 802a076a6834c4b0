//! `prx-ci parked`: parked (dead-lettered) messages with their errors; `--retry ID` puts one
//! back (once).

use std::io::Write as _;

use prx_ci_proto::v1;

use crate::history::{OpsArgs, rfc3339, status_error};

/// Arguments of `prx-ci parked`.
#[derive(Debug, clap::Args)]
pub struct ParkedArgs {
    /// Put this entry back on its original subject.
    #[arg(long, value_name = "ID")]
    retry: Option<u64>,
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
        })
        .to_string();
    }
    let retried = if entry.retried {
        format!(
            " [retried by {} at {}]",
            entry.retried_by,
            rfc3339(entry.retried_at.as_ref())
        )
    } else {
        String::new()
    };
    format!(
        "#{} {} {} {}#{} {} deliveries={} error: {}{retried}",
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
}
