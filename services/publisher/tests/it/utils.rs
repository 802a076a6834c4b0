//! Test harness: a real nats-server and moto per test, publisher replicas as real consumers of
//! the `publisher` durable, build completions as the build-watcher publishes them, and a log
//! of every publish event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_trait::async_trait;
use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{
    ArtifactChecker, NoArtifactCheck, ParameterStore, Publisher, PublisherConfig,
    SsmParameterStore, StoreError, StoredParameter,
};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject;
use prx_ci_shared::domain::{Architecture, Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);
pub const REPO: &str = "PRX/app";

/// A runtime on its own connection, with everything provisioned.
pub async fn runtime(nats: &NatsServer) -> Runtime {
    let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
    rt.provision(1).await.expect("provision");
    rt
}

/// Config for tests: short lease and timeouts, fast redelivery.
pub fn test_config() -> PublisherConfig {
    PublisherConfig {
        concurrency: 4,
        claim_lease: Duration::from_millis(800),
        write_timeout: Duration::from_millis(300),
        fence_poll_interval: Duration::from_millis(5),
        retry_backoff: vec![Duration::from_millis(50)],
        ..PublisherConfig::default()
    }
}

/// A running publisher replica (its own NATS connection), stopped on drop.
pub struct Replica {
    registry: Registry,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Replica {
    pub async fn start(
        nats: &NatsServer,
        config: PublisherConfig,
        store: Arc<dyn ParameterStore>,
        artifacts: Arc<dyn ArtifactChecker>,
    ) -> Self {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(nats.connect().await, &mut registry);
        rt.provision(1).await.expect("provision");
        let publisher =
            Publisher::new(rt, config, store, artifacts, &mut registry).expect("publisher");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher.run(shutdown.clone()));
        Self {
            registry,
            shutdown,
            task: Some(task),
        }
    }

    /// The sum of every sample of metric `name` (e.g. `prx_ci_publisher_fence_takeovers_total`).
    pub fn metric(&self, name: &str) -> f64 {
        prx_ci_shared::testing::metrics_text(&self.registry)
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("publisher task").expect("publisher run");
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A 40-hex commit derived from a number (distinct numbers, distinct commits).
pub fn sha(n: u64) -> String {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // The last 16 digits are `n` itself, so the commit is unique per number.
    format!("{:016x}{:08x}{n:016x}", mix(n), mix(!n) as u32)
}

pub fn ecr_value(commit: &str, arch: Architecture) -> String {
    format!("github/prx/app:{commit}-{arch}")
}

/// One build of one push, as the build-watcher reports its completion: the dispatcher's request
/// (`requested`) and the variables the build reported (its environment, which carries the
/// dispatcher's variables, overlaid by what it exported).
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub build_id: String,
    pub push_sequence: u64,
    /// The repository the dispatcher built.
    pub repository: String,
    pub commit: String,
    pub arch: Architecture,
    pub status: v1::BuildStatus,
    pub variables: HashMap<String, String>,
    /// The dispatcher's `PRX_CI_PUBLISH`.
    pub publish: bool,
    /// The pull request built (0: a push of `main`).
    pub pull_request: u64,
    pub fork: bool,
    /// Whether the dispatcher requested the build (false: started in the console).
    pub requested: bool,
    /// The buildspec's primary-architecture marker, as the dispatcher requests it (`None`:
    /// no marker).
    pub primary_marker: Option<Architecture>,
    /// Shadow mode: the original system's build adopted into a shadow request
    /// (`BuildRef.shadowed`, `BuildRequested.shadow`).
    pub shadowed: bool,
}

impl BuildSpec {
    /// A successful push build of `REPO` publishing `APP` (ECR) to `parameters`.
    pub fn ecr(push_sequence: u64, arch: Architecture, parameters: &[&str]) -> Self {
        let commit = sha(push_sequence);
        let mut spec = Self {
            build_id: format!("local:{push_sequence}-{arch}"),
            push_sequence,
            repository: REPO.to_owned(),
            commit: commit.clone(),
            arch,
            status: v1::BuildStatus::Succeeded,
            variables: HashMap::new(),
            publish: true,
            pull_request: 0,
            fork: false,
            requested: true,
            primary_marker: None,
            shadowed: false,
        };
        spec.variables = spec.dispatcher_environment();
        spec.variables.insert(
            "PRX_SPIRE_ECR_PKG_PARAMETERS".to_owned(),
            format!("APP={}", parameters.join(",")),
        );
        spec.variables
            .insert("APP".to_owned(), ecr_value(&commit, arch));
        spec
    }

