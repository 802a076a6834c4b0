//! The event contract: protobuf messages every service exchanges, and the ops gRPC API.
//!
//! Generated types stay at the edges: services convert them to domain types
//! (`prx_ci_shared::domain`) as soon as they arrive. The compatibility rule lives at the top of
//! `proto/prx/ci/v1/events.proto` and is checked by `tests/compat.rs`.

/// Version 1 of the contract (`prx.ci.v1`).
pub mod v1 {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        clippy::pedantic
    )]
    tonic::include_proto!("prx.ci.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prx_ci_descriptor");

/// Current envelope schema version.
pub const SCHEMA_VERSION: u32 = 1;

pub use prost;
pub use prost_types;

/// JSON rendering of stored events (proto3 JSON mapping), for `prx-ci events --json`, history
/// and other operator output.
pub mod json {
    use std::sync::LazyLock;

    use prost_reflect::{DescriptorPool, DynamicMessage};

    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set is valid")
    });

    /// Why bytes could not be rendered.
    #[derive(Debug, thiserror::Error)]
    #[error("not a prx.ci.v1.Envelope: {0}")]
    pub struct RenderError(String);

    /// Renders an encoded `Envelope` as proto3 JSON. A webhook's raw payload is shown as the
    /// JSON document it is (not base64); a parked message's data likewise when it is JSON.
    pub fn envelope_to_json(encoded: &[u8]) -> Result<serde_json::Value, RenderError> {
        let descriptor = POOL
            .get_message_by_name("prx.ci.v1.Envelope")
            .expect("Envelope is in the descriptor set");
        let message =
            DynamicMessage::decode(descriptor, encoded).map_err(|e| RenderError(e.to_string()))?;
        let mut value = serde_json::to_value(&message).map_err(|e| RenderError(e.to_string()))?;
        if let Some(webhook) = value.get_mut("webhookReceived") {
            inline_json(webhook, "payload");
        }
        Ok(value)
    }

    /// Replaces a base64 `bytes` field holding JSON with the JSON itself.
    fn inline_json(object: &mut serde_json::Value, field: &str) {
        use base64::Engine as _;
        let Some(serde_json::Value::String(encoded)) = object.get(field) else {
            return;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return;
        };
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&raw) {
            object[field] = json;
        }
    }

    #[cfg(test)]
    mod tests {
        use prost::Message as _;

        use super::*;
        use crate::v1;

        #[test]
        fn renders_envelopes_with_inline_webhook_json() {
            let envelope = v1::Envelope {
                event_id: "d-1".into(),
                correlation_id: "d-1".into(),
                schema_version: 1,
                payload: Some(v1::envelope::Payload::WebhookReceived(
                    v1::WebhookReceived {
                        delivery_id: "d-1".into(),
                        event_name: "push".into(),
                        payload: br#"{"ref":"refs/heads/main"}"#.to_vec(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            };
            let json = envelope_to_json(&envelope.encode_to_vec()).unwrap();
            assert_eq!(json["eventId"], "d-1");
            assert_eq!(json["webhookReceived"]["eventName"], "push");
            assert_eq!(json["webhookReceived"]["payload"]["ref"], "refs/heads/main");
            assert!(envelope_to_json(b"\xff\xff\xff").is_err());
        }
    }
}
