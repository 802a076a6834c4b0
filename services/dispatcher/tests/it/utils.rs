//! Test harness: a real nats-server, webhooks stored like ingress stores them, the events the
//! dispatcher wrote, the shared fake GitHub and a recording fake build backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_dispatcher::{BuildspecSource, Dispatcher, DispatcherConfig, GitHubBuildspecSource};
use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::nats::Definitions;
use prx_ci_shared::bus::subject;
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::retry::Backoff;
pub use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub};
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime, Stored};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);
pub const REPO: &str = "PRX/example-app";

pub fn recorded(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/github")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A real nats-server with everything provisioned.
pub struct Nats {
    /// Kept alive for the test's duration.
    pub _server: NatsServer,
    pub rt: Runtime,
}

impl Nats {
    pub async fn start() -> Self {
        let server = NatsServer::start().await;
        let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        Self {
            _server: server,
            rt,
        }
    }

    /// Stores a webhook like ingress does (event id = delivery id); returns its envelope and
    /// where it was stored.
    pub async fn webhook(
        &self,
        event: &str,
        payload: &Value,
        delivery: &str,
    ) -> (Envelope, Stored) {
        self.webhook_with_id(event, payload, delivery, delivery)
            .await
    }

    pub async fn webhook_with_id(
        &self,
        event: &str,
        payload: &Value,
        delivery: &str,
        event_id: &str,
    ) -> (Envelope, Stored) {
        let envelope = Chain::starting(delivery).envelope(
            event_id.to_owned(),
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery.to_owned(),
                event_name: event.to_owned(),
                payload: serde_json::to_vec(payload).unwrap().into(),
                repository: payload["repository"]["full_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                origin: v1::Origin::Github as i32,
                ..Default::default()
            }),
        );
        let stored = self.rt.publisher.publish(&envelope).await.unwrap();
        (envelope, stored)
    }

    /// Every envelope in a stream, in order.
    pub async fn stream(&self, name: &str) -> Vec<Envelope> {
        let Ok(mut stream) = self.rt.js.get_stream(name).await else {
            return vec![];
        };
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = vec![];
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                out.push(Envelope::decode(raw.payload).unwrap());
            }
        }
        out
    }

    pub async fn events(&self) -> Vec<Envelope> {
        self.stream(subject::EVENTS_STREAM).await
    }

    pub async fn requested(&self) -> Vec<(Envelope, v1::BuildRequested)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload.clone() {
                Some(Payload::BuildRequested(r)) => Some((e, r)),
                _ => None,
            })
            .collect()
    }

    pub async fn skipped(&self) -> Vec<(Envelope, v1::BuildSkipped)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload.clone() {
                Some(Payload::BuildSkipped(r)) => Some((e, r)),
                _ => None,
            })
            .collect()
    }

    pub async fn cancelled(&self) -> Vec<(Envelope, v1::BuildCancelled)> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e.payload.clone() {
                Some(Payload::BuildCancelled(r)) => Some((e, r)),
                _ => None,
            })
            .collect()
    }

    pub async fn parked(&self) -> Vec<v1::MessageParked> {
        self.stream(subject::PARKED_STREAM)
            .await
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::MessageParked(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Waits until at least `n` events satisfy `pick`, returns them.
    pub async fn wait_for<T, F>(&self, what: &str, n: usize, pick: F) -> Vec<T>
    where
        F: Fn(&Envelope) -> Option<T>,
    {
        wait_until(WAIT, what, || async {
            let found: Vec<T> = self.events().await.iter().filter_map(&pick).collect();
            (found.len() >= n).then_some(found)
        })
        .await
    }

    /// Forgets the dispatcher consumer's progress: every webhook is delivered again (a replay,
    /// or the redelivery after a crash before the ack). Stop the dispatcher first.
    pub async fn reset_consumer(&self) {
        let stream = self
            .rt
            .js
            .get_stream(subject::WEBHOOKS_STREAM)
            .await
            .unwrap();
        stream.delete_consumer("dispatcher").await.unwrap();
        self.rt.provision(1).await.unwrap();
    }

    /// How far the dispatcher consumer got (acknowledged stream sequence).
    pub async fn acked_up_to(&self) -> u64 {
        let stream = self
            .rt
            .js
            .get_stream(subject::WEBHOOKS_STREAM)
            .await
            .unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("dispatcher").await.unwrap();
        consumer.info().await.unwrap().ack_floor.stream_sequence
    }
}

pub fn is_requested(e: &Envelope) -> Option<v1::BuildRequested> {
    match &e.payload {
        Some(Payload::BuildRequested(r)) => Some(r.clone()),
        _ => None,
    }
}

pub fn is_skipped(e: &Envelope) -> Option<v1::BuildSkipped> {
    match &e.payload {
        Some(Payload::BuildSkipped(r)) => Some(r.clone()),
        _ => None,
    }
}

pub fn is_cancelled(e: &Envelope) -> Option<v1::BuildCancelled> {
    match &e.payload {
        Some(Payload::BuildCancelled(r)) => Some(r.clone()),
        _ => None,
    }
}

/// The shared fake GitHub, anonymous (as `[github]` without credentials).
pub async fn fake_github() -> FakeGitHub {
    FakeGitHub::start(FakeAuth::Anonymous).await
}

/// Serves `text` as the buildspec of `repo` at `sha`.
pub fn buildspec(github: &FakeGitHub, repo: &str, sha: &str, text: &str) {
    github.set_file(repo, sha, "buildspec.yml", text);
}

/// Requests the fake GitHub received that name `sha` (contents reads ask `?ref=<sha>`).
pub fn requests_for(github: &FakeGitHub, sha: &str) -> usize {
    github
        .requests()
        .iter()
        .filter(|r| r.query.as_deref().is_some_and(|q| q.contains(sha)))
        .count()
}

/// The buildspec source the production binary uses, reading from `api_url` (the fake, or a
/// fault proxy in front of it), with short client backoff.
pub fn source(api_url: &str) -> Arc<dyn BuildspecSource> {
    source_with(GitHubConfig {
        api_url: api_url.to_owned(),
        ..GitHubConfig::default()
    })
}

/// [`source`] with its own client configuration.
pub fn source_with(config: GitHubConfig) -> Arc<dyn BuildspecSource> {
    let client = GitHubClient::new(config).unwrap().with_backoff(Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: 5,
    });
    Arc::new(GitHubBuildspecSource::new(client))
}