    /// The variables the dispatcher hands the build.
    pub fn dispatcher_environment(&self) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("PRX_REPO", self.repository.clone()),
            ("PRX_COMMIT", self.commit.clone()),
            ("PRX_BRANCH", self.branch().to_owned()),
            ("PRX_CI_PUBLISH", self.publish.to_string()),
            ("PRX_TARGET_ARCHITECTURE", self.arch.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if self.pull_request != 0 {
            env.insert("PRX_GITHUB_PR".to_owned(), self.pull_request.to_string());
        }
        env
    }

    fn branch(&self) -> &'static str {
        if self.pull_request == 0 {
            "main"
        } else {
            "feature"
        }
    }

    /// The dispatcher built `repository` (the reported environment says so too; `APP`, if it
    /// held the helper's value, now holds that repository's).
    pub fn repo(mut self, repository: &str) -> Self {
        let helper_value = self.variables.get("APP") == Some(&self.value());
        self.repository = repository.to_owned();
        self.variables
            .insert("PRX_REPO".to_owned(), repository.to_owned());
        if helper_value {
            self.variables.insert("APP".to_owned(), self.value());
        }
        self
    }

    /// The buildspec carries the marker of `primary` (the dispatcher's request says so).
    pub fn primary_marker(mut self, primary: Architecture) -> Self {
        self.primary_marker = Some(primary);
        self
    }

    /// A same-repository pull request the dispatcher let publish (`publish`, the opt-in) or not.
    pub fn pull_request(mut self, number: u64, publish: bool) -> Self {
        self.pull_request = number;
        self.publish = publish;
        self.variables.extend(self.dispatcher_environment());
        self
    }

    /// A pull request from a fork (the dispatcher never lets those publish).
    pub fn fork(self, number: u64) -> Self {
        let mut spec = self.pull_request(number, false);
        spec.fork = true;
        spec
    }

    /// The original system's build of a shadow request (shadow mode).
    pub fn shadowed(mut self) -> Self {
        self.shadowed = true;
        self
    }

    /// Started in the console: no request travels with it.
    pub fn unrequested(mut self) -> Self {
        self.requested = false;
        self
    }

    /// The helper's ECR value of this build (its repository, commit and architecture).
    pub fn value(&self) -> String {
        format!(
            "github/{}:{}-{}",
            self.repository.to_ascii_lowercase(),
            self.commit,
            self.arch
        )
    }

    pub fn with_status(mut self, status: v1::BuildStatus) -> Self {
        self.status = status;
        self
    }

    /// The build exported `name` (its value wins over the environment's).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.variables.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.variables.remove(name);
        self
    }

    fn build_ref(&self) -> v1::BuildRef {
        v1::BuildRef {
            build_id: self.build_id.clone(),
            repository: self.repository.clone(),
            commit: self.commit.clone(),
            architecture: self.arch.to_proto() as i32,
            backend: "local".into(),
            shadowed: self.shadowed,
            ..Default::default()
        }
    }

    /// The completion event; `report` distinguishes duplicate reports of one build.
    pub fn envelope(&self, report: &str) -> v1::Envelope {
        let repository = RepoName::parse(&self.repository).unwrap();
        let key = if self.pull_request == 0 {
            OrderingKey::branch(repository, Branch::new("main").unwrap())
        } else {
            OrderingKey::pull_request(repository, self.pull_request)
        };
        let requested = self.requested.then(|| v1::BuildRequested {
            build: Some(self.build_ref()),
            environment: self.dispatcher_environment(),
            event_name: if self.pull_request == 0 {
                "push".into()
            } else {
                "pull_request".into()
            },
            fork: self.fork,
            branch: self.branch().to_owned(),
            pull_request: self.pull_request,
            primary_architecture: self.primary_marker.map_or(0, |a| a.to_proto() as i32),
            shadow: self.shadowed,
            ..Default::default()
        });
        Chain {
            correlation_id: format!("delivery-{}", self.push_sequence),
            causation_id: format!("requested-{}", self.build_id),
            ..Chain::default()
        }
        .with_ordering(&key, self.push_sequence)
        .envelope(
            format!("completed-{}-{report}", self.build_id),
            Payload::BuildCompleted(v1::BuildCompleted {
                build: Some(self.build_ref()),
                status: self.status as i32,
                variables: self.variables.clone(),
                requested,
                ..Default::default()
            }),
        )
    }
}

