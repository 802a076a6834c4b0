//! The ingress against a real nats-server, over real HTTP.

mod concurrency;
mod outage;
mod recorded;
mod utils;
mod webhooks;
