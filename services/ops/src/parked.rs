//! Parked messages: listing them with what operators did with them, putting one back once, or
//! dropping one (with a reason) once.
//!
//! A retry re-publishes the original bytes and headers to the original subject, with a new
//! `Nats-Msg-Id` derived from the parked entry (the original id would be dropped by the
//! duplicate window; a derived one makes a repeated retry collapse too). Every consumer of that
//! subject sees the message again; their handlers are idempotent, so only the consumer that
//! failed does new work. A drop changes no stream: the message stays in `PRX_PARKED`, marked
//! handled. Either is recorded in the `prx_ci_ops_retries` KV bucket under the entry's id with
//! a create-only write ([`crate::parked_record`]), so an entry is retried or dropped, once,
//! whoever asks and however concurrently.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use prost::Message as _;
use prx_ci_proto::v1::{
    DropParkedResponse, Envelope, MessageParked, ParkedEntry, RetryParkedResponse,
    envelope::Payload,
};
use prx_ci_shared::bus::envelope::{derived_event_id, timestamp};
use prx_ci_shared::bus::subject::{self, PARKED_STREAM};
use time::OffsetDateTime;

use crate::error::OpsError;
use crate::event_log::{self, End, Start};
use crate::parked_record::{self, Action, DropRecord, ParkedRecord, Refused, RetryRecord};

/// The KV bucket of retry and drop records (`deploy/nats/kv/prx_ci_ops_retries.json`).
pub const RETRIES_BUCKET: &str = "prx_ci_ops_retries";
/// Header naming the parked entry a retried message came from.
pub const RETRIED_FROM_HEADER: &str = "Prx-Retried-From";

async fn bucket(js: &jetstream::Context) -> Result<kv::Store, OpsError> {
    js.get_key_value(RETRIES_BUCKET).await.map_err(|e| {
        OpsError::unavailable(anyhow::anyhow!(
            "cannot open KV bucket {RETRIES_BUCKET}: {e}"
        ))
    })
}