/// Every publish event stored so far.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<v1::Envelope>>>,
    _task: Arc<JoinHandle<()>>,
}

impl EventLog {
    pub async fn start(rt: &Runtime) -> Self {
        let stream = rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: "prx.publish.>".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let Ok(env) = v1::Envelope::decode(message.payload.clone()) {
                    sink.lock().unwrap().push(env);
                }
            }
        });
        Self {
            events,
            _task: Arc::new(task),
        }
    }

    pub fn all(&self) -> Vec<v1::Envelope> {
        self.events.lock().unwrap().clone()
    }

    pub fn applied(&self) -> Vec<v1::PublishApplied> {
        self.all()
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::PublishApplied(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn skipped(&self) -> Vec<v1::PublishSkipped> {
        self.all()
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::PublishSkipped(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Outcome events (applied or skipped) of `build_id`.
    pub fn outcomes_of(&self, build_id: &str) -> usize {
        self.all()
            .iter()
            .filter(|e| match &e.payload {
                Some(Payload::PublishApplied(p)) => {
                    p.build.as_ref().is_some_and(|b| b.build_id == build_id)
                }
                Some(Payload::PublishSkipped(p)) => {
                    p.build.as_ref().is_some_and(|b| b.build_id == build_id)
                }
                _ => false,
            })
            .count()
    }
}

/// Waits until the publisher durable has nothing pending and every listed build has at least
/// `min` outcome events each.
pub async fn settle(rt: &Runtime, log: &EventLog, builds: &[(String, usize)]) {
    wait_until(WAIT, "the publisher to handle every completion", || async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = rt
            .js
            .get_stream(subject::EVENTS_STREAM)
            .await
            .ok()?
            .get_consumer("publisher")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        let idle = info.num_pending == 0 && info.num_ack_pending == 0;
        let done = builds
            .iter()
            .all(|(build, min)| log.outcomes_of(build) >= *min);
        (idle && done).then_some(())
    })
    .await;
}

/// A fault to inject into one write of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The store refuses (throttled past its retries): nothing written.
    Refused,
    /// The write lands, then the answer is lost (a crash right after writing).
    AnswerLostAfterWrite,
    /// The replica dies before the write leaves (the claim stays behind).
    CrashedBeforeWrite,
    /// The write hangs for 2 s before it would leave (a stalled replica or connection).
    Stalled,
}

/// Wraps a store and injects [`Fault`]s, each once, into writes of the given values.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ParameterStore>,
    faults: Mutex<HashMap<(String, String), Fault>>,
    /// Stalled writes dropped by their caller before they were sent.
    pub stalls_abandoned: AtomicUsize,
    /// Stalled writes that went on to the store.
    pub stalls_sent: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ParameterStore>) -> Self {
        Self {
            inner,
            faults: Mutex::new(HashMap::new()),
            stalls_abandoned: AtomicUsize::new(0),
            stalls_sent: AtomicUsize::new(0),
        }
    }

    pub fn inject(&self, name: &str, value: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .insert((name.to_owned(), value.to_owned()), fault);
    }

    pub fn faults_left(&self) -> usize {
        self.faults.lock().unwrap().len()
    }
}

