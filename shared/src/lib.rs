//! What every PRX CI service uses, by concern: the event bus ([`bus`]), typed KV records
//! ([`kv`]), the CodeBuild vocabulary and the build-runner port ([`codebuild`]), domain
//! identifiers ([`domain`]), the last lines of a failed build's log, redacted ([`log_tail`]),
//! parameter ownership ([`ownership`]), what the notifier says about a
//! build ([`notice`]), GitHub ([`github`]), configuration ([`config`]), telemetry
//! ([`telemetry`]), service start-up ([`service`]), one retry helper ([`retry`]), and
//! (feature `testing`) the test harness.

pub mod bus;
pub mod codebuild;
pub mod config;
pub mod domain;
pub mod github;
pub mod kv;
pub mod log_tail;
pub mod notice;
pub mod ownership;
pub mod retry;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use bus::consume::{Delivery, Handler, HandlerError};
pub use bus::envelope::Chain;
pub use bus::publish::{EventPublisher, Stored};
pub use bus::run_consumer;
pub use service::runtime::Runtime;
pub use tokio_util::sync::CancellationToken;
