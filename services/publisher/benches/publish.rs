//! Publisher benchmark: the ordering fence's own overhead per publish (p50/p99, KV reads and
//! compare-and-sets against a real nats-server, with a store that does nothing), and
//! publishes per second end to end (build completion in JetStream -> fence -> SSM in moto ->
//! PublishApplied stored). Run: `cargo bench -p prx-ci-publisher --bench publish`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::fence::{Position, Publication};
use prx_ci_publisher::fence_store::{FenceSettings, KvFence};
use prx_ci_publisher::metrics::FenceMetrics;
use prx_ci_publisher::{
    KvParameterStore, NoArtifactCheck, ParameterStore, Publisher, PublisherConfig,
    SsmParameterStore, StoreError, StoredParameter,
};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime, bus::subject};

/// Publications timed for the fence overhead.
const FENCE_SAMPLES: u64 = 2_000;
/// Build completions pushed through the whole service.
const END_TO_END: u64 = 400;

/// A store that writes nothing: what remains is the fence's own cost.
#[derive(Debug)]
struct NullStore;

#[async_trait]
impl ParameterStore for NullStore {
    async fn put(&self, _name: &str, _value: &str) -> Result<i64, StoreError> {
        Ok(1)
    }
    async fn get(&self, _name: &str) -> Result<Option<StoredParameter>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        Ok(Vec::new())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: n={} p50={:.2?} p90={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

fn publication(seq: u64) -> Publication {
    Publication {
        position: Position::new(seq, true),
        value: format!("github/prx/app:{seq:040x}-x86_64"),
        commit: format!("{seq:040x}"),
        build_id: format!("bench:{seq}"),
        ordering_key: "PRX/app@main".into(),
        architecture: "x86_64".into(),
    }
}

async fn fence_overhead(rt: &Runtime) {
    let fence = KvFence::open(
        &rt.js,
        FenceSettings {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
        },
        FenceMetrics::new(),
    )
    .await
    .unwrap();
    // A new parameter per publish (first write: create) ...
    let mut fresh = Vec::new();
    for seq in 1..=FENCE_SAMPLES {
        let name = format!("/prx/stag/Spire/Fresh{seq}/pkg/docker-image-tag");
        let started = Instant::now();
        fence
            .publish(&name, &publication(seq), &NullStore)
            .await
            .unwrap();
        fresh.push(started.elapsed());
    }
    summary(
        "fence overhead, new parameter (read, create claim, re-read, mark)",
        fresh,
    );
    // ... and one parameter, each publish from a newer push (update path).
    let mut newer = Vec::new();
    for seq in 1..=FENCE_SAMPLES {
        let started = Instant::now();
        fence
            .publish(
                "/prx/stag/Spire/Hot/pkg/docker-image-tag",
                &publication(seq),
                &NullStore,
            )
            .await
            .unwrap();
        newer.push(started.elapsed());
    }
    summary("fence overhead, newer push on one parameter", newer);
    // A stale publish is decided by one read.
    let mut stale = Vec::new();
    for seq in 1..=FENCE_SAMPLES / 4 {
        let started = Instant::now();
        fence
            .publish(
                "/prx/stag/Spire/Hot/pkg/docker-image-tag",
                &publication(seq),
                &NullStore,
            )
            .await
            .unwrap();
        stale.push(started.elapsed());
    }
    summary("fence overhead, superseded publish (skip)", stale);
}

fn completion(seq: u64) -> v1::Envelope {
    let commit = format!("{seq:040x}");
    let parameter = format!("/prx/stag/Spire/E2e{seq}/pkg/docker-image-tag");
    let variables: HashMap<String, String> = [
        ("PRX_REPO", "PRX/app".to_owned()),
        ("PRX_COMMIT", commit.clone()),
        ("PRX_CI_PUBLISH", "true".to_owned()),
        ("PRX_TARGET_ARCHITECTURE", "x86_64".to_owned()),
        ("PRX_SPIRE_ECR_PKG_PARAMETERS", format!("APP={parameter}")),
        ("APP", format!("github/prx/app:{commit}-x86_64")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let key = OrderingKey::branch(
        RepoName::parse("PRX/app").unwrap(),
        Branch::new("main").unwrap(),
    );
    Chain::default().with_ordering(&key, seq).envelope(
        format!("bench-completed-{seq}"),
        Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(v1::BuildRef {
                build_id: format!("bench:{seq}"),
                repository: "PRX/app".into(),
                commit,
                architecture: v1::Architecture::X8664 as i32,
                ..Default::default()
            }),
            status: v1::BuildStatus::Succeeded as i32,
            variables,
            ..Default::default()
        }),
    )
}

async fn end_to_end(
    nats: &NatsServer,
    label: &str,
    store: Arc<dyn ParameterStore>,
    replicas: usize,
    first_seq: u64,
) {
    let mut registry = Registry::default();
    let rt = Runtime::from_client(nats.connect().await, &mut registry);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..replicas {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(nats.connect().await, &mut registry);
        let publisher = Publisher::new(
            rt,
            PublisherConfig::default(),
            store.clone(),
            Arc::new(NoArtifactCheck),
            &mut registry,
        )
        .unwrap();
        tasks.push(tokio::spawn(publisher.run(shutdown.clone())));
    }
    let started = Instant::now();
    for seq in first_seq..first_seq + END_TO_END {
        rt.publisher.publish(&completion(seq)).await.unwrap();
    }
    wait_until(
        Duration::from_secs(300),
        "every completion published",
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = rt
                .js
                .get_stream(subject::EVENTS_STREAM)
                .await
                .ok()?
                .get_consumer("publisher")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    println!(
        "end to end, {label}, {replicas} replica(s) x concurrency 8: {END_TO_END} publishes in {elapsed:.2?} = {:.0} publishes/s",
        END_TO_END as f64 / elapsed.as_secs_f64()
    );
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        fence_overhead(&rt).await;
        let ssm = SsmParameterStore::new(&moto.sdk_config());
        ssm.put("/warm-up", "x").await.unwrap();
        end_to_end(&nats, "SSM in moto", Arc::new(ssm.clone()), 1, 1_000_000).await;
        end_to_end(&nats, "SSM in moto", Arc::new(ssm), 2, 2_000_000).await;
        let kv = KvParameterStore::new(&rt.js).await.unwrap();
        end_to_end(&nats, "KV store (local mode)", Arc::new(kv), 1, 3_000_000).await;
    });
}
