//! NATS connection and idempotent provisioning of streams, durable consumers and KV buckets
//! from the definitions in `deploy/nats/` (embedded at build time, so a binary always
//! provisions what it was built against).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use crate::config::NatsConfig;

// STREAM_FILES, CONSUMER_FILES, KV_FILES: (file name, contents) of every `*.json` in
// `deploy/nats/{streams,consumers,kv}/`, embedded by build.rs.
include!(concat!(env!("OUT_DIR"), "/definitions.rs"));

/// Server settings every nats-server of this system needs (a config file fragment):
/// GitHub webhooks reach 25 MB, above the server's 1 MB default `max_payload`.
pub const SERVER_CONFIG: &str =
    "# Written by prx-ci: GitHub payloads reach 25 MB.\nmax_payload: 33554432\n";

/// A durable pull consumer on a stream.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerDefinition {
    pub stream: String,
    pub config: consumer::pull::Config,
}

impl ConsumerDefinition {
    pub fn durable_name(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }

    /// The configuration the server is given: the definition's without its `backoff`. The
    /// `backoff` is the consumer loop's schedule of retries (each failure is nak'd with its
    /// delay, [`crate::bus::consume::ConsumerSettings`]); given to the server it would also
    /// replace `ack_wait` by its first entry (nats-server does so), and a message waiting or
    /// being handled for longer than that, a second, would be delivered again.
    pub fn server_config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            backoff: Vec::new(),
            ..self.config.clone()
        }
    }
}

/// A KV bucket (`deploy/nats/kv/<bucket>.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvDefinition {
    pub bucket: String,
    #[serde(default)]
    pub description: String,
    /// Values kept per key (1 = latest only).
    #[serde(default = "one")]
    pub history: i64,
    /// Seconds a value lives (0 = forever).
    #[serde(default)]
    pub max_age_secs: u64,
}

fn one() -> i64 {
    1
}

/// Everything `deploy/nats/` defines.
#[derive(Debug, Clone)]
pub struct Definitions {
    pub streams: Vec<stream::Config>,
    pub consumers: Vec<ConsumerDefinition>,
    pub kv: Vec<KvDefinition>,
}

impl Definitions {
    /// The embedded definitions.
    pub fn embedded() -> anyhow::Result<Self> {
        let streams = STREAM_FILES
            .iter()
            .map(|(file, text)| {
                serde_json::from_str(text).with_context(|| format!("cannot parse stream {file}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let consumers = CONSUMER_FILES
            .iter()
            .map(|(file, text)| {
                serde_json::from_str(text).with_context(|| format!("cannot parse consumer {file}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let kv = KV_FILES
            .iter()
            .map(|(file, text)| {
                serde_json::from_str(text).with_context(|| format!("cannot parse KV bucket {file}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            streams,
            consumers,
            kv,
        })
    }

    /// The consumer named `durable`.
    pub fn consumer(&self, durable: &str) -> anyhow::Result<&ConsumerDefinition> {
        self.consumers
            .iter()
            .find(|c| c.durable_name() == durable)
            .with_context(|| format!("no consumer {durable:?} in deploy/nats/consumers"))
    }
}

/// Connects to NATS. Fails (with the URL named) if no server answers within the timeout.
pub async fn connect(config: &NatsConfig, role: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("{}-{role}", config.client_name))
        .connection_timeout(config.connect_timeout);
    if let Some(creds) = &config.credentials_file {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", creds.display()))?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    // `url` may list several servers, comma-separated (a cluster).
    let urls: Vec<&str> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    options
        .connect(urls.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.url))
}

/// Creates or updates every stream, consumer and KV bucket. Safe to run from every replica at
/// every start: existing objects are updated in place, nothing is deleted.
pub async fn provision(
    js: &jetstream::Context,
    definitions: &Definitions,
    replicas: usize,
) -> anyhow::Result<()> {
    for stream in &definitions.streams {
        let mut config = stream.clone();
        config.num_replicas = replicas;
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("cannot provision stream {}", stream.name))?;
    }
    for definition in &definitions.consumers {
        let name = definition.durable_name();
        let stream = js
            .get_stream(&definition.stream)
            .await
            .with_context(|| format!("cannot open stream {}", definition.stream))?;
        let exists = stream.consumer_info(name).await.is_ok();
        if exists {
            js.update_consumer_on_stream(definition.server_config(), &definition.stream)
                .await
                .with_context(|| format!("cannot update consumer {name}"))?;
        } else {
            js.create_consumer_on_stream(definition.server_config(), &definition.stream)
                .await
                .with_context(|| format!("cannot create consumer {name}"))?;
        }
    }
    for bucket in &definitions.kv {
        js.create_or_update_key_value(kv::Config {
            bucket: bucket.bucket.clone(),
            description: bucket.description.clone(),
            history: bucket.history,
            max_age: Duration::from_secs(bucket.max_age_secs),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot provision KV bucket {}", bucket.bucket))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::subject;

    #[test]
    fn embedded_definitions_parse_and_cover_every_stream() {
        let defs = Definitions::embedded().unwrap();
        let names: Vec<_> = defs.streams.iter().map(|s| s.name.as_str()).collect();
        for stream in subject::ALL_STREAMS {
            assert!(names.contains(&stream), "{stream} not defined");
        }
        for stream in &defs.streams {
            assert_eq!(stream.storage, stream::StorageType::File, "{}", stream.name);
            assert_eq!(
                stream.duplicate_window,
                Duration::from_secs(72 * 3600),
                "{}: GitHub redelivers for 3 days",
                stream.name
            );
        }
        for consumer in &defs.consumers {
            assert!(names.contains(&consumer.stream.as_str()));
            assert_eq!(consumer.config.ack_policy, consumer::AckPolicy::Explicit);
            assert!(consumer.config.max_deliver > 0, "bounded redelivery");
            assert!(consumer.config.backoff.len() as i64 <= consumer.config.max_deliver);
        }
        defs.consumer("dispatcher").unwrap();
    }
}
