//! The publisher: writes SSM parameters for successful publishable builds, behind the
//! per-parameter ordering fence (see the crate's README).
//!
//! For each `BuildCompleted` it decides whether the build may publish ([`eligibility`]), parses
//! the `PRX_SPIRE_*_PKG_PARAMETERS` mappings and checks each value under its app's value checks
//! ([`mapping`], [`apps`]), checks the build's repository owns each parameter
//! ([`prx_ci_shared::ownership`]; a first publish claims it), checks the artifact exists
//! ([`artifacts`]), applies the ordering fence ([`fence`] decisions, [`fence_protocol`] the
//! protocol's steps, [`fence_store`] them over NATS KV; [`simulation`] checks the protocol on
//! thousands of seeded fault schedules; the primary
//! architecture from [`apps`]) and writes the parameter ([`parameter_store`]); every parameter
//! gets a `PublishApplied` or a `PublishSkipped` naming the [`check`] that refused it.
//! `prx-ci params` calls [`parameter_views`].
//!
//! Wiring (`prx-ci up`, local mode; `rt.provision(..)` first creates the consumer and the KV
//! buckets; production uses [`SsmParameterStore`] and [`AwsArtifactChecker`]):
//!
//! ```no_run
//! # async fn wire(rt: prx_ci_shared::Runtime) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use prx_ci_publisher::{KvParameterStore, NoArtifactCheck, Publisher, PublisherConfig};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let store = Arc::new(KvParameterStore::new(&rt.js).await?);
//! let publisher = Publisher::new(
//!     rt,
//!     PublisherConfig::default(),
//!     store,
//!     Arc::new(NoArtifactCheck),
//!     &mut registry,
//! )?;
//! tokio::spawn(publisher.run(prx_ci_shared::CancellationToken::new()));
//! # Ok(())
//! # }
//! ```

pub mod apps;
pub mod artifacts;
pub mod check;
pub mod config;
pub mod eligibility;
pub mod fence;
pub mod fence_protocol;
pub mod fence_store;
pub mod handler;
pub mod mapping;
pub mod metrics;
pub mod parameter_store;
pub mod parameter_view;
pub mod service;
pub mod simulation;
pub mod skip_store;

pub use apps::{AppConfig, AppRules, ValueChecks};
pub use artifacts::{ArtifactChecker, ArtifactStatus, AwsArtifactChecker, NoArtifactCheck};
pub use config::PublisherConfig;
pub use parameter_store::{
    KvParameterStore, ParameterStore, SsmParameterStore, StoreError, StoredParameter,
};
pub use parameter_view::{ParameterView, parameter_views};
pub use service::Publisher;
pub use skip_store::SkipRecord;
