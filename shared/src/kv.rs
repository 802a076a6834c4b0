//! Typed records in NATS KV buckets.
