//! The seam between a re-run requested on GitHub and the deploy pointer: the dispatcher, the
//! build-watcher and the publisher as the production binaries wire them, against a real
//! nats-server and SSM in the AWS emulator. The build backend is a stand-in that records what
//! the dispatcher starts; the test reports each build's end as CodeBuild's EventBridge event
//! (`tests/data/codebuild/state-succeeded.json`, with the build's own environment and the
//! helper's exported values), as the build-watcher's SQS path receives it.
//!
//! Push A (older) and push B (newer) of `main` are built and published (the pointer holds B's
//! value); then someone clicks "Re-run" on A's check run: A is rebuilt as push A, its build
//! succeeds, and the publisher's fence refuses to move the pointer back (`SUPERSEDED`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_dispatcher::{Dispatcher, DispatcherConfig, GitHubBuildspecSource};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{NoArtifactCheck, Publisher, PublisherConfig, SsmParameterStore};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeGitHub};
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const REPO: &str = "PRX/example-app";
const PARAMETER: &str = "/prx/stag/Spire/ExampleApp/pkg/docker-image-tag";
const PROJECT: &str = "infrastructure-ci-Runner2";
const SHA_A: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const SHA_B: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const BUILDSPEC: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: 1\n";
const WAIT: Duration = Duration::from_secs(60);

/// Records what the dispatcher starts; every start is a new CodeBuild-style build.
#[derive(Debug, Default)]
struct RecordingBackend {
    started: Mutex<Vec<(String, StartBuild)>>,
}

