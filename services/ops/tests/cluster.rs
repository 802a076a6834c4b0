//! Resilience of a three-node JetStream cluster (the checked-in `deploy/nats/cluster` configs on
//! free loopback ports): while webhooks flow, the node leading `PRX_WEBHOOKS` is killed and
//! later restarted; every acknowledged event is stored exactly once and reaches the consumer's
//! handler.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use prometheus_client::registry::Registry;
use prx_ci_ops::event_log::{End, Start, read_range};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::nats::ConsumerDefinition;
use prx_ci_shared::bus::subject::WEBHOOKS_STREAM;
use prx_ci_shared::retry::{Backoff, Retry, retry};
use prx_ci_shared::run_consumer;
use prx_ci_shared::testing::{free_port, tool_path, wait_until, workspace_root};
use prx_ci_shared::{CancellationToken, Delivery, EventPublisher, Handler, HandlerError, Runtime};
use tempfile::TempDir;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(60);
/// Events published before, during and after the outage.
const PER_PHASE: usize = 100;
/// Pause between attempts of a publish the cluster did not acknowledge.
const PUBLISH_RETRY: Duration = Duration::from_millis(200);

struct Node {
    name: String,
    conf: PathBuf,
    client_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(tool_path("nats-server"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the checked-in node configs with free ports and a temporary store.
fn cluster(dir: &Path) -> Vec<Node> {
    let mut mapping = Vec::new();
    for base in [4222u16, 6222, 8222] {
        for i in 0..3 {
            mapping.push((
                format!("127.0.0.1:{}", base + i),
                format!("127.0.0.1:{}", free_port()),
            ));
        }
    }
    (1..=3)
        .map(|i| {
            let name = format!("n{i}");
            let mut text = std::fs::read_to_string(
                workspace_root().join(format!("deploy/nats/cluster/{name}.conf")),
            )
            .unwrap();
            for (from, to) in &mapping {
                text = text.replace(from, to);
            }
            let store = dir.join(&name);
            text = text.replace(&format!("/data/jetstream/{name}"), store.to_str().unwrap());
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, text).unwrap();
            let client = &mapping[i - 1].1;
            Node {
                client_port: client.rsplit(':').next().unwrap().parse().unwrap(),
                log: dir.join(format!("{name}.log")),
                name,
                conf,
                child: None,
            }
        })
        .collect()
}

/// Counts what it handled per event id.
#[derive(Default)]
struct Counter {
    handled: Mutex<HashMap<String, u32>>,
}

impl Handler for Counter {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        *self
            .handled
            .lock()
            .await
            .entry(delivery.envelope.event_id)
            .or_default() += 1;
        Ok(())
    }
}

fn webhook(n: usize) -> v1::Envelope {
    let id = format!("cluster-delivery-{n}");
    Chain::starting(&id).envelope(
        id.clone(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: id,
            event_name: "push".into(),
            repository: "PRX/app".into(),
            payload: format!(r#"{{"ref":"refs/heads/main","n":{n}}}"#)
                .into_bytes()
                .into(),
            ..Default::default()
        }),
    )
}

/// Publishes until the cluster acknowledges (a lost ack is retried with the same id, which the
/// duplicate window collapses), through the project's one retry helper.
async fn publish_acked(publisher: &EventPublisher, envelope: &v1::Envelope) -> u64 {
    let policy = Backoff {
        initial: PUBLISH_RETRY,
        max: PUBLISH_RETRY,
        max_attempts: 300,
    };
    retry(&policy, |_| publisher.publish(envelope), |_| Retry::Backoff)
        .await
        .unwrap_or_else(|err| panic!("never acknowledged: {err}"))
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dies_and_returns_while_webhooks_flow_and_nothing_is_lost_or_doubled() {
    let dir = TempDir::new().unwrap();
    let mut nodes = cluster(dir.path());
    for node in &mut nodes {
        node.start();
    }
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let rt = wait_until(WAIT, "the cluster to elect a JetStream meta leader", || {
        let url = urls.clone();
        async move {
            let client = async_nats::connect(url.as_slice())
                .await
                .map_err(|e| eprintln!("connect: {e}"))
                .ok()?;
            let rt = Runtime::from_client(client, &mut Registry::default());
            rt.js
                .query_account()
                .await
                .map_err(|e| eprintln!("account: {e}"))
                .ok()?;
            rt.provision(3)
                .await
                .map_err(|e| eprintln!("provision: {e:#}"))
                .ok()?;
            Some(rt)
        }
    })
    .await;
    let info = rt
        .js
        .get_stream(WEBHOOKS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3, "streams are R3 in the cluster");

    let definition = ConsumerDefinition {
        stream: WEBHOOKS_STREAM.into(),
        config: consumer::pull::Config {
            durable_name: Some("cluster-test".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: "prx.webhook.>".into(),
            max_deliver: 100,
            ack_wait: Duration::from_secs(5),
            num_replicas: 3,
            ..Default::default()
        },
    };
    rt.js
        .create_consumer_on_stream(definition.config.clone(), WEBHOOKS_STREAM)
        .await
        .unwrap();
    let mut settings = ConsumerSettings::from_definition(&definition).with_concurrency(4);
    settings.backoff = vec![Duration::from_millis(200)];
    let handler = Arc::new(Counter::default());
    let shutdown = CancellationToken::new();
    let consumer_loop = tokio::spawn(run_consumer(
        rt.js.clone(),
        rt.publisher.clone(),
        settings,
        handler.clone(),
        rt.consumer_metrics.clone(),
        shutdown.clone(),
    ));
    let publisher = rt
        .publisher
        .clone()
        .with_ack_timeout(Duration::from_secs(2));

    let mut acked: HashMap<String, u64> = HashMap::new();
    for n in 0..PER_PHASE {
        let e = webhook(n);
        acked.insert(e.event_id.clone(), publish_acked(&publisher, &e).await);
    }

    // Kill the node leading the webhook stream.
    let leader = rt
        .js
        .get_stream(WEBHOOKS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim = nodes.iter().position(|n| n.name == leader).unwrap();
    nodes[victim].kill();
    for n in PER_PHASE..2 * PER_PHASE {
        let e = webhook(n);
        acked.insert(e.event_id.clone(), publish_acked(&publisher, &e).await);
    }

    nodes[victim].start();
    for n in 2 * PER_PHASE..3 * PER_PHASE {
        let e = webhook(n);
        acked.insert(e.event_id.clone(), publish_acked(&publisher, &e).await);
    }
    // The restarted node catches up: all three replicas current again.
    wait_until(WAIT, "the restarted node to catch up", || {
        let js = rt.js.clone();
        async move {
            let mut stream = js.get_stream(WEBHOOKS_STREAM).await.ok()?;
            let cluster = stream.info().await.ok()?.cluster.clone()?;
            let replicas = cluster.replicas;
            (cluster.leader.is_some()
                && replicas.len() == 2
                && replicas.iter().all(|r| r.current && !r.offline))
            .then_some(())
        }
    })
    .await;

    let expected: HashSet<String> = acked.keys().cloned().collect();
    assert_eq!(expected.len(), 3 * PER_PHASE);
    wait_until(
        WAIT,
        "every acknowledged webhook to reach the handler",
        || {
            let handler = handler.clone();
            let expected = expected.clone();
            async move {
                let handled = handler.handled.lock().await;
                expected
                    .iter()
                    .all(|id| handled.contains_key(id))
                    .then_some(())
            }
        },
    )
    .await;
    shutdown.cancel();
    consumer_loop.await.unwrap().unwrap();

    // Stored exactly once each, at the sequence the ack named.
    let (stored, count) = read_range(
        &rt.js,
        WEBHOOKS_STREAM,
        &[],
        Start::First,
        End::Now,
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(count as usize, 3 * PER_PHASE, "no duplicates, nothing lost");
    let mut seen = HashSet::new();
    for message in &stored {
        let id = message.envelope().unwrap().event_id;
        assert!(seen.insert(id.clone()), "{id} stored twice");
        assert_eq!(acked[&id], message.sequence, "{id} is where its ack said");
    }
    let handled = handler.handled.lock().await;
    assert_eq!(
        handled.keys().cloned().collect::<HashSet<_>>(),
        expected,
        "the handler saw exactly the acknowledged events"
    );
    let redelivered = handled.values().filter(|n| **n > 1).count();
    println!(
        "killed {leader}; {} events, {redelivered} redelivered once more (idempotent handlers)",
        expected.len()
    );
}
