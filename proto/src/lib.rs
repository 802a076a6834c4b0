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
