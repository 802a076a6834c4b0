//! The ingress against a real nats-server, over real HTTP.

mod concurrency;
mod limits;
mod logs;
mod outage;
mod recorded;
mod recovery;
mod utils;
mod webhooks;
