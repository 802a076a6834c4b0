//! Building envelopes: event ids, causal chains, and the subject each event is stored under.
//!
//! Handlers derive the ids of the events they emit from the id of the event they handle
//! ([`Chain::derive_id`]). A redelivered or replayed input therefore produces byte-identical
//! ids, JetStream's duplicate window collapses the second publish, and every handler is
//! idempotent without keeping its own "seen" table.

use prx_ci_proto::SCHEMA_VERSION;
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bus::subject::{self, EventKind};
use crate::domain::OrderingKey;

/// Namespace of derived event ids (UUID v5). Never change it: ids must stay stable across
/// versions for replays to deduplicate.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f1d_5a6e_2c1b_4c9a_9b7e_7e0a_11c1_0001);

/// A fresh random event id (for facts with no cause inside the system).
pub fn new_event_id() -> String {
    Uuid::new_v4().to_string()
}

/// A deterministic event id: the same cause and parts always give the same id.
pub fn derived_event_id(cause_event_id: &str, parts: &[&str]) -> String {
    let mut name = String::from(cause_event_id);
    for part in parts {
        name.push('\u{1f}');
        name.push_str(part);
    }
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The context an event inherits from the event that caused it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain {
    pub correlation_id: String,
    pub causation_id: String,
    pub ordering_key: Option<v1::OrderingKey>,
    pub push_sequence: u64,
}

impl Chain {
    /// The chain a fact with no cause inside the system starts (a webhook, an operator's
    /// request, a report from outside): `correlation_id` names it for every event it causes.
    pub fn starting(correlation_id: &str) -> Self {
        Self {
            correlation_id: correlation_id.to_owned(),
            ..Self::default()
        }
    }

    /// The chain of an event caused by `cause`: same correlation, ordering key and sequence.
    pub fn caused_by(cause: &Envelope) -> Self {
        Self {
            correlation_id: cause.correlation_id.clone(),
            causation_id: cause.event_id.clone(),
            ordering_key: cause.ordering_key.clone(),
            push_sequence: cause.push_sequence,
        }
    }

    /// Sets the ordering key and push sequence (the dispatcher does, from the webhook).
    pub fn with_ordering(mut self, key: &OrderingKey, push_sequence: u64) -> Self {
        self.ordering_key = Some(key.to_proto());
        self.push_sequence = push_sequence;
        self
    }

    /// A deterministic id for an event this chain's cause produces (see module docs).
    pub fn derive_id(&self, parts: &[&str]) -> String {
        derived_event_id(&self.causation_id, parts)
    }

    /// An envelope for `payload` with the current time.
    pub fn envelope(&self, event_id: String, payload: Payload) -> Envelope {
        self.envelope_at(event_id, OffsetDateTime::now_utc(), payload)
    }

    /// An envelope for `payload` that happened at `time`.
    pub fn envelope_at(
        &self,
        event_id: String,
        time: OffsetDateTime,
        payload: Payload,
    ) -> Envelope {
        Envelope {
            event_id,
            time: Some(timestamp(time)),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            ordering_key: self.ordering_key.clone(),
            push_sequence: self.push_sequence,
            schema_version: SCHEMA_VERSION,
            payload: Some(payload),
        }
    }
}

/// Converts a time to the wire timestamp.
pub fn timestamp(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: i32::try_from(time.nanosecond()).unwrap_or(0),
    }
}

/// Converts a wire timestamp to a time (`None` when absent or out of range).
pub fn from_timestamp(ts: Option<&prost_types::Timestamp>) -> Option<OffsetDateTime> {
    let ts = ts?;
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Why an envelope cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope has no payload")]
    NoPayload,
    #[error("envelope has no event id")]
    NoEventId,
}

/// The kind of an envelope's payload.
pub fn kind_of(envelope: &Envelope) -> Result<EventKind, EnvelopeError> {
    envelope
        .payload
        .as_ref()
        .map(EventKind::of)
        .ok_or(EnvelopeError::NoPayload)
}

/// The build an event is about, for the kinds that carry a [`v1::BuildRef`].
pub fn build_of(payload: &Payload) -> Option<&v1::BuildRef> {
    match payload {
        Payload::BuildRequested(p) => p.build.as_ref(),
        Payload::BuildStarted(p) => p.build.as_ref(),
        Payload::BuildPhaseChanged(p) => p.build.as_ref(),
        Payload::BuildCompleted(p) => p.build.as_ref(),
        Payload::BuildCancelled(p) => p.build.as_ref(),
        Payload::PublishApplied(p) => p.build.as_ref(),
        Payload::PublishSkipped(p) => p.build.as_ref(),
        Payload::NotificationDelivered(p) => p.build.as_ref(),
        Payload::WebhookReceived(_)
        | Payload::BuildSkipped(_)
        | Payload::BuildReportReceived(_)
        | Payload::ParameterOwnerChanged(_)
        | Payload::MessageParked(_) => None,
    }
}

/// The repository an event is about ("" when it has none).
pub fn repository_of(payload: &Payload) -> &str {
    match payload {
        Payload::WebhookReceived(p) => &p.repository,
        Payload::BuildSkipped(p) => &p.repository,
        Payload::BuildReportReceived(p) => &p.repository,
        Payload::ParameterOwnerChanged(p) => &p.repository,
        other => build_of(other).map_or("", |b| b.repository.as_str()),
    }
}

/// The subject an envelope is stored under (see [`crate::bus::subject`]).
pub fn subject_of(envelope: &Envelope) -> Result<String, EnvelopeError> {
    let payload = envelope.payload.as_ref().ok_or(EnvelopeError::NoPayload)?;
    Ok(match payload {
        Payload::WebhookReceived(p) => subject::webhook_subject(&p.event_name, &p.repository),
        Payload::MessageParked(p) => subject::parked_subject(&p.consumer),
        other => subject::event_subject(EventKind::of(other), repository_of(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_event_id("evt-1", &["build", "x86_64"]);
        assert_eq!(a, derived_event_id("evt-1", &["build", "x86_64"]));
        assert_ne!(a, derived_event_id("evt-1", &["build", "aarch64"]));
        assert_ne!(a, derived_event_id("evt-2", &["build", "x86_64"]));
        // Part boundaries matter: ("ab","c") is not ("a","bc").
        assert_ne!(
            derived_event_id("e", &["ab", "c"]),
            derived_event_id("e", &["a", "bc"])
        );
    }

    #[test]
    fn chain_carries_correlation_and_ordering() {
        let key = OrderingKey::branch(
            crate::domain::RepoName::parse("PRX/app").unwrap(),
            crate::domain::Branch::new("main").unwrap(),
        );
        let root = Chain::starting("delivery-1")
            .with_ordering(&key, 7)
            .envelope(
                "evt-1".into(),
                Payload::WebhookReceived(v1::WebhookReceived {
                    repository: "PRX/app".into(),
                    event_name: "push".into(),
                    ..Default::default()
                }),
            );
        let next = Chain::caused_by(&root);
        assert_eq!(next.correlation_id, "delivery-1");
        assert_eq!(next.causation_id, "evt-1");
        assert_eq!(next.push_sequence, 7);
        assert_eq!(subject_of(&root).unwrap(), "prx.webhook.push.PRX.app");
        let t = from_timestamp(root.time.as_ref()).unwrap();
        assert!(t <= OffsetDateTime::now_utc());
    }
}
