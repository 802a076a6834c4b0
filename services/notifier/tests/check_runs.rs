//! Check runs in GitHub App mode: the notifier against a real nats-server and the stateful
//! fake GitHub (App authentication, installation tokens, the checks API). One check run per
//! build and architecture through its whole life (queued, in progress, completed), the same
//! run after a restart, a superseded build cancelled, and a burst of finishing builds
//! coalesced within the write budget; a run never written before a restart written after it,
//! two replicas never landing an older state last, a failed look-up of an earlier creation
//! recorded (permanent) or retried (transient), and no write budget spent (nor waited for)
//! when nothing is written: an unchanged run, a lease lost while waiting for the budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use prx_ci_notifier::check_run::CheckRun;
use prx_ci_notifier::github_status::{StatusError, WritePermit};
use prx_ci_notifier::notification_store::NotificationStore;
use prx_ci_notifier::{
    CheckRunSink, DeliveryStats, GitHubCheckRunSink, GitHubStatusSink, LogChatSink, Notifier,
    NotifierConfig,
};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::notice::view::BuildState;
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fake_github::{
    CheckRunWrite, FakeAuth, FakeCheckRun, FakeCommit, FakeGitHub, TestAppKey,
};
use prx_ci_shared::testing::fault_proxy::{Fault, FaultProxy, FaultRule, Match};
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Chain, Runtime};
use secrecy::SecretString;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const REPO: &str = "PRX/my-app";
const SHA: &str = "165df6a5fd675dcf67a1b2c3d4e5f60718293a4b";
const NEWER: &str = "abcdef0123456789abcdef0123456789abcdef01";
const LOG_URL: &str = "https://logs.example.test/build";
const DASHBOARD: &str = "https://ci.example.org";

struct Env {
    nats: NatsServer,
    rt: Runtime,
    github: FakeGitHub,
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stats: DeliveryStats,
    registry: Registry,
}

impl Running {
    /// The notifier's metrics, as `/metrics` shows them.
    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A check-run sink whose writes wait until the gate opens (so a burst of events is folded
/// before anything is written).
#[derive(Debug)]
struct Gated {
    inner: GitHubCheckRunSink,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl CheckRunSink for Gated {
    async fn ready(&self) -> WritePermit {
        self.inner.ready().await
    }

    async fn write(
        &self,
        run: &CheckRun,
        id: Option<u64>,
        permit: WritePermit,
    ) -> Result<u64, StatusError> {
        let mut open = self.open.clone();
        open.wait_for(|open| *open).await.unwrap();
        self.inner.write(run, id, permit).await
    }

    async fn find(&self, run: &CheckRun) -> Result<Option<u64>, StatusError> {
        self.inner.find(run).await
    }
}

/// A check-run sink whose write budget is held back until the gate opens (a budget
/// exhausted for longer than the lease); counts the callers waiting for it.
#[derive(Debug)]
struct BudgetHeld {
    inner: GitHubCheckRunSink,
    open: watch::Receiver<bool>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl CheckRunSink for BudgetHeld {
    async fn ready(&self) -> WritePermit {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.clone();
        open.wait_for(|open| *open).await.unwrap();
        self.inner.ready().await
    }

    async fn write(
        &self,
        run: &CheckRun,
        id: Option<u64>,
        permit: WritePermit,
    ) -> Result<u64, StatusError> {
        self.inner.write(run, id, permit).await
    }

    async fn find(&self, run: &CheckRun) -> Result<Option<u64>, StatusError> {
        self.inner.find(run).await
    }
}

impl Env {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;
        github.add_commit(REPO, FakeCommit::new(SHA));
        github.install(INSTALLATION, &[REPO]);
        Self { nats, rt, github }
    }

    fn client(&self) -> GitHubClient {
        self.client_at(&self.github.url())
    }

    /// A client of the fake reached at `url` (a fault proxy in front of it).
    fn client_at(&self, url: &str) -> GitHubClient {
        GitHubClient::new(GitHubConfig {
            api_url: url.to_owned(),
            app_id: Some(APP_ID),
            private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
            ..GitHubConfig::default()
        })
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_attempts: 3,
        })
    }

    fn config() -> NotifierConfig {
        let mut config = NotifierConfig::default();
        config.checks.dashboard_url = Some(DASHBOARD.into());
        config
    }

    async fn notifier(&self, config: NotifierConfig, checks: Arc<dyn CheckRunSink>) -> Running {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(self.nats.connect().await, &mut registry);
        let notifier = Notifier::new(
            rt,
            config,
            Arc::new(LogChatSink::new()),
            Arc::new(GitHubStatusSink::new(self.client(), 80, 500)),
            None,
            &mut registry,
        )
        .unwrap()
        .with_check_runs(checks);
        let stats = notifier.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(notifier.run(shutdown.clone()));
        Running {
            shutdown,
            task,
            stats,
            registry,
        }
    }

    /// The notification records the notifiers keep.
    async fn store(&self) -> NotificationStore {
        NotificationStore::open(&self.rt.js, &Env::config().bucket)
            .await
            .unwrap()
    }

    async fn live(&self) -> Running {
        let sink = GitHubCheckRunSink::new(self.client(), 80, 500);
        self.notifier(Self::config(), Arc::new(sink)).await
    }

    async fn publish(&self, envelope: &v1::Envelope) {
        self.rt.publisher.publish(envelope).await.unwrap();
    }

    /// The runs once `check` accepts them.
    async fn runs_where(
        &self,
        what: &str,
        check: impl Fn(&[FakeCheckRun]) -> bool,
    ) -> Vec<FakeCheckRun> {
        wait_until(WAIT, what, || {
            let runs = self.github.check_runs();
            let ok = check(&runs);
            async move { ok.then_some(runs) }
        })
        .await
    }

    /// Waits for the run `name` of `sha` to reach `status`.
    async fn wait_status(&self, name: &str, status: &str) -> FakeCheckRun {
        let runs = self
            .runs_where(&format!("{name} {status}"), |runs| {
                runs.iter().any(|r| r.name == name && r.status == status)
            })
            .await;
        runs.into_iter().find(|r| r.name == name).unwrap()
    }
}

/// The events of one build of `REPO`, with deterministic ids.
struct Build {
    build_id: String,
    sha: String,
    arch: v1::Architecture,
}

impl Build {
    fn new(build_id: &str, sha: &str, arch: v1::Architecture) -> Self {
        Self {
            build_id: build_id.into(),
            sha: sha.into(),
            arch,
        }
    }

