//! The event log read back: ranges of a stream through a short-lived ordered consumer
//! with subject filters (the server does the filtering, so a repository's history does not
//! read the whole stream).

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::{Envelope, StoredEvent};
use time::OffsetDateTime;

/// One message as the stream holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub stream: String,
    pub sequence: u64,
    pub subject: String,
    pub stored_at: OffsetDateTime,
    pub payload: Bytes,
    pub headers: Option<HeaderMap>,
}

impl StoredMessage {
    /// The decoded envelope (`None` for undecodable messages).
    pub fn envelope(&self) -> Option<Envelope> {
        Envelope::decode(self.payload.clone()).ok()
    }

    /// The API form (undecodable messages get an empty envelope).
    pub fn to_proto(&self, envelope: Option<Envelope>) -> StoredEvent {
        StoredEvent {
            stream: self.stream.clone(),
            sequence: self.sequence,
            subject: self.subject.clone(),
            envelope: envelope.or_else(|| self.envelope()),
            stored_at: Some(prx_ci_shared::bus::envelope::timestamp(self.stored_at)),
        }
    }
}

/// Where a range starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    First,
    Sequence(u64),
    Time(OffsetDateTime),
}

/// Where a range ends (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last message stored when reading began.
    Now,
    Sequence(u64),
    Time(OffsetDateTime),
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("stream {0} does not exist")]
    NoStream(String),
    #[error("cannot read stream {stream}: {message}")]
    Read { stream: String, message: String },
}

/// Reads the messages of `stream` matching any of `filters` (empty = all) from `start` to
/// `end`, in stream order. Keeps at most `limit` messages (the last ones) but reads the whole
/// range; returns them and the number of messages in the range.
pub async fn read_range(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
    start: Start,
    end: End,
    limit: usize,
) -> Result<(Vec<StoredMessage>, u64), EventLogError> {
    let mut out = VecDeque::new();
    let count = scan(js, stream, filters, start, end, |message| {
        if out.len() == limit {
            out.pop_front();
        }
        out.push_back(message);
    })
    .await?;
    Ok((out.into(), count))
}

/// The messages of `stream` (matching any of `filters`, empty = all) from sequence `from` on, as
/// they are stored: `(sequence, payload)` in stream order until `shutdown` ends the stream; an
/// `Err` item when the read fails or the server ends it (the caller restarts from where it got).
pub async fn follow(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: u64,
    shutdown: &prx_ci_shared::CancellationToken,
) -> anyhow::Result<futures::stream::BoxStream<'static, anyhow::Result<(u64, Bytes)>>> {
    let ordered = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await?;
    let name = stream.to_owned();
    let ended =
        futures::stream::once(async move { Err(anyhow::anyhow!("the live read of {name} ended")) });
    let messages = ordered.messages().await?.map(|message| {
        let message = message?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        Ok((sequence, message.payload.clone()))
    });
    Ok(messages
        .chain(ended)
        .take_until(shutdown.clone().cancelled_owned())
        .boxed())
}

/// Calls `visit` with every message of `stream` matching any of `filters` (empty = all) from
/// `start` to `end`, in stream order; returns how many there were. Messages stored after the
/// read began are not visited (the range ends at the last sequence stored then).
pub async fn scan(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
    start: Start,
    end: End,
    mut visit: impl FnMut(StoredMessage),
) -> Result<u64, EventLogError> {
    let read_err = |e: &dyn std::fmt::Display| EventLogError::Read {
        stream: stream.to_owned(),
        message: e.to_string(),
    };
    // `get_stream` fetched the stream's info: no second round trip for the last sequence.
    let handle = js.get_stream(stream).await.map_err(|e| {
        if matches!(
            e.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(_)
        ) {
            EventLogError::NoStream(stream.to_owned())
        } else {
            read_err(&e)
        }
    })?;
    let last_sequence = handle.cached_info().state.last_sequence;
    let end_sequence = match end {
        End::Sequence(s) => s.min(last_sequence),
        End::Now | End::Time(_) => last_sequence,
    };
    let deliver_policy = match start {
        Start::First => consumer::DeliverPolicy::All,
        Start::Sequence(s) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        Start::Time(t) => consumer::DeliverPolicy::ByStartTime { start_time: t },
    };
    if end_sequence == 0 || matches!(start, Start::Sequence(s) if s > end_sequence) {
        return Ok(0);
    }
    let config = consumer::pull::OrderedConfig {
        filter_subjects: filters.to_vec(),
        deliver_policy,
        ..Default::default()
    };
    let ordered = handle
        .create_consumer(config)
        .await
        .map_err(|e| read_err(&e))?;
    if ordered.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = ordered.messages().await.map_err(|e| read_err(&e))?;
    let mut count = 0u64;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| read_err(&e))?;
        let info = message.info().map_err(|e| read_err(&e))?;
        let (sequence, left, published) = (info.stream_sequence, info.pending, info.published);
        if sequence > end_sequence || matches!(end, End::Time(t) if published > t) {
            break;
        }
        count += 1;
        let message = StoredMessage {
            stream: stream.to_owned(),
            sequence,
            subject: message.subject.to_string(),
            stored_at: published,
            payload: message.payload.clone(),
            headers: message.headers.clone(),
        };
        visit(message);
        if left == 0 || sequence == end_sequence {
            break;
        }
    }
    Ok(count)
}

/// Merges per-stream lists (each in stream order) into one list ordered by store time; a
/// stream's own order is always kept, and on equal times the earlier-listed stream goes first.
pub fn merge_by_time(lists: Vec<Vec<StoredMessage>>) -> Vec<StoredMessage> {
    let mut iters: Vec<_> = lists
        .into_iter()
        .map(|l| l.into_iter().peekable())
        .collect();
    let mut out = Vec::new();
    loop {
        let next = iters
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|m| (m.stored_at, i)))
            .min();
        let Some((_, i)) = next else { break };
        out.extend(iters[i].next());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(stream: &str, sequence: u64, at: i64) -> StoredMessage {
        StoredMessage {
            stream: stream.into(),
            sequence,
            subject: String::new(),
            stored_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            payload: Bytes::new(),
            headers: None,
        }
    }

    #[test]
    fn merge_keeps_each_stream_in_order_and_interleaves_by_time() {
        let merged = merge_by_time(vec![
            vec![msg("W", 1, 10), msg("W", 2, 30)],
            vec![msg("E", 1, 10), msg("E", 2, 20), msg("E", 3, 40)],
        ]);
        let order: Vec<_> = merged
            .iter()
            .map(|m| format!("{}{}", m.stream, m.sequence))
            .collect();
        assert_eq!(order, ["W1", "E1", "E2", "W2", "E3"]);
    }
}
