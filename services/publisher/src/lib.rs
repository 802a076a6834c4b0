//! The publisher: for successful publishable builds, parses the `PRX_SPIRE_*_PKG_PARAMETERS`
//! mappings, checks the build's repository owns the parameter
//! ([`prx_ci_shared::ownership`]; a first
//! publish claims it), checks the artifact exists, applies the per-parameter ordering fence and
//! writes the parameter; every parameter gets a `PublishApplied` or `PublishSkipped` event.
//!
//! Wiring (`prx-ci up`, local mode):
//! ```text
//! let store = Arc::new(KvParameterStore::new(&rt.js).await?);
//! let publisher = Publisher::new(rt, PublisherConfig::default(), store,
//!                                Arc::new(NoArtifactCheck), &mut registry)?;
//! tokio::spawn(publisher.run(shutdown));
//! ```
//! (`rt.provision(..)` first: it creates the consumer and the KV buckets.) Production (the
//! `prx-ci-publisher` binary): [`SsmParameterStore`] and [`AwsArtifactChecker`].
//! `prx-ci params` calls [`parameter_report`].

pub mod artifacts;
pub mod config;
pub mod eligibility;
pub mod fence;
pub mod keys;
pub mod mapping;
pub mod ordering;
pub mod report;
pub mod service;
pub mod store;

pub use artifacts::{ArtifactChecker, ArtifactStatus, AwsArtifactChecker, NoArtifactCheck};
pub use config::PublisherConfig;
pub use report::{ParameterReport, SkipRecord, parameter_report};
pub use service::Publisher;
pub use store::{KvParameterStore, ParameterStore, SsmParameterStore, StoreError, StoredParameter};