    fn arch_name(&self) -> &'static str {
        match self.arch {
            v1::Architecture::Aarch64 => "aarch64",
            _ => "x86_64",
        }
    }

    fn name(&self) -> String {
        format!("prx-ci/{}", self.arch_name())
    }

    fn request_id(&self) -> String {
        format!("req-{}", self.build_id)
    }

    fn build(&self) -> Option<v1::BuildRef> {
        Some(v1::BuildRef {
            build_id: self.build_id.clone(),
            build_request_id: self.request_id(),
            repository: REPO.into(),
            commit: self.sha.clone(),
            architecture: self.arch as i32,
            backend: "codebuild".into(),
            project: "infrastructure-ci-Runner2".into(),
            region: "us-east-1".into(),
            log_url: format!("{LOG_URL}/{}", self.build_id),
            ..Default::default()
        })
    }

    fn request(&self) -> v1::BuildRequested {
        let environment: HashMap<String, String> = [
            ("PRX_REPO", REPO),
            ("PRX_COMMIT", &self.sha),
            ("PRX_BRANCH", "main"),
            ("PRX_TARGET_ARCHITECTURE", self.arch_name()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        v1::BuildRequested {
            build: self.build(),
            environment,
            event_name: "push".into(),
            source_version: self.sha.clone(),
            branch: "main".into(),
            ..Default::default()
        }
    }

    fn envelope(&self, name: &str, payload: Payload) -> v1::Envelope {
        let chain = Chain {
            correlation_id: format!("delivery-{}", self.build_id),
            causation_id: format!("webhook-{}", self.build_id),
            ..Chain::default()
        };
        chain.envelope(chain.derive_id(&[name]), payload)
    }

    fn requested(&self) -> v1::Envelope {
        self.envelope("requested", Payload::BuildRequested(self.request()))
    }

    fn started(&self) -> v1::Envelope {
        self.envelope(
            "started",
            Payload::BuildStarted(v1::BuildStarted {
                build: self.build(),
                requested: Some(self.request()),
                ..Default::default()
            }),
        )
    }

    fn phase(&self, completed: &str, status: &str, current: &str) -> v1::Envelope {
        self.envelope(
            &format!("phase-{completed}"),
            Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
                build: self.build(),
                completed_phase: completed.into(),
                completed_phase_status: status.into(),
                current_phase: current.into(),
                duration_ms: 5_000,
                message: if status == "FAILED" {
                    "Error while executing command: make test".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
        )
    }

    fn completed(&self, status: v1::BuildStatus) -> v1::Envelope {
        self.envelope(
            "completed",
            Payload::BuildCompleted(v1::BuildCompleted {
                build: self.build(),
                requested: Some(self.request()),
                status: status as i32,
                failed_phase: if status == v1::BuildStatus::Failed {
                    "BUILD".into()
                } else {
                    String::new()
                },
                duration_ms: 95_000,
                ..Default::default()
            }),
        )
    }

    fn publish_applied(&self) -> v1::Envelope {
        self.envelope(
            "publish-applied",
            Payload::PublishApplied(v1::PublishApplied {
                parameter: "/prx/stag/Spire/MyApp/pkg/docker-image-tag".into(),
                value: format!("github/prx/my-app:{}-x86_64", self.sha),
                kind: v1::ArtifactKind::EcrImage as i32,
                label: "RAILS_APP".into(),
                build: self.build(),
                version: 3,
                shadow: false,
            }),
        )
    }

    fn publish_skipped(&self) -> v1::Envelope {
        self.envelope(
            "publish-skipped",
            Payload::PublishSkipped(v1::PublishSkipped {
                parameter: "/prx/stag/Spire/MyApp/pkg/s3-object-key".into(),
                label: "LAMBDA_ZIP".into(),
                build: self.build(),
                reason: v1::PublishSkipReason::Superseded as i32,
                superseded_by_commit: NEWER.into(),
                check: "order fence".into(),
                ..Default::default()
            }),
        )
    }

    fn cancelled(&self) -> v1::Envelope {
        self.envelope(
            "cancelled",
            Payload::BuildCancelled(v1::BuildCancelled {
                build: self.build(),
                superseded_by_sequence: 99,
                superseded_by_commit: NEWER.into(),
                superseded_by_event_id: "webhook-newer".into(),
            }),
        )
    }
}

/// The statuses a run was written with, consecutive repeats folded.
fn status_sequence(writes: &[CheckRunWrite], id: u64) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for write in writes.iter().filter(|w| w.id == id) {
        let status = write.body["status"].as_str().unwrap_or_default().to_owned();
        if out.last() != Some(&status) {
            out.push(status);
        }
    }
    out
}

fn summary(run: &FakeCheckRun) -> String {
    run.output.as_ref().unwrap()["summary"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn one_check_run_per_build_and_arch_through_its_whole_life() {
    let env = Env::start().await;
    let notifier = env.live().await;
    let x86 = Build::new(
        "infrastructure-ci-Runner2:x86",
        SHA,
        v1::Architecture::X8664,
    );
    let arm = Build::new(
        "infrastructure-ci-Runner2:arm",
        SHA,
        v1::Architecture::Aarch64,
    );

    for build in [&x86, &arm] {
        env.publish(&build.requested()).await;
    }
    for build in [&x86, &arm] {
        env.wait_status(&build.name(), "queued").await;
    }
    for build in [&x86, &arm] {
        env.publish(&build.started()).await;
        env.publish(&build.phase("INSTALL", "SUCCEEDED", "BUILD"))
            .await;
    }
    for build in [&x86, &arm] {
        env.wait_status(&build.name(), "in_progress").await;
    }
    env.publish(&x86.phase("BUILD", "SUCCEEDED", "POST_BUILD"))
        .await;
    env.publish(&x86.completed(v1::BuildStatus::Succeeded))
        .await;
    env.publish(&x86.publish_applied()).await;
    env.publish(&arm.phase("BUILD", "FAILED", "POST_BUILD"))
        .await;
    env.publish(&arm.completed(v1::BuildStatus::Failed)).await;

    let runs = env
        // Events are folded concurrently: wait for the last of them to show.
        .runs_where("both runs completed with every event shown", |runs| {
            let shows = |text: &str| {
                runs.iter().any(|r| {
                    r.status == "completed"
                        && r.output
                            .as_ref()
                            .is_some_and(|o| o.to_string().contains(text))
                })
            };
            runs.iter().all(|r| r.status == "completed")
                && shows("written")
                && shows("make test")
        })
        .await;
    assert_eq!(runs.len(), 2, "one run per build and arch: {runs:#?}");
    let writes = env.github.check_run_writes();
    for (build, conclusion) in [(&x86, "success"), (&arm, "failure")] {
        let run = runs.iter().find(|r| r.name == build.name()).unwrap();
        assert_eq!(run.head_sha, SHA);
        assert_eq!(run.conclusion.as_deref(), Some(conclusion));
        assert_eq!(
            run.external_id.as_deref(),
            Some(build.request_id().as_str())
        );
        assert_eq!(
            run.details_url.as_deref(),
            Some(
                format!(
                    "{DASHBOARD}/builds/req-{}",
                    build.build_id.replace(':', "%3A")
                )
                .as_str()
            )
        );
        assert_eq!(
            writes
                .iter()
                .filter(|w| w.id == run.id && w.created)
                .count(),
            1,
            "created once"
        );
        assert_eq!(
            status_sequence(&writes, run.id),
            ["queued", "in_progress", "completed"]
        );
    }
    let x86_run = runs.iter().find(|r| r.name == x86.name()).unwrap();
    assert!(summary(x86_run).contains("/prx/stag/Spire/MyApp/pkg/docker-image-tag"));
    let arm_run = runs.iter().find(|r| r.name == arm.name()).unwrap();
    assert!(summary(arm_run).contains("### Failed in BUILD"));
    assert!(summary(arm_run).contains("Error while executing command: make test"));
    assert!(summary(arm_run).contains(&format!("{LOG_URL}/{}", arm.build_id)));
    // App mode: check runs instead of commit statuses.
    assert!(env.github.statuses().is_empty());

    // After a restart the build's next event updates the same run: no second run.
    notifier.stop().await;
    let notifier = env.live().await;
    env.publish(&x86.publish_skipped()).await;
    let runs = env
        .runs_where("the skip shown on the same run", |runs| {
            runs.iter().any(|r| {
                r.output
                    .as_ref()
                    .is_some_and(|o| o.to_string().contains("order fence"))
            })
        })
        .await;
    assert_eq!(runs.len(), 2);
    let writes = env.github.check_run_writes();
    assert_eq!(writes.iter().filter(|w| w.created).count(), 2);
    let last = writes.last().unwrap();
    assert_eq!((last.id, last.created), (x86_run.id, false));
    notifier.stop().await;
}

#[tokio::test]
async fn a_superseded_build_ends_cancelled() {
    let env = Env::start().await;
    let notifier = env.live().await;
    let build = Build::new(
        "infrastructure-ci-Runner2:old",
        SHA,
        v1::Architecture::X8664,
    );
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    env.wait_status(&build.name(), "in_progress").await;
    env.publish(&build.cancelled()).await;
    env.publish(&build.completed(v1::BuildStatus::Stopped))
        .await;
    // The cancellation and the stop may be folded in either order (the consumer handles
    // events concurrently); the run ends superseded either way.
    let runs = env
        .runs_where("the run cancelled as superseded", |runs| {
            runs.iter().any(|r| {
                r.status == "completed"
                    && r.output
                        .as_ref()
                        .is_some_and(|o| o["title"] == "Superseded by abcdef0")
            })
        })
        .await;
    assert_eq!(runs[0].conclusion.as_deref(), Some("cancelled"));
    assert_eq!(env.github.check_runs().len(), 1);
    notifier.stop().await;
}

#[tokio::test]
async fn a_burst_of_finishing_builds_is_coalesced_within_the_write_budget() {
    const BUILDS: usize = 50;
    const PER_MINUTE: u32 = 45;
    let env = Env::start().await;
    let builds: Vec<Build> = (0..BUILDS)
        .map(|i| {
            let sha = format!("{i:02x}{}", &SHA[2..]);
            env.github.add_commit(REPO, FakeCommit::new(sha.clone()));
            Build::new(
                &format!("infrastructure-ci-Runner2:burst-{i}"),
                &sha,
                v1::Architecture::X8664,
            )
        })
        .collect();
    let (gate, open) = watch::channel(false);
    let sink = Gated {
        inner: GitHubCheckRunSink::new(env.client(), PER_MINUTE, 500),
        open,
    };
    let notifier_started = Instant::now();
    let notifier = env.notifier(Env::config(), Arc::new(sink)).await;
    for build in &builds {
        env.publish(&build.requested()).await;
        env.publish(&build.started()).await;
        env.publish(&build.completed(v1::BuildStatus::Succeeded))
            .await;
    }
    // Every build's events are folded while GitHub writes wait.
    let store = NotificationStore::open(&env.rt.js, &Env::config().bucket)
        .await
        .unwrap();
    wait_until(WAIT, "every build folded", || {
        let store = &store;
        let builds = &builds;
        async move {
            for build in builds {
                match store.load(&build.build_id).await {
                    Ok(Some((record, _))) if record.view.state == BuildState::Succeeded => {}
                    _ => return None,
                }
            }
            Some(())
        }
    })
    .await;
    let opened = Instant::now();
    gate.send(true).unwrap();
    let runs = env
        .runs_where("every run completed", |runs| {
            runs.len() == BUILDS
                && runs
                    .iter()
                    .all(|r| r.conclusion.as_deref() == Some("success"))
        })
        .await;
    let paced = opened.elapsed();
    let total = notifier_started.elapsed();
    notifier.stop().await;

    let writes = env.github.check_run_writes();
    // One run per build, each created once.
    assert_eq!(runs.len(), BUILDS);
    assert_eq!(writes.iter().filter(|w| w.created).count(), BUILDS);
    // Coalesced: 150 events, one write per build (the first build's write, taken before the
    // gate, showed its request, so it is written twice).
    assert!(writes.len() <= BUILDS + 1, "{} writes", writes.len());
    // Within the budget: the bucket (PER_MINUTE) plus what it refilled meanwhile.
    let rate = f64::from(PER_MINUTE) / 60.0;
    let allowed = f64::from(PER_MINUTE) + total.as_secs_f64() * rate + 1.0;
    assert!(
        (writes.len() as f64) <= allowed,
        "{} writes in {total:?}",
        writes.len()
    );
    // Paced: the writes beyond the full bucket waited for its refill.
    let beyond = writes.len().saturating_sub(PER_MINUTE as usize + 1) as f64;
    assert!(
        paced.as_secs_f64() >= beyond / rate * 0.9,
        "{} writes in {paced:?}",
        writes.len()
    );
}

#[tokio::test]
async fn a_run_whose_creation_was_not_recorded_is_found_by_its_external_id() {
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;
    github.add_commit(REPO, FakeCommit::new(SHA));
    github.install(INSTALLATION, &[REPO]);
    let env_client = GitHubClient::new(GitHubConfig {
        api_url: github.url(),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    })
    .unwrap();
    let sink = GitHubCheckRunSink::new(env_client, 80, 500);
    let run = CheckRun {
        repository: REPO.into(),
        head_sha: SHA.into(),
        name: "prx-ci/x86_64".into(),
        external_id: "req-1".into(),
        status: prx_ci_notifier::check_run::CheckStatus::Queued,
        conclusion: None,
        details_url: None,
        started_at: None,
        completed_at: None,
        title: "Build requested, waiting to start".into(),
        summary: "summary".into(),
    };
    assert_eq!(sink.find(&run).await.unwrap(), None);
    let id = sink.write(&run, None, sink.ready().await).await.unwrap();
    let other = CheckRun {
        external_id: "req-2".into(),
        ..run.clone()
    };
    sink.write(&other, None, sink.ready().await).await.unwrap();
    assert_eq!(sink.find(&run).await.unwrap(), Some(id));
    // An update keeps the run and its commit.
    let done = CheckRun {
        status: prx_ci_notifier::check_run::CheckStatus::Completed,
        conclusion: Some(prx_ci_notifier::check_run::Conclusion::Success),
        ..run.clone()
    };
    assert_eq!(
        sink.write(&done, Some(id), sink.ready().await)
            .await
            .unwrap(),
        id
    );
    let stored = github
        .check_runs()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.conclusion.as_deref()),
        ("completed", Some("success"))
    );
    let patch = github.check_run_writes().last().unwrap().body.clone();
    assert!(patch.get("head_sha").is_none(), "{patch}");
}

/// Folds `events` (`true`: old history) into their build's record as a notifier does before a
/// crash that leaves its writes undone.
async fn fold(store: &NotificationStore, key: &str, events: &[(v1::Envelope, bool)]) {
    let statuses = Env::config().statuses;
    for (event, quiet) in events {
        let (applied, _) = store
            .modify(key, |record| record.apply_event(event, *quiet, &statuses))
            .await
            .unwrap();
        assert_eq!(applied, Ok(true));
    }
}

#[tokio::test]
async fn a_run_never_written_before_a_restart_is_written_after_it_also_after_old_history() {
    let env = Env::start().await;
    let store = env.store().await;
    // Token mode wrote this build's status; the notifier comes back in App mode. Stored first:
    // the restart lists keys in the order they were last written, and the single worker
    // writes in queue order, so were this build queued, its run would be written before the
    // other's (and counted as requested).
    let reported = Build::new(
        "infrastructure-ci-Runner2:reported",
        SHA,
        v1::Architecture::Aarch64,
    );
    fold(
        &store,
        &reported.build_id,
        &[(reported.requested(), false), (reported.started(), false)],
    )
    .await;
    let statuses = Env::config().statuses;
    store
        .modify(&reported.build_id, |record| {
            let status = prx_ci_shared::notice::commit_status::desired_status(
                &statuses.context,
                &record.view,
            )
            .unwrap();
            record.mark_status_written(&status, true, &statuses)
        })
        .await
        .unwrap();
    // App mode: old history (a replay: the build's start, which calls for a status), then a
    // live event, folded; the notifier stopped before writing the run.
    let after_history = Build::new(
        "infrastructure-ci-Runner2:history",
        SHA,
        v1::Architecture::X8664,
    );
    fold(
        &store,
        &after_history.build_id,
        &[
            (after_history.started(), true),
            (after_history.completed(v1::BuildStatus::Succeeded), false),
        ],
    )
    .await;

    let notifier = env.live().await;
    let run = env.wait_status(&after_history.name(), "completed").await;
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert_eq!(
        run.external_id.as_deref(),
        Some(after_history.request_id().as_str())
    );
    wait_until(WAIT, "the written run counted", || {
        let written = notifier
            .stats
            .check_runs_written
            .load(std::sync::atomic::Ordering::SeqCst);
        async move { (written >= 1).then_some(()) }
    })
    .await;
    // The requeue went past the reported build (listed first) before queuing this one.
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        load(&notifier.stats.check_runs_requested),
        1,
        "only the run never written was queued"
    );
    assert_eq!(load(&notifier.stats.check_runs_written), 1);
    notifier.stop().await;
    assert_eq!(
        env.github
            .check_runs()
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        [after_history.name().as_str()],
        "no run for the build reported by a commit status"
    );
}

#[tokio::test]
async fn a_replica_holding_an_older_view_never_writes_after_a_newer_one() {
    let env = Env::start().await;
    let store = env.store().await;
    let build = Build::new(
        "infrastructure-ci-Runner2:replicas",
        SHA,
        v1::Architecture::X8664,
    );
    // Replica A: its first write (the queued run) hangs until the gate opens.
    let (gate, open) = watch::channel(false);
    let a = env
        .notifier(
            Env::config(),
            Arc::new(Gated {
                inner: GitHubCheckRunSink::new(env.client(), 80, 500),
                open,
            }),
        )
        .await;
    env.publish(&build.requested()).await;
    wait_until(WAIT, "replica A writing the queued run", || async {
        let (record, _) = store.load(&build.build_id).await.ok()??;
        record.check_run.create_started.then_some(())
    })
    .await;
    env.publish(&build.started()).await;
    env.publish(&build.completed(v1::BuildStatus::Succeeded))
        .await;
    wait_until(WAIT, "every event folded", || async {
        let (record, _) = store.load(&build.build_id).await.ok()??;
        (record.view.state == BuildState::Succeeded).then_some(())
    })
    .await;

    // Replica B starts, finds the run behind the record's view, and tries to write it.
    let b = env.live().await;
    wait_until(WAIT, "replica B to try the run", || {
        let leased = b
            .stats
            .check_runs_leased_elsewhere
            .load(std::sync::atomic::Ordering::SeqCst);
        let runs = env.github.check_runs().len();
        async move { (leased >= 1 || runs > 0).then_some(()) }
    })
    .await;
    // A's older write lands now.
    gate.send(true).unwrap();
    let runs = env
        .runs_where("the run completed", |runs| {
            runs.iter().any(|r| r.status == "completed")
        })
        .await;
    // Settled: no write in flight (every write A or B makes of the newest view is recorded).
    wait_until(
        WAIT,
        "the run recorded as showing the newest view",
        || async {
            let (record, _) = store.load(&build.build_id).await.ok()??;
            (!record.check_run_dirty() && record.check_run.lease.is_none()).then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
    let runs_now = env.github.check_runs();
    assert_eq!(runs_now.len(), 1, "one run: {runs_now:#?}");
    assert_eq!(runs_now[0].id, runs[0].id);
    assert_eq!(runs_now[0].conclusion.as_deref(), Some("success"));
    let writes = env.github.check_run_writes();
    assert_eq!(
        writes.iter().filter(|w| w.created).count(),
        1,
        "created once"
    );
    assert_eq!(
        status_sequence(&writes, runs_now[0].id),
        ["queued", "completed"],
        "the older state never landed after the newer: {writes:#?}"
    );
}

/// `GET /repos/{o}/{r}/commits/{sha}/check-runs`: the look-up of an earlier creation.
fn lookups() -> Match {
    Match::any()
        .method("GET")
        .path_prefix(&format!("/repos/{REPO}/commits/{SHA}/check-runs"))
}

/// `POST /repos/{o}/{r}/check-runs`: a creation.
fn creations() -> Match {
    Match::any()
        .method("POST")
        .path_prefix(&format!("/repos/{REPO}/check-runs"))
}

/// A notifier writing check runs through `proxy`; its first creation lands on GitHub but
/// its answer is lost, so the next attempt looks the run up first.
async fn notifier_losing_the_first_creation(env: &Env, proxy: &FaultProxy) -> Running {
    proxy.add(FaultRule::new(creations(), Fault::lost_answer()).times(1));
    let sink = GitHubCheckRunSink::new(env.client_at(&proxy.url()), 80, 500);
    env.notifier(Env::config(), Arc::new(sink)).await
}

#[tokio::test]
async fn a_look_up_github_refuses_for_good_is_recorded_as_rejected() {
    let env = Env::start().await;
    let proxy = FaultProxy::start(&env.github.url()).await;
    proxy.add(FaultRule::new(
        lookups(),
        Fault::answer(
            403,
            &[("content-type", "application/json")],
            r#"{"message":"Resource not accessible by integration"}"#,
        ),
    ));
    let notifier = notifier_losing_the_first_creation(&env, &proxy).await;
    let build = Build::new(
        "infrastructure-ci-Runner2:lookup-refused",
        SHA,
        v1::Architecture::X8664,
    );
    env.publish(&build.requested()).await;
    let store = env.store().await;
    let record = wait_until(WAIT, "the refused look-up recorded", || async {
        let (record, _) = store.load(&build.build_id).await.ok()??;
        record.check_run.last_error.is_some().then_some(record)
    })
    .await;
    let error = record.check_run.last_error.clone().unwrap();
    assert!(
        error.contains("earlier creation") && error.contains("403"),
        "{error}"
    );
    // Consistent: the version is given up on (not retried until the build's next event), the
    // lease released, the creation marker kept (the next write looks again first).
    assert!(!record.check_run_dirty());
    assert_eq!(record.check_run.lease, None);
    assert!(record.check_run.create_started && record.check_run.id.is_none());
    let metrics = notifier.metrics();
    assert!(
        metrics.contains(r#"prx_ci_notifier_check_runs_total{outcome="rejected"} 1"#),
        "{metrics}"
    );
    assert_eq!(proxy.count(&lookups()), 1, "not retried");
    notifier.stop().await;
}

/// A transient failure of the look-up is retried (it was before a permanent one became a
/// rejection too: this guards that split, it did not fail without it).
#[tokio::test]
async fn a_look_up_that_fails_for_now_is_retried_and_finds_the_run() {
    let env = Env::start().await;
    let proxy = FaultProxy::start(&env.github.url()).await;
    // One round of the client's three attempts fails; the queue's next round gets through.
    proxy.add(FaultRule::new(lookups(), Fault::server_error(502)).times(3));
    let notifier = notifier_losing_the_first_creation(&env, &proxy).await;
    let build = Build::new(
        "infrastructure-ci-Runner2:lookup-retried",
        SHA,
        v1::Architecture::X8664,
    );
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    // The lost creation itself may already show `in_progress` (both events folded into it):
    // wait for the look-up that finds it, not only for the status.
    wait_until(WAIT, "the look-up to get through", || async {
        (proxy.count(&lookups()) >= 4).then_some(())
    })
    .await;
    let run = env.wait_status(&build.name(), "in_progress").await;
    notifier.stop().await;
    assert_eq!(proxy.count(&lookups()), 4, "3 refused, then found");
    assert_eq!(
        env.github.check_runs().len(),
        1,
        "the lost creation was found"
    );
    let writes = env.github.check_run_writes();
    assert_eq!(writes.iter().filter(|w| w.created).count(), 1);
    assert_eq!(
        writes.last().map(|w| (w.id, w.created)),
        Some((run.id, false))
    );
}

#[tokio::test]
async fn a_replica_waiting_for_its_write_budget_holds_no_lease_writes_nothing_stale_and_gives_the_budget_back()
 {
    let env = Env::start().await;
    let store = env.store().await;
    let build = Build::new(
        "infrastructure-ci-Runner2:budget",
        SHA,
        v1::Architecture::X8664,
    );
    let (gate, open) = watch::channel(false);
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // A's budget: one write an hour.
    let a = env
        .notifier(
            Env::config(),
            Arc::new(BudgetHeld {
                inner: GitHubCheckRunSink::new(env.client(), 1, 1),
                open,
                waiting: waiting.clone(),
            }),
        )
        .await;
    env.publish(&build.requested()).await;
    wait_until(WAIT, "replica A waiting for its budget", || {
        let waiting = waiting.load(std::sync::atomic::Ordering::SeqCst);
        async move { (waiting >= 1).then_some(()) }
    })
    .await;
    let (record, _) = store.load(&build.build_id).await.unwrap().unwrap();
    assert_eq!(record.check_run.lease, None, "no lease while waiting");
    env.publish(&build.started()).await;
    env.publish(&build.completed(v1::BuildStatus::Succeeded))
        .await;
    wait_until(WAIT, "every event folded", || async {
        let (record, _) = store.load(&build.build_id).await.ok()??;
        (record.view.state == BuildState::Succeeded).then_some(())
    })
    .await;

    // Replica B writes the newest state meanwhile.
    let b = env.live().await;
    env.wait_status(&build.name(), "completed").await;
    b.stop().await;
    // A's budget comes: the run shows the newest view already, A writes nothing and gives the
    // write back, so the build's next event is written at once (not an hour later).
    gate.send(true).unwrap();
    env.publish(&build.publish_applied()).await;
    env.runs_where("the publication shown", |runs| {
        runs.iter()
            .any(|r| summary(r).contains("/prx/stag/Spire/MyApp/pkg/docker-image-tag"))
    })
    .await;
    a.stop().await;
    let writes = env.github.check_run_writes();
    assert_eq!(writes.len(), 2, "B's write, then A's newest: {writes:#?}");
    assert_eq!(
        status_sequence(&writes, writes[0].id),
        ["completed"],
        "nothing stale: {writes:#?}"
    );
}

#[tokio::test]
async fn an_unchanged_run_spends_no_write_budget() {
    let env = Env::start().await;
    let store = env.store().await;
    let build = Build::new(
        "infrastructure-ci-Runner2:unchanged",
        SHA,
        v1::Architecture::X8664,
    );
    // Two writes an hour: the queued run and the running one, none for what changes nothing.
    let notifier = env
        .notifier(
            Env::config(),
            Arc::new(GitHubCheckRunSink::new(env.client(), 2, 2)),
        )
        .await;
    env.publish(&build.requested()).await;
    env.wait_status(&build.name(), "queued").await;
    // The request again, under another event id (a dispatcher's retry): the view moves on,
    // the run it renders does not.
    env.publish(&build.envelope("requested-again", Payload::BuildRequested(build.request())))
        .await;
    wait_until(WAIT, "the unchanged run settled", || async {
        let (record, _) = store.load(&build.build_id).await.ok()??;
        (record.view.version == 2 && !record.check_run_dirty()).then_some(())
    })
    .await;
    let metrics = notifier.metrics();
    assert!(
        metrics.contains(r#"prx_ci_notifier_check_runs_total{outcome="unchanged"} 1"#),
        "{metrics}"
    );
    // The budget's second write is still there.
    env.publish(&build.started()).await;
    env.wait_status(&build.name(), "in_progress").await;
    notifier.stop().await;
    let writes = env.github.check_run_writes();
    assert_eq!(
        status_sequence(&writes, writes[0].id),
        ["queued", "in_progress"]
    );
    assert_eq!(writes.len(), 2, "{writes:#?}");
}
