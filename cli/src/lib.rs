//! The library half of `prx-ci`: the in-process system `prx-ci up` runs, its local nats-server,
//! and the demo scenario, shared with the end-to-end tests so they exercise exactly what a
//! newcomer runs.

pub mod demo;
pub mod local_nats;
pub mod system;
