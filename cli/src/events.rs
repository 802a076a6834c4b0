//! `prx-ci events`: every stored event, oldest first, readable or as JSON lines.

use std::io::Write as _;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::Envelope;
use prx_ci_shared::bus::envelope::{from_timestamp, kind_of};
use prx_ci_shared::bus::subject::ALL_STREAMS;
use prx_ci_shared::domain::push_position::display_wire;

/// Arguments of `prx-ci events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this stream (PRX_WEBHOOKS, PRX_EVENTS, PRX_PARKED).
    #[arg(long)]
    stream: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// NATS server of a running system.
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

pub async fn run(config_file: Option<&std::path::Path>, args: EventsArgs) -> anyhow::Result<()> {
    let nats = prx_ci::local_nats::client_config(config_file, &args.nats_url, &args.data_dir)?;
    let client = prx_ci_shared::bus::nats::connect(&nats, "cli").await?;
    let js = jetstream::new(client);
    let streams: Vec<String> = match &args.stream {
        Some(s) => vec![s.clone()],
        None => ALL_STREAMS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut out = std::io::stdout().lock();
    for name in streams {
        let mut stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("cannot open stream {name}"))?;
        if stream.info().await?.state.messages == 0 {
            continue;
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .with_context(|| format!("cannot read stream {name}"))?;
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let line = render(
                &name,
                sequence,
                &message.subject,
                &message.payload,
                args.json,
            );
            writeln!(out, "{line}")?;
            if pending == 0 {
                break;
            }
        }
    }
    Ok(())
}

fn render(stream: &str, sequence: u64, subject: &str, payload: &[u8], json: bool) -> String {
    let envelope = Envelope::decode(payload).ok();
    if json {
        let body = prx_ci_proto::json::envelope_to_json(payload)
            .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
        let envelope = envelope.unwrap_or_default();
        let kind = kind_of(&envelope).map(|k| k.name()).unwrap_or("unknown");
        return serde_json::json!({
            "stream": stream,
            "sequence": sequence,
            "subject": subject,
            "kind": kind,
            "event_id": envelope.event_id,
            "correlation_id": envelope.correlation_id,
            "ordering_key": body.get("orderingKey"),
            "push_sequence": envelope.push_sequence,
            "push_position": display_wire(envelope.push_sequence),
            "time": body.get("time"),
            "payload": body,
        })
        .to_string();
    }
    let Some(envelope) = envelope else {
        return format!("{stream} #{sequence} {subject} <undecodable message>");
    };
    let kind = kind_of(&envelope).map(|k| k.name()).unwrap_or("unknown");
    let time = from_timestamp(envelope.time.as_ref())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let key = envelope
        .ordering_key
        .as_ref()
        .and_then(prx_ci_shared::domain::OrderingKey::from_proto)
        .map(|k| format!(" key={k} push={}", display_wire(envelope.push_sequence)))
        .unwrap_or_default();
    format!(
        "{stream} #{sequence} {time} {kind:<22} {subject}{key} id={} delivery={}",
        envelope.event_id, envelope.correlation_id
    )
}
