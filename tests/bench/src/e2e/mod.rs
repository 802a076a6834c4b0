//! The end-to-end bench (`benches/e2e.rs`, docs/benchmarks/e2e.md): the pushes it sends
//! ([`pushes`]), each push's timeline and the stage summaries ([`timeline`]), and the fake
//! CodeBuild and SSM the services call ([`fake_aws`]); what the services ask of nats-server
//! per push ([`nats_traffic`]).

pub mod cpu;
pub mod fake_aws;
pub mod nats_traffic;
pub mod pushes;
pub mod timeline;
