//! The test world: a real nats-server, optionally the AWS emulator, the service running, and
//! helpers that read the stream like a consumer would.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_build_watcher::build_store::BuildStore;
use prx_ci_build_watcher::cloudwatch_logs::LogSource;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::subject;
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);
pub const PROJECT: &str = "infrastructure-ci-Runner2";
pub const REPO: &str = "PRX/dovetail-insights";
pub const COMMIT: &str = "4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1";

/// A CodeBuild-style build id (`project:uuid`) nobody else uses.
pub fn new_build_id() -> String {
    format!("{PROJECT}:{}", new_event_id())
}

/// The ARN CodeBuild's events name a build by.
pub fn arn_of(build_id: &str) -> String {
    format!("arn:aws:codebuild:us-east-1:123456789012:build/{build_id}")
}

/// A file of `tests/data/codebuild/`, about `build_id`, with a fresh EventBridge id.
pub fn fixture(name: &str, build_id: &str) -> Value {
    let path = prx_ci_shared::testing::workspace_root()
        .join("tests/data/codebuild")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut event: Value = serde_json::from_str(&text).unwrap();
    let arn = if build_id.starts_with("local:") {
        build_id.to_owned()
    } else {
        arn_of(build_id)
    };
    event["id"] = new_event_id().into();
    event["resources"] = serde_json::json!([arn.clone()]);
    event["detail"]["build-id"] = arn.into();
    event
}

/// The world of one test.
pub struct World {
    pub nats: NatsServer,
    pub moto: Option<MotoServer>,
    pub rt: Runtime,
    pub store: BuildStore,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings for tests: short waits, fast reconciler.
pub fn test_config() -> BuildWatcherConfig {
    BuildWatcherConfig {
        sqs_wait_time: Duration::from_secs(1),
        sqs_visibility_timeout: Some(Duration::from_secs(1)),
        reconcile_after: Duration::from_secs(3600),
        reconcile_interval: Duration::from_millis(100),
        reconcile_call_spacing: Duration::from_millis(10),
        request_wait: Duration::from_millis(200),
        unrequested_after: Duration::ZERO,
        ..BuildWatcherConfig::default()
    }
}

pub async fn runtime(nats: &NatsServer) -> Runtime {
    let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    rt
}

impl World {
    /// nats-server only, service not started yet.
    pub async fn nats_only() -> Self {
        let nats = NatsServer::start().await;
        let rt = runtime(&nats).await;
        let store = BuildStore::open(&rt.js).await.unwrap();
        Self {
            nats,
            moto: None,
            rt,
            store,
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    /// nats-server and the AWS emulator, service not started yet.
    pub async fn with_aws() -> Self {
        let mut world = Self::nats_only().await;
        world.moto = Some(MotoServer::start().await);
        world
    }

    pub fn moto(&self) -> &MotoServer {
        self.moto.as_ref().expect("world without the AWS emulator")
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.moto().sdk_config())
    }

    pub fn codebuild(&self) -> aws_sdk_codebuild::Client {
        aws_sdk_codebuild::Client::new(&self.moto().sdk_config())
    }

    /// Starts the service.
    pub fn start(
        &mut self,
        config: BuildWatcherConfig,
        codebuild: Option<aws_sdk_codebuild::Client>,
        sqs: Option<aws_sdk_sqs::Client>,
    ) {
        self.start_with_logs(config, codebuild, sqs, None);
    }

    /// Starts the service, reading failed builds' log tails from `logs` when given.
    pub fn start_with_logs(
        &mut self,
        config: BuildWatcherConfig,
        codebuild: Option<aws_sdk_codebuild::Client>,
        sqs: Option<aws_sdk_sqs::Client>,
        logs: Option<Arc<dyn LogSource>>,
    ) {
        if self.shutdown.is_cancelled() {
            self.shutdown = CancellationToken::new();
        }
        let mut watcher = BuildWatcher::new(
            self.rt.clone(),
            config,
            codebuild,
            sqs,
            &mut Registry::default(),
        )
        .unwrap();
        if let Some(logs) = logs {
            watcher = watcher.with_log_source(logs);
        }
        self.task = Some(tokio::spawn(watcher.run(self.shutdown.clone())));
    }

    /// Stops the service and fails the test if it failed.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Publishes the BuildRequested the dispatcher would, for `build_id`.
    pub async fn request(&self, build_id: &str) -> v1::Envelope {
        let local = build_id.starts_with("local:");
        let webhook = Chain::starting(&format!("delivery-{}", new_event_id())).with_ordering(
            &prx_ci_shared::domain::OrderingKey::branch(
                prx_ci_shared::domain::RepoName::parse(REPO).unwrap(),
                prx_ci_shared::domain::Branch::new("main").unwrap(),
            ),
            17,
        );
        let envelope = Chain {
            causation_id: new_event_id(),
            ..webhook
        }
        .envelope(
            new_event_id(),
            Payload::BuildRequested(v1::BuildRequested {
                branch: "main".into(),
                fork: false,
                pull_request: 0,
                build: Some(v1::BuildRef {
                    build_id: if local {
                        build_id.to_owned()
                    } else {
                        arn_of(build_id)
                    },
                    build_request_id: format!("req-{build_id}"),
                    repository: REPO.into(),
                    commit: COMMIT.into(),
                    architecture: v1::Architecture::X8664 as i32,
                    backend: if local { "local" } else { "codebuild" }.into(),
                    project: if local { "local" } else { PROJECT }.into(),
                    region: if local { "" } else { "us-east-1" }.into(),
                    log_url: String::new(),
                    ..v1::BuildRef::default()
                }),
                environment: [("PRX_REPO".to_owned(), REPO.to_owned())].into(),
                buildspec: "version: 0.2\n".into(),
                clone_url: format!("https://github.com/{REPO}.git"),
                source_version: COMMIT.into(),
                event_name: "push".into(),
                action: String::new(),
                ..v1::BuildRequested::default()
            }),
        );
        self.rt.publisher.publish(&envelope).await.unwrap();
        envelope
    }

    /// Publishes a report as the local runner does.
    pub async fn report(&self, event: &Value, source: &str) -> v1::Envelope {
        self.report_with_tail(event, source, None).await
    }

    /// Publishes a report carrying a log tail, as the local runner's final report of a failed
    /// build does.
    pub async fn report_with_tail(
        &self,
        event: &Value,
        source: &str,
        log_tail: Option<v1::LogTail>,
    ) -> v1::Envelope {
        let envelope = Chain::starting(event["id"].as_str().unwrap_or_default()).envelope(
            new_event_id(),
            Payload::BuildReportReceived(v1::BuildReportReceived {
                event_json: serde_json::to_vec(event).unwrap(),
                source: source.into(),
                build_id: event["detail"]["build-id"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                repository: REPO.into(),
                log_tail,
            }),
        );
        self.rt.publisher.publish(&envelope).await.unwrap();
        envelope
    }

    /// Every envelope in PRX_EVENTS, in stream order.
    pub async fn events(&self) -> Vec<v1::Envelope> {
        let stream = self.rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                out.push(v1::Envelope::decode(raw.payload).unwrap());
            }
        }
        out
    }

