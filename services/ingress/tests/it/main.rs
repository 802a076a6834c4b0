//! The ingress against a real nats-server, over real HTTP.

mod concurrency;
mod logs;
mod outage;
mod recorded;
mod utils;
mod webhooks;
