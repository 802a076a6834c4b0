//! The GitHub webhook ingress: verifies every delivery's signature on the raw body, stores
//! accepted deliveries in JetStream as `WebhookReceived` events (message id = delivery id, so
//! redeliveries are stored once), and answers 202 only after the store's ack.
//!
//! # Running it
//! ```text
//! let mut registry = Registry::default();
//! let rt = Runtime::connect(&nats, "ingress", &mut registry).await?;   // or Runtime::from_client
//! rt.provision(nats.replicas).await?;
//! let config = IngressConfig::load(config_file)?;                      // [ingress] + PRX_CI_WEBHOOK_SECRET
//! let ingress = Ingress::new(rt, config.clone(), &mut registry)?;      // validates, registers metrics
//! // ... construct the other services with the same `&mut registry` ...
//! let registry = Arc::new(registry);
//! let listener = TcpListener::bind(config.listen).await?;
//! ingress.run(listener, registry, shutdown).await?;                    // webhook + /healthz /readyz /metrics
//! ```
//! The ops endpoints are served on the webhook listener and render the registry passed to
//! [`Ingress::run`]: `prx-ci up` passes its single process-wide registry, so `/metrics` on the
//! ingress's address shows every service's metrics. In local mode, `up` passes its own
//! `--listen` address (default `127.0.0.1:8080`) and at least one secret (it generates one
//! when neither `PRX_CI_WEBHOOK_SECRET` nor `[ingress] secrets` gives one; use
//! [`IngressConfig::load_unvalidated`] for that). The ingress makes no GitHub or AWS calls.
//!
//! Tests use [`Ingress::router`] (or [`Ingress::webhook_router`]) with
//! `tower::ServiceExt::oneshot`, or [`Ingress::run`] on a `127.0.0.1:0` listener.

pub mod config;
pub mod metrics;
pub mod service;
pub mod signature;
pub mod webhook;

pub use config::IngressConfig;
pub use service::{Ingress, WEBHOOK_PATH};
pub use signature::{VerifiedDelivery, Verifier, signature_256};
pub use webhook::{Webhook, WebhookHeaders, parse_payload};
