//! Parked messages: listing them with their retry records, and putting one back once.
//!
//! A retry re-publishes the original bytes and headers to the original subject, with a new
//! `Nats-Msg-Id` derived from the parked entry (the original id would be dropped by the
//! duplicate window; a derived one makes a repeated retry collapse too). Every consumer of that
//! subject sees the message again; their handlers are idempotent, so only the consumer that
//! failed does new work. The retry is recorded in the `prx_ci_ops_retries` KV bucket with a
//! create-only write, so two operators cannot put the same entry back twice.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use prost::Message as _;
use prx_ci_proto::v1::{Envelope, ParkedEntry, RetryParkedResponse, envelope::Payload};
use prx_ci_shared::bus::envelope::{derived_event_id, from_timestamp, timestamp};
use prx_ci_shared::bus::subject::{self, PARKED_STREAM};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::OpsError;
use crate::event_log::{self, End, Start};

/// The KV bucket of retry records (`deploy/nats/kv/prx_ci_ops_retries.json`).
pub const RETRIES_BUCKET: &str = "prx_ci_ops_retries";
/// Header naming the parked entry a retried message came from.
pub const RETRIED_FROM_HEADER: &str = "Prx-Retried-From";

/// What the retry record holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetryRecord {
    retried_by: String,
    #[serde(with = "time::serde::rfc3339")]
    retried_at: OffsetDateTime,
    message_id: String,
}

async fn bucket(js: &jetstream::Context) -> Result<kv::Store, OpsError> {
    js.get_key_value(RETRIES_BUCKET).await.map_err(|e| {
        OpsError::unavailable(anyhow::anyhow!(
            "cannot open KV bucket {RETRIES_BUCKET}: {e}"
        ))
    })
}

/// Parked entries (optionally of one consumer), oldest first, at most `limit` (the newest).
pub async fn list(
    js: &jetstream::Context,
    consumer: &str,
    limit: usize,
) -> Result<Vec<ParkedEntry>, OpsError> {
    let filters = if consumer.is_empty() {
        vec![]
    } else {
        vec![subject::parked_subject(consumer)]
    };
    let (messages, _) =
        event_log::read_range(js, PARKED_STREAM, &filters, Start::First, End::Now, limit).await?;
    let retries = bucket(js).await?;
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let envelope = message.envelope().unwrap_or_default();
        let Some(Payload::MessageParked(parked)) = envelope.payload else {
            continue;
        };
        let record = retries
            .get(message.sequence.to_string())
            .await
            .map_err(|e| OpsError::unavailable(anyhow::anyhow!("cannot read retry record: {e}")))?
            .and_then(|v| serde_json::from_slice::<RetryRecord>(&v).ok());
        let event_id = Envelope::decode(parked.data.as_slice())
            .map(|e| e.event_id)
            .unwrap_or_default();
        out.push(ParkedEntry {
            id: message.sequence,
            parked_at: Some(timestamp(message.stored_at)),
            retried: record.is_some(),
            retried_by: record
                .as_ref()
                .map(|r| r.retried_by.clone())
                .unwrap_or_default(),
            retried_at: record.as_ref().map(|r| timestamp(r.retried_at)),
            event_id,
            parked: Some(parked),
        });
    }
    Ok(out)
}

/// Puts parked entry `id` back on its original subject, once.
pub async fn retry(
    js: &jetstream::Context,
    id: u64,
    requested_by: &str,
) -> Result<RetryParkedResponse, OpsError> {
    let stream = js
        .get_stream(PARKED_STREAM)
        .await
        .map_err(OpsError::unavailable)?;
    let raw = stream.get_raw_message(id).await.map_err(|e| {
        if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound {
            OpsError::NotFound(format!("no parked entry {id}"))
        } else {
            OpsError::unavailable(e)
        }
    })?;
    let envelope = Envelope::decode(raw.payload.clone())
        .map_err(|_| OpsError::FailedPrecondition(format!("entry {id} is not a parked message")))?;
    let Some(Payload::MessageParked(parked)) = envelope.payload else {
        return Err(OpsError::FailedPrecondition(format!(
            "entry {id} is not a parked message"
        )));
    };
    let message_id = derived_event_id(&envelope.event_id, &["retry"]);
    let record = RetryRecord {
        retried_by: requested_by.to_owned(),
        retried_at: OffsetDateTime::now_utc(),
        message_id: message_id.clone(),
    };
    let retries = bucket(js).await?;
    let body = serde_json::to_vec(&record).map_err(OpsError::internal)?;
    if let Err(err) = retries.create(id.to_string(), body.into()).await {
        if err.kind() == kv::CreateErrorKind::AlreadyExists
            || prx_ci_shared::kv::is_wrong_last_sequence(&err)
        {
            let previous = retries
                .get(id.to_string())
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<RetryRecord>(&v).ok());
            let by = previous.map_or_else(String::new, |p| {
                format!(" by {} at {}", p.retried_by, p.retried_at)
            });
            return Err(OpsError::FailedPrecondition(format!(
                "entry {id} was already retried{by}"
            )));
        }
        return Err(OpsError::unavailable(anyhow::anyhow!(
            "cannot record the retry: {err}"
        )));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parked.headers {
        if !name.eq_ignore_ascii_case("Nats-Msg-Id") && !name.starts_with("Nats-") {
            headers.insert(name.as_str(), value.as_str());
        }
    }
    headers.insert("Nats-Msg-Id", message_id.as_str());
    headers.insert(RETRIED_FROM_HEADER, id.to_string().as_str());
    let published = async {
        js.publish_with_headers(parked.subject.clone(), headers, parked.data.clone().into())
            .await?
            .await
    }
    .await;
    match published {
        Ok(ack) => {
            tracing::info!(
                parked_id = id,
                requested_by,
                subject = %parked.subject,
                consumer = %parked.consumer,
                "parked message retried"
            );
            Ok(RetryParkedResponse {
                stream: ack.stream,
                sequence: ack.sequence,
                subject: parked.subject,
                message_id,
            })
        }
        Err(err) => {
            // Not put back: release the claim so the operator can try again.
            let _ = retries.delete(id.to_string()).await;
            Err(OpsError::unavailable(anyhow::anyhow!(
                "cannot re-publish entry {id}: {err}"
            )))
        }
    }
}

/// Parked entries no operator retried yet: the entries in `PRX_PARKED` minus those holding a
/// retry record (entries aged out of the stream no longer count, whatever their record).
pub async fn waiting(js: &jetstream::Context) -> Result<u64, OpsError> {
    use futures::TryStreamExt as _;

    let mut stream = js
        .get_stream(PARKED_STREAM)
        .await
        .map_err(OpsError::unavailable)?;
    let state = stream
        .info()
        .await
        .map_err(OpsError::unavailable)?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(0);
    }
    let retried = bucket(js)
        .await?
        .keys()
        .await
        .map_err(OpsError::unavailable)?
        .try_filter(|key| {
            let id = key.parse::<u64>().unwrap_or(0);
            std::future::ready((state.first_sequence..=state.last_sequence).contains(&id))
        })
        .try_fold(0_u64, |n, _| std::future::ready(Ok(n + 1)))
        .await
        .map_err(OpsError::unavailable)?;
    Ok(state.messages.saturating_sub(retried))
}

/// When an entry was retried (for rendering).
pub fn retried_at(entry: &ParkedEntry) -> Option<OffsetDateTime> {
    from_timestamp(entry.retried_at.as_ref())
}
