//! The typed publisher: stores an envelope in JetStream and waits for the store's ack.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use prx_ci_proto::v1::Envelope;

use crate::bus::envelope::{self, EnvelopeError};
use crate::telemetry;

/// Header naming the event kind (lets tools filter without decoding).
pub const EVENT_KIND_HEADER: &str = "Prx-Event-Kind";

/// Default time to wait for JetStream to acknowledge a store.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an event was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream: String,
    pub sequence: u64,
    /// The event id was already in the stream's duplicate window; nothing new was stored and
    /// `sequence` is the original's.
    pub duplicate: bool,
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("cannot send event {event_id} to {subject}")]
    Send {
        event_id: String,
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("event {event_id} to {subject} was not acknowledged")]
    Ack {
        event_id: String,
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("event {event_id} to {subject} was not acknowledged within {timeout:?}")]
    Timeout {
        event_id: String,
        subject: String,
        timeout: Duration,
    },
}

/// Publishes envelopes: protobuf body, `Nats-Msg-Id` = event id (JetStream deduplicates
/// within the stream's window), W3C trace context of the current span in the headers.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    ack_timeout: Duration,
}

impl EventPublisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
        }
    }

    /// Overrides how long to wait for the store's ack.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Stores `envelope` under its natural subject ([`envelope::subject_of`]).
    pub async fn publish(&self, envelope: &Envelope) -> Result<Stored, PublishError> {
        let subject = envelope::subject_of(envelope)?;
        self.publish_to(subject, envelope).await
    }

    /// Stores `envelope` under `subject` and returns once JetStream acknowledged it.
    pub async fn publish_to(
        &self,
        subject: String,
        envelope: &Envelope,
    ) -> Result<Stored, PublishError> {
        if envelope.event_id.is_empty() {
            return Err(EnvelopeError::NoEventId.into());
        }
        let kind = envelope::kind_of(envelope)?;
        let mut headers = HeaderMap::new();
        headers.insert(EVENT_KIND_HEADER, kind.name());
        telemetry::inject_current_context(&mut headers);
        // `headers` replaces the whole map, so it must come before `message_id`.
        let publish = PublishMessage::build()
            .headers(headers)
            .message_id(&envelope.event_id)
            .payload(envelope.encode_to_vec().into());

        let store = async {
            let ack = self
                .js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|source| PublishError::Send {
                    event_id: envelope.event_id.clone(),
                    subject: subject.clone(),
                    source,
                })?;
            ack.await.map_err(|source| PublishError::Ack {
                event_id: envelope.event_id.clone(),
                subject: subject.clone(),
                source,
            })
        };
        let ack = tokio::time::timeout(self.ack_timeout, store)
            .await
            .map_err(|_| PublishError::Timeout {
                event_id: envelope.event_id.clone(),
                subject: subject.clone(),
                timeout: self.ack_timeout,
            })??;
        tracing::debug!(
            event_id = %envelope.event_id,
            %subject,
            stream = %ack.stream,
            sequence = ack.sequence,
            duplicate = ack.duplicate,
            "event stored"
        );
        Ok(Stored {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