impl RecordingBackend {
    fn started(&self) -> Vec<(String, StartBuild)> {
        self.started.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl BuildBackend for RecordingBackend {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        let mut started = self.started.lock().unwrap();
        let build_id = match started
            .iter()
            .find(|(_, r)| r.request_id == request.request_id)
        {
            Some((id, _)) => id.clone(),
            None => {
                let id = format!("{PROJECT}:{}", uuid::Uuid::new_v4());
                started.push((id.clone(), request));
                id
            }
        };
        Ok(StartedBuild {
            log_url: format!("https://logs.example/{build_id}"),
            build_id,
            backend: "codebuild".into(),
            project: PROJECT.into(),
            region: "us-east-1".into(),
        })
    }

    async fn find(
        &self,
        request: &StartBuild,
        _since: time::OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError> {
        let started = self.started.lock().unwrap();
        Ok(started
            .iter()
            .find(|(_, r)| r.request_id == request.request_id)
            .map(|(build_id, _)| StartedBuild {
                log_url: format!("https://logs.example/{build_id}"),
                build_id: build_id.clone(),
                backend: "codebuild".into(),
                project: PROJECT.into(),
                region: "us-east-1".into(),
            }))
    }

    async fn stop(&self, _build_id: &str) -> Result<StopOutcome, BackendError> {
        Ok(StopOutcome::AlreadyFinished)
    }
}

struct System {
    _nats: NatsServer,
    moto: MotoServer,
    _github: FakeGitHub,
    rt: Runtime,
    backend: Arc<RecordingBackend>,
    shutdown: CancellationToken,
    services: JoinSet<anyhow::Result<()>>,
}

impl System {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let github = FakeGitHub::start(FakeAuth::Anonymous).await;
        for sha in [SHA_A, SHA_B] {
            github.set_file(REPO, sha, "buildspec.yml", BUILDSPEC);
        }
        let mut registry = Registry::default();
        let rt = Runtime::from_client(nats.connect().await, &mut registry);
        rt.provision(1).await.expect("provision NATS");
        let backend = Arc::new(RecordingBackend::default());
        let buildspecs = GitHubBuildspecSource::new(
            GitHubClient::new(GitHubConfig {
                api_url: github.url(),
                ..GitHubConfig::default()
            })
            .expect("GitHub client"),
        );
        let dispatcher = Dispatcher::new(
            rt.clone(),
            DispatcherConfig::default(),
            Arc::new(buildspecs),
            backend.clone(),
            &mut registry,
        )
        .expect("dispatcher");
        let watcher = BuildWatcher::new(
            rt.clone(),
            BuildWatcherConfig {
                request_wait: Duration::from_millis(200),
                reconcile_after: Duration::from_secs(3600),
                ..BuildWatcherConfig::default()
            },
            None,
            None,
            &mut registry,
        )
        .expect("build watcher");
        let publisher = Publisher::new(
            rt.clone(),
            PublisherConfig::default(),
            Arc::new(SsmParameterStore::new(&moto.sdk_config())),
            Arc::new(NoArtifactCheck),
            &mut registry,
        )
        .expect("publisher");
        let shutdown = CancellationToken::new();
        let mut services = JoinSet::new();
        services.spawn(dispatcher.run(shutdown.clone()));
        services.spawn(watcher.run(shutdown.clone()));
        services.spawn(publisher.run(shutdown.clone()));
        Self {
            _nats: nats,
            moto,
            _github: github,
            rt,
            backend,
            shutdown,
            services,
        }
    }

    /// Stores a webhook as ingress does (event id = delivery id).
    async fn webhook(&self, event: &str, payload: &Value, delivery: &str) {
        let envelope = Chain::starting(delivery).envelope(
            delivery.to_owned(),
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery.to_owned(),
                event_name: event.to_owned(),
                payload: serde_json::to_vec(payload).unwrap().into(),
                repository: REPO.to_owned(),
                origin: v1::Origin::Github as i32,
                ..v1::WebhookReceived::default()
            }),
        );
        self.rt
            .publisher
            .publish(&envelope)
            .await
            .expect("store webhook");
    }

    /// GitHub's push of `sha` to `main` (after `before`), pushed at `pushed_at`.
    async fn push(&self, sha: &str, before: &str, pushed_at: i64, delivery: &str) {
        let body = json!({
            "ref": "refs/heads/main",
            "before": before,
            "after": sha,
            "created": false,
            "deleted": false,
            "forced": false,
            "repository": {
                "name": "example-app",
                "full_name": REPO,
                "owner": {"login": "PRX"},
                "default_branch": "main",
                "clone_url": "https://github.com/PRX/example-app.git",
                "pushed_at": pushed_at,
            },
            "sender": {"login": "pusher"},
        });
        self.webhook("push", &body, delivery).await;
    }

    /// The `n`-th build the dispatcher started (waiting for it).
    async fn build(&self, n: usize) -> (String, StartBuild) {
        wait_until(WAIT, &format!("build #{n} started"), || async {
            self.backend.started().into_iter().nth(n)
        })
        .await
    }

    /// Reports `build` succeeded, as CodeBuild's state change event through SQS, with the
    /// value the build's helper exports for its commit.
    async fn succeeded(&self, (build_id, request): &(String, StartBuild)) {
        let path = prx_ci_shared::testing::workspace_root()
            .join("tests/data/codebuild/state-succeeded.json");
        let mut event: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let arn = format!("arn:aws:codebuild:us-east-1:123456789012:build/{build_id}");
        event["id"] = json!(uuid::Uuid::new_v4().to_string());
        event["resources"] = json!([arn]);
        event["detail"]["build-id"] = json!(arn);
        event["detail"]["project-name"] = json!(PROJECT);
        let info = &mut event["detail"]["additional-information"];
        info["source"]["location"] = json!(request.clone_url);
        info["source-version"] = json!(request.source_version);
        info["environment"]["environment-variables"] = request
            .environment
            .iter()
            .map(|(name, value)| json!({"name": name, "type": "PLAINTEXT", "value": value}))
            .collect();
        info["exported-environment-variables"] = json!([
            {"name": "APP", "value": value_of(request.commit.as_str())},
            {"name": "PRX_SPIRE_ECR_PKG_PARAMETERS", "value": format!("APP={PARAMETER}")},
        ]);
        let envelope = Chain::starting(event["id"].as_str().unwrap()).envelope(
            format!("report-{}", event["id"].as_str().unwrap()),
            Payload::BuildReportReceived(v1::BuildReportReceived {
                event_json: serde_json::to_vec(&event).unwrap(),
                source: "sqs".into(),
                build_id: arn,
                repository: REPO.into(),
                log_tail: None,
            }),
        );
        self.rt
            .publisher
            .publish(&envelope)
            .await
            .expect("store report");
    }

    /// Every envelope in `PRX_EVENTS`.
    async fn events(&self) -> Vec<v1::Envelope> {
        use prost::Message as _;
        let mut stream = self
            .rt
            .js
            .get_stream(prx_ci_shared::bus::subject::EVENTS_STREAM)
            .await
            .expect("events stream");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                out.push(v1::Envelope::decode(raw.payload).expect("an envelope"));
            }
        }
        out
    }

    /// The publish outcome (applied or skipped) of `build_id`, once there is one.
    async fn outcome(&self, build_id: &str) -> (v1::Envelope, Payload) {
        wait_until(
            WAIT,
            &format!("the publish outcome of {build_id}"),
            || async {
                self.events().await.into_iter().find_map(|e| {
                    let payload = e.payload.clone()?;
                    let build = match &payload {
                        Payload::PublishApplied(a) => a.build.as_ref()?,
                        Payload::PublishSkipped(s) => s.build.as_ref()?,
                        _ => return None,
                    };
                    (build.build_id == build_id).then_some((e, payload))
                })
            },
        )
        .await
    }

    async fn ssm_history(&self) -> Vec<String> {
        let client = aws_sdk_ssm::Client::new(&self.moto.sdk_config());
        let history = client
            .get_parameter_history()
            .name(PARAMETER)
            .send()
            .await
            .expect("parameter history");
        history
            .parameters()
            .iter()
            .filter_map(|p| p.value().map(str::to_owned))
            .collect()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(done) = self.services.join_next().await {
            done.expect("service task")
                .expect("service stopped cleanly");
        }
    }
}

