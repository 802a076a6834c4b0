//! The event log read back: ranges of a stream through a short-lived ordered consumer with
//! subject filters (the server does the filtering), a live read from a sequence on, and single
//! messages by sequence (what a history query reads, the index having said which).

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
/// they are stored, in stream order until `shutdown` ends the stream; an `Err` item when the
/// read fails or the server ends it (the caller restarts from where it got).
pub async fn follow(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: u64,
    shutdown: &prx_ci_shared::CancellationToken,
) -> anyhow::Result<futures::stream::BoxStream<'static, anyhow::Result<StoredMessage>>> {
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
    let ended = {
        let name = name.clone();
        futures::stream::once(async move { Err(anyhow::anyhow!("the live read of {name} ended")) })
    };
    let messages = ordered.messages().await?.map(move |message| {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(StoredMessage {
            stream: name.clone(),
            sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            stored_at: info.published,
            payload: message.payload.clone(),
            headers: message.headers.clone(),
        })
    });
    Ok(messages
        .chain(ended)
        .take_until(shutdown.clone().cancelled_owned())
        .boxed())
}

/// The handle of `stream`, with its info (first and last sequence) as of now.
pub async fn open(
    js: &jetstream::Context,
    stream: &str,
) -> Result<jetstream::stream::Stream, EventLogError> {
    js.get_stream(stream).await.map_err(|e| {
        if matches!(
            e.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(_)
        ) {
            EventLogError::NoStream(stream.to_owned())
        } else {
            EventLogError::Read {
                stream: stream.to_owned(),
                message: e.to_string(),
            }
        }
    })
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
    // `open` fetched the stream's info: no second round trip for the last sequence.
    let handle = open(js, stream).await?;
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

/// Reads of single messages in flight at once (pipelined on the one connection).
const CONCURRENT_GETS: usize = 64;

/// The messages of `stream` (its handle, as `get_stream` returned it) at `sequences`, in that
/// order, each read by sequence (up to [`CONCURRENT_GETS`] requests in flight); a sequence
/// whose message is gone (expired, deleted) is left out.
///
/// With `allow_direct` (as `deploy/nats/` sets it) a read is a direct get: the message comes
/// back as it is stored, not as JSON with a base64 payload, which costs the server and this
/// process a fraction. Any member of a replicated stream may answer a direct get, and one that
/// lags may not hold the message yet, so a direct get that finds nothing (or fails) is asked
/// again of the leader, whose answer is the truth: a lagging replica cannot drop an event.
pub async fn get_each(
    stream: &jetstream::stream::Stream,
    sequences: Vec<u64>,
) -> Result<Vec<StoredMessage>, EventLogError> {
    let name = stream.cached_info().config.name.clone();
    let first = stream.cached_info().state.first_sequence;
    let direct = stream.cached_info().config.allow_direct;
    let reads = futures::stream::iter(sequences.into_iter().filter(|s| *s >= first))
        .map(|sequence| {
            let name = &name;
            async move {
                let read = match direct {
                    true => match stream.direct_get(sequence).await {
                        Ok(mut m) => {
                            m.headers = without_direct_get_headers(&m.headers);
                            Ok(m)
                        }
                        Err(_) => stream.get_raw_message(sequence).await,
                    },
                    false => stream.get_raw_message(sequence).await,
                };
                match read {
                    Ok(m) => Ok(Some(StoredMessage {
                        stream: name.clone(),
                        sequence: m.sequence,
                        subject: m.subject.to_string(),
                        stored_at: m.time,
                        payload: m.payload,
                        headers: (!m.headers.is_empty()).then_some(m.headers),
                    })),
                    Err(e)
                        if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(EventLogError::Read {
                        stream: name.clone(),
                        message: e.to_string(),
                    }),
                }
            }
        })
        .buffered(CONCURRENT_GETS);
    let read: Vec<Option<StoredMessage>> = futures::TryStreamExt::try_collect(reads).await?;
    Ok(read.into_iter().flatten().collect())
}

/// The headers the server adds to a direct get's answer (where the message is, not what was
/// stored with it).
const DIRECT_GET_HEADERS: [&str; 6] = [
    "Nats-Stream",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Subject",
    "Nats-Last-Sequence",
    "Nats-Num-Pending",
];

/// `headers` as the message was stored: without what the server adds to a direct get.
fn without_direct_get_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in headers.iter() {
        if DIRECT_GET_HEADERS
            .iter()
            .any(|added| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(added))
        {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}