/// The record of entry `id`, if any. An unreadable one is an error: it still marks the entry
/// as handled, so it must not be taken for "no record".
async fn record(store: &kv::Store, id: u64) -> Result<Option<ParkedRecord>, OpsError> {
    let Some(value) = store.get(id.to_string()).await.map_err(|e| {
        OpsError::unavailable(anyhow::anyhow!(
            "cannot read the record of parked entry {id}: {e}"
        ))
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&value).map(Some).map_err(|e| {
        OpsError::internal(anyhow::anyhow!(
            "the record of parked entry {id} in {RETRIES_BUCKET} is unreadable: {e}"
        ))
    })
}

/// Writes `new` as the record of entry `id` if it has none yet (create-only: of concurrent
/// retries and drops exactly one succeeds); otherwise refuses, naming who did what when.
async fn claim(
    store: &kv::Store,
    id: u64,
    action: Action,
    new: &ParkedRecord,
) -> Result<(), OpsError> {
    let refused = |r: Refused| OpsError::FailedPrecondition(r.to_string());
    parked_record::check(id, action, record(store, id).await?.as_ref()).map_err(refused)?;
    let body = serde_json::to_vec(new).map_err(OpsError::internal)?;
    let Err(err) = store.create(id.to_string(), body.into()).await else {
        return Ok(());
    };
    if err.kind() == kv::CreateErrorKind::AlreadyExists
        || prx_ci_shared::kv::is_wrong_last_sequence(&err)
    {
        // Another call won the create: say what it did.
        let winner = record(store, id).await?;
        return Err(refused(
            parked_record::check(id, action, winner.as_ref())
                .err()
                .unwrap_or(Refused::Contended { id, action }),
        ));
    }
    Err(OpsError::unavailable(anyhow::anyhow!(
        "cannot record that entry {id} was {}: {err}",
        action.verb()
    )))
}

/// Parked entry `id` as stored in `PRX_PARKED`, and its envelope's event id.
async fn parked_message(
    js: &jetstream::Context,
    id: u64,
) -> Result<(MessageParked, String), OpsError> {
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
    let not_parked = || OpsError::FailedPrecondition(format!("entry {id} is not a parked message"));
    let envelope = Envelope::decode(raw.payload.clone()).map_err(|_| not_parked())?;
    match envelope.payload {
        Some(Payload::MessageParked(parked)) => Ok((parked, envelope.event_id)),
        _ => Err(not_parked()),
    }
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
    let records = bucket(js).await?;
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let envelope = message.envelope().unwrap_or_default();
        let Some(Payload::MessageParked(parked)) = envelope.payload else {
            continue;
        };
        let record = record(&records, message.sequence)
            .await
            .or_else(|err| match err {
                // Listed as not handled rather than failing the whole listing; a retry or
                // drop of it reports the unreadable record.
                OpsError::Internal(e) => {
                    tracing::warn!(error = %e, "unreadable parked entry record");
                    Ok(None)
                }
                other => Err(other),
            })?;
        let retried = record.as_ref().and_then(ParkedRecord::retried);
        let dropped = record.as_ref().and_then(ParkedRecord::dropped);
        let event_id = Envelope::decode(parked.data.as_slice())
            .map(|e| e.event_id)
            .unwrap_or_default();
        out.push(ParkedEntry {
            id: message.sequence,
            parked_at: Some(timestamp(message.stored_at)),
            retried: retried.is_some(),
            retried_by: retried.map(|r| r.retried_by.clone()).unwrap_or_default(),
            retried_at: retried.map(|r| timestamp(r.retried_at)),
            event_id,
            parked: Some(parked),
            dropped: dropped.is_some(),
            dropped_by: dropped.map(|r| r.dropped_by.clone()).unwrap_or_default(),
            dropped_at: dropped.map(|r| timestamp(r.dropped_at)),
            drop_reason: dropped.map(|r| r.reason.clone()).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Puts parked entry `id` back on its original subject, once (refused once it was retried or
/// dropped).
pub async fn retry(
    js: &jetstream::Context,
    id: u64,
    requested_by: &str,
) -> Result<RetryParkedResponse, OpsError> {
    let (parked, event_id) = parked_message(js, id).await?;
    let message_id = derived_event_id(&event_id, &["retry"]);
    let new = ParkedRecord::Retried(RetryRecord {
        retried_by: requested_by.to_owned(),
        retried_at: OffsetDateTime::now_utc(),
        message_id: message_id.clone(),
    });
    let records = bucket(js).await?;
    claim(&records, id, Action::Retry, &new).await?;
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
            let _ = records.delete(id.to_string()).await;
            Err(OpsError::unavailable(anyhow::anyhow!(
                "cannot re-publish entry {id}: {err}"
            )))
        }
    }
}

/// Marks parked entry `id` as dropped by `dropped_by` for `reason`, once (refused once it was
/// retried or dropped). The message itself stays in `PRX_PARKED`.
pub async fn drop_entry(
    js: &jetstream::Context,
    id: u64,
    dropped_by: &str,
    reason: &str,
) -> Result<DropParkedResponse, OpsError> {
    let reason = parked_record::drop_reason(reason).map_err(OpsError::InvalidArgument)?;
    let (parked, _) = parked_message(js, id).await?;
    let dropped_at = OffsetDateTime::now_utc();
    let new = ParkedRecord::Dropped(DropRecord {
        dropped_by: dropped_by.to_owned(),
        dropped_at,
        reason: reason.to_owned(),
    });
    claim(&bucket(js).await?, id, Action::Drop, &new).await?;
    tracing::info!(
        parked_id = id,
        dropped_by,
        reason,
        subject = %parked.subject,
        consumer = %parked.consumer,
        "parked message dropped"
    );
    Ok(DropParkedResponse {
        dropped_by: dropped_by.to_owned(),
        dropped_at: Some(timestamp(dropped_at)),
    })
}

/// Parked entries no operator retried or dropped yet: the entries in `PRX_PARKED` minus those
/// holding a record (entries aged out of the stream no longer count, whatever their record).
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
    let handled = bucket(js)
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
    Ok(state.messages.saturating_sub(handled))
}
