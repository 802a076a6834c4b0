//! The GitHub webhook ingress: verifies every delivery's signature on the raw body, stores
//! accepted deliveries in JetStream as `WebhookReceived` events (message id = delivery id, so
//! redeliveries are stored once), and answers 202 only after the store's ack.
//!
//! # Running it
//! [`IngressConfig::load`] (`[ingress]` plus `PRX_CI_WEBHOOK_SECRET`), [`Ingress::new`] (validates,
//! registers the metrics in the process-wide registry), then [`Ingress::run`] on a
//! `TcpListener` (the webhook plus `/healthz`, `/readyz`, `/metrics`): see `src/main.rs` and, for
//! `prx-ci up`, `cli/src/system.rs`.
//! The ops endpoints are served on the webhook listener (or, with `[ingress] metrics_listen`,
//! `/metrics` on a listener of its own) and render the registry passed to [`Ingress::run`]:
//! `prx-ci up` passes its single process-wide registry, so `/metrics` shows every service's
//! metrics.
//!
//! # Under hostile load
//! The listener bounds what clients can make it hold: webhook requests in flight
//! (`max_concurrent_requests`, 503 beyond), time to send headers (`header_read_timeout`) and a
//! body (`body_read_timeout`, 408), and body bytes in memory (`body_budget_bytes` with a
//! reserve for small deliveries, 503 beyond, decided before a body is read when it has a
//! `Content-Length`). See [`budget`] and `docs/benchmarks/ingress.md`. In local mode, `up` passes its own
//! `--listen` address (default `127.0.0.1:8080`) and at least one secret (it generates one
//! when neither `PRX_CI_WEBHOOK_SECRET` nor `[ingress] secrets` gives one; use
//! [`IngressConfig::load_unvalidated`] for that). The ingress makes no AWS calls, and GitHub
//! calls only with `[ingress.self_healing]` enabled: then a [`recovery::Reconciler`] (set with
//! [`Ingress::with_reconciler`]) recovers deliveries GitHub could not make, on a task of its
//! own (`docs/self-healing-intake.md`).
//!
//! Tests use [`Ingress::router`] (or [`Ingress::webhook_router`]) with
//! `tower::ServiceExt::oneshot`, or [`Ingress::run`] on a `127.0.0.1:0` listener.

pub mod budget;
pub mod config;
pub mod handler;
pub mod metrics;
pub mod recovery;
mod server;
pub mod service;
pub mod signature;
pub mod webhook;

pub use config::IngressConfig;
pub use service::{Ingress, WEBHOOK_PATH};
pub use signature::{VerifiedDelivery, Verifier, signature_256};
pub use webhook::{Webhook, WebhookHeaders, parse_payload};