#[async_trait]
impl ParameterStore for FaultyStore {
    async fn put(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        let fault = self
            .faults
            .lock()
            .unwrap()
            .remove(&(name.to_owned(), value.to_owned()));
        match fault {
            Some(Fault::Refused) => Err(StoreError::NotWritten {
                message: "injected: throttled".into(),
                retryable: true,
            }),
            Some(Fault::CrashedBeforeWrite) => Err(StoreError::Unknown {
                message: "injected: crashed before the write".into(),
            }),
            Some(Fault::AnswerLostAfterWrite) => {
                self.inner.put(name, value).await?;
                Err(StoreError::Unknown {
                    message: "injected: crashed after the write".into(),
                })
            }
            Some(Fault::Stalled) => {
                struct Abandoned<'a>(&'a AtomicUsize, bool);
                impl Drop for Abandoned<'_> {
                    fn drop(&mut self) {
                        if self.1 {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                let mut guard = Abandoned(&self.stalls_abandoned, true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                guard.1 = false;
                self.stalls_sent.fetch_add(1, Ordering::SeqCst);
                self.inner.put(name, value).await
            }
            None => self.inner.put(name, value).await,
        }
    }

    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError> {
        self.inner.get(name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        self.inner.list(prefix).await
    }
}

/// The full SSM history of a parameter (values in version order); empty if it never existed.
pub async fn ssm_history(client: &aws_sdk_ssm::Client, name: &str) -> Vec<String> {
    let mut versions = Vec::new();
    let mut pages = client
        .get_parameter_history()
        .name(name)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => versions.extend(
                page.parameters()
                    .iter()
                    .map(|p| (p.version(), p.value().unwrap_or_default().to_owned())),
            ),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                return Vec::new();
            }
            Err(err) => panic!("GetParameterHistory {name}: {err:?}"),
        }
    }
    versions.sort();
    versions.into_iter().map(|(_, v)| v).collect()
}

/// The skips of `build` among `skipped`.
pub fn skips_of<'a>(
    skipped: &'a [v1::PublishSkipped],
    build: &BuildSpec,
) -> Vec<&'a v1::PublishSkipped> {
    skipped
        .iter()
        .filter(|s| {
            s.build
                .as_ref()
                .is_some_and(|b| b.build_id == build.build_id)
        })
        .collect()
}

/// One publisher replica writing to SSM in the emulator (no artifact check), with the event log
/// of the run. Bind `guard` for as long as the test runs: it holds the servers and the replica.
pub struct SsmPublisher {
    pub rt: Runtime,
    pub log: EventLog,
    pub ssm: Arc<SsmParameterStore>,
    pub client: aws_sdk_ssm::Client,
    pub guard: (NatsServer, MotoServer, Replica),
}

impl SsmPublisher {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: PublisherConfig) -> Self {
        Self::start_checking(config, |_| Arc::new(NoArtifactCheck)).await
    }

    /// Like [`Self::start_with`], with the artifact checker `artifacts` makes from the
    /// emulator's SDK config.
    pub async fn start_checking(
        config: PublisherConfig,
        artifacts: impl FnOnce(&aws_config::SdkConfig) -> Arc<dyn ArtifactChecker>,
    ) -> Self {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let rt = runtime(&nats).await;
        let log = EventLog::start(&rt).await;
        let ssm = Arc::new(SsmParameterStore::new(&moto.sdk_config()));
        let client = ssm.client().clone();
        warm_up(&client).await;
        let checker = artifacts(&moto.sdk_config());
        let replica = Replica::start(&nats, config, ssm.clone(), checker).await;
        Self {
            rt,
            log,
            ssm,
            client,
            guard: (nats, moto, replica),
        }
    }
}

/// Makes moto load its SSM backend (the first call is slow) so test timeouts measure the
/// publisher, not the emulator's start.
pub async fn warm_up(client: &aws_sdk_ssm::Client) {
    client
        .put_parameter()
        .name("/warm-up")
        .value("x")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("moto SSM answers");
}

/// Two publisher replicas on one durable, writing to SSM in the emulator through a
/// fault-injecting store, with the event log of the run.
pub struct SsmReplicas {
    pub nats: NatsServer,
    pub moto: MotoServer,
    pub rt: Runtime,
    pub log: EventLog,
    pub client: aws_sdk_ssm::Client,
    pub store: Arc<FaultyStore>,
    pub replicas: [Replica; 2],
}

impl SsmReplicas {
    pub async fn start() -> Self {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let rt = runtime(&nats).await;
        let log = EventLog::start(&rt).await;
        let ssm = SsmParameterStore::new(&moto.sdk_config());
        let client = ssm.client().clone();
        warm_up(&client).await;
        let store = Arc::new(FaultyStore::new(Arc::new(ssm)));
        let replica = || {
            Replica::start(
                &nats,
                test_config(),
                store.clone(),
                Arc::new(NoArtifactCheck),
            )
        };
        let replicas = [replica().await, replica().await];
        Self {
            nats,
            moto,
            rt,
            log,
            client,
            store,
            replicas,
        }
    }
}