    /// The build events (started, phase, completed) of one build, in stream order.
    pub async fn build_events(&self, build_id: &str) -> Vec<v1::Envelope> {
        let normalized = prx_ci_shared::codebuild::build::build_id_of(build_id).to_owned();
        self.events()
            .await
            .into_iter()
            .filter(|e| {
                let build = match &e.payload {
                    Some(Payload::BuildStarted(p)) => p.build.as_ref(),
                    Some(Payload::BuildPhaseChanged(p)) => p.build.as_ref(),
                    Some(Payload::BuildCompleted(p)) => p.build.as_ref(),
                    _ => None,
                };
                build.is_some_and(|b| {
                    prx_ci_shared::codebuild::build::build_id_of(&b.build_id) == normalized
                })
            })
            .collect()
    }

    /// Waits until the build has a BuildCompleted, and returns all its build events.
    pub async fn until_completed(&self, build_id: &str) -> Vec<v1::Envelope> {
        wait_until(WAIT, "a BuildCompleted", || async {
            let events = self.build_events(build_id).await;
            events
                .iter()
                .any(|e| matches!(e.payload, Some(Payload::BuildCompleted(_))))
                .then_some(events)
        })
        .await
    }

    /// Waits until the build has `n` build events.
    pub async fn until_events(&self, build_id: &str, n: usize) -> Vec<v1::Envelope> {
        wait_until(WAIT, &format!("{n} build events"), || async {
            let events = self.build_events(build_id).await;
            (events.len() >= n).then_some(events)
        })
        .await
    }

    /// Waits until a consumer has acknowledged everything it was given.
    pub async fn until_consumer_idle(&self, durable: &str) {
        wait_until(WAIT, &format!("consumer {durable} to be idle"), || {
            prx_ci_shared::testing::durable_drained(&self.rt.js, subject::EVENTS_STREAM, durable)
        })
        .await;
    }
}

/// The names of the events, for compact assertions: `started`, `phase:BUILD`, `completed:FAILED`.
pub fn names(events: &[v1::Envelope]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.payload {
            Some(Payload::BuildStarted(_)) => "started".to_owned(),
            Some(Payload::BuildPhaseChanged(p)) => format!("phase:{}", p.completed_phase),
            Some(Payload::BuildCompleted(c)) => format!(
                "completed:{}",
                v1::BuildStatus::try_from(c.status)
                    .map(|s| s
                        .as_str_name()
                        .trim_start_matches("BUILD_STATUS_")
                        .to_owned())
                    .unwrap_or_default()
            ),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The completion among `events`.
pub fn completed(events: &[v1::Envelope]) -> v1::BuildCompleted {
    events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::BuildCompleted(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("no BuildCompleted")
}