/// What the helper exports (and the strict value check accepts) for a build of `commit`.
fn value_of(commit: &str) -> String {
    format!("github/prx/example-app:{commit}-x86_64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_an_old_commits_check_never_moves_the_pointer_back() {
    let system = System::start().await;

    // Push A, then push B a minute later; both built and published in order.
    system.push(SHA_A, SHA_B, 1_795_000_000, "push-a").await;
    let build_a = system.build(0).await;
    assert_eq!(build_a.1.commit.as_str(), SHA_A);
    system.succeeded(&build_a).await;
    let (_, applied) = system.outcome(&build_a.0).await;
    assert!(matches!(applied, Payload::PublishApplied(_)), "{applied:?}");
    system.push(SHA_B, SHA_A, 1_795_000_060, "push-b").await;
    let build_b = system.build(1).await;
    assert_eq!(build_b.1.commit.as_str(), SHA_B);
    system.succeeded(&build_b).await;
    let (applied_b, applied) = system.outcome(&build_b.0).await;
    assert!(matches!(applied, Payload::PublishApplied(_)), "{applied:?}");
    assert_eq!(
        system.ssm_history().await,
        [value_of(SHA_A), value_of(SHA_B)]
    );

    // Someone clicks "Re-run" on A's check run.
    let rerun_request = json!({
        "action": "rerequested",
        "check_run": {"id": 7, "head_sha": SHA_A, "name": "prx-ci/x86_64", "external_id": ""},
        "repository": {"full_name": REPO},
        "sender": {"login": "octo"},
    });
    system.webhook("check_run", &rerun_request, "rerun-a").await;
    let rebuild = system.build(2).await;
    assert_eq!(rebuild.1.commit.as_str(), SHA_A, "exactly that commit");
    assert_eq!(
        rebuild.1.environment["PRX_CI_PUBLISH"], "true",
        "as push A was"
    );
    let requested = system
        .events()
        .await
        .into_iter()
        .find(|e| matches!(&e.payload, Some(Payload::BuildRequested(r)) if r.build.as_ref().is_some_and(|b| b.build_id == rebuild.0)))
        .expect("the re-run's BuildRequested");
    let Some(Payload::BuildRequested(request)) = &requested.payload else {
        unreachable!()
    };
    let asked = request.rerun_request.as_ref().expect("marked as a re-run");
    assert_eq!(asked.requested_by, "octo");
    assert!(
        requested.push_sequence < applied_b.push_sequence,
        "ordered as push A"
    );

    // The rebuild succeeds: the fence refuses it, the pointer stays on B.
    system.succeeded(&rebuild).await;
    let (_, outcome) = system.outcome(&rebuild.0).await;
    let Payload::PublishSkipped(skipped) = outcome else {
        panic!("the re-run of A was published: {outcome:?}")
    };
    assert_eq!(skipped.reason(), v1::PublishSkipReason::Superseded);
    assert_eq!(skipped.check, "order fence");
    assert_eq!(skipped.superseded_by_commit, SHA_B);
    assert_eq!(skipped.parameter, PARAMETER);
    assert_eq!(
        system.ssm_history().await,
        [value_of(SHA_A), value_of(SHA_B)],
        "no write after B's"
    );
    let value = aws_sdk_ssm::Client::new(&system.moto.sdk_config())
        .get_parameter()
        .name(PARAMETER)
        .send()
        .await
        .expect("the parameter")
        .parameter()
        .and_then(|p| p.value().map(str::to_owned));
    assert_eq!(value.as_deref(), Some(value_of(SHA_B).as_str()));
    system.stop().await;
}