/// A build the fake backend started.
#[derive(Debug, Clone)]
pub struct FakeBuild {
    pub request: StartBuild,
    pub build_id: String,
    pub finished: bool,
}

/// Records starts and stops; idempotent on the request id like CodeBuild's token.
#[derive(Debug, Default)]
pub struct FakeBackend {
    pub builds: Mutex<Vec<FakeBuild>>,
    pub stops: Mutex<Vec<(String, StopOutcome)>>,
    pub start_calls: AtomicU64,
    /// Starts of this commit wait until the gate opens.
    pub gate: Mutex<Option<(String, Arc<tokio::sync::Notify>)>>,
}

impl FakeBackend {
    pub async fn started(&self) -> Vec<FakeBuild> {
        self.builds.lock().await.clone()
    }

    pub async fn stopped(&self) -> Vec<(String, StopOutcome)> {
        self.stops.lock().await.clone()
    }
}

#[async_trait::async_trait]
impl BuildBackend for FakeBackend {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        self.start_calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.lock().await.clone();
        if let Some((commit, notify)) = gate
            && commit == request.commit.as_str()
        {
            notify.notified().await;
        }
        let mut builds = self.builds.lock().await;
        let build_id = match builds
            .iter()
            .find(|b| b.request.request_id == request.request_id)
        {
            Some(existing) => existing.build_id.clone(),
            None => {
                let id = format!("fake:{}", builds.len() + 1);
                builds.push(FakeBuild {
                    request,
                    build_id: id.clone(),
                    finished: false,
                });
                id
            }
        };
        Ok(StartedBuild {
            log_url: format!("http://fake/{build_id}"),
            build_id,
            backend: "fake".into(),
            project: "fake-project".into(),
            region: String::new(),
        })
    }

    async fn find(
        &self,
        request: &StartBuild,
        _since: time::OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError> {
        let builds = self.builds.lock().await;
        Ok(builds
            .iter()
            .find(|b| b.request.request_id == request.request_id)
            .map(|b| StartedBuild {
                log_url: format!("http://fake/{}", b.build_id),
                build_id: b.build_id.clone(),
                backend: "fake".into(),
                project: "fake-project".into(),
                region: String::new(),
            }))
    }

    async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError> {
        let mut builds = self.builds.lock().await;
        let outcome = match builds.iter_mut().find(|b| b.build_id == build_id) {
            Some(build) if !build.finished => {
                build.finished = true;
                StopOutcome::Stopped
            }
            _ => StopOutcome::AlreadyFinished,
        };
        self.stops.lock().await.push((build_id.to_owned(), outcome));
        Ok(outcome)
    }
}

/// A running dispatcher.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Consumer settings of the tests: fast redelivery, few deliveries.
pub fn fast_settings(config: &DispatcherConfig, max_deliver: u64) -> ConsumerSettings {
    let definitions = Definitions::embedded().unwrap();
    let mut settings =
        ConsumerSettings::from_definition(definitions.consumer("dispatcher").unwrap())
            .with_concurrency(config.concurrency);
    settings.backoff = vec![Duration::from_millis(50)];
    settings.max_deliver = max_deliver;
    settings
}

pub fn start(
    nats: &Nats,
    config: DispatcherConfig,
    buildspecs: Arc<dyn BuildspecSource>,
    backend: Arc<dyn BuildBackend>,
) -> Running {
    let settings = fast_settings(&config, 8);
    let dispatcher = Dispatcher::new(
        nats.rt.clone(),
        config,
        buildspecs,
        backend,
        &mut Registry::default(),
    )
    .unwrap()
    .with_consumer_settings(settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    Running { shutdown, task }
}

/// The arrival part of a push position: the stream sequence of the webhook whose push it is
/// (positions order by GitHub's push time first; see `prx_ci_shared::domain::push_position`).
pub fn arrival_of(push_sequence: u64) -> u64 {
    prx_ci_shared::domain::push_position::PushPosition::from_wire(push_sequence)
        .expect("a push position")
        .arrival()
}
