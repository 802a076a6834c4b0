//! The library half of `prx-ci`: the in-process system `prx-ci up` runs and the demo scenario,
//! shared with the end-to-end tests so they exercise exactly what a newcomer runs.

pub mod demo;
pub mod system;
