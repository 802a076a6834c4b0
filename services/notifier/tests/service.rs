//! The notifier against a real nats-server, a fake Slack and the shared stateful fake GitHub
//! (`prx_ci_shared::testing::fake_github`): messages posted once and updated, redeliveries
//! silent, 429s honoured, compare failures degraded, statuses pending then final; and
//! ([`status_faults`]) status writes and posts through a fault proxy.

mod fakes;
mod status_faults;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fakes::{Failure, FakeSlack, SLACK_TOKEN};
use prometheus_client::registry::Registry;
use prx_ci_notifier::commits::GitHubCommitSource;
use prx_ci_notifier::notification_store::NotificationStore;
use prx_ci_notifier::{DeliveryStats, GitHubStatusSink, Notifier, NotifierConfig, SlackClient};
use prx_ci_proto::prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub, FakeStatus};
use prx_ci_shared::testing::fault_proxy::{Fault, FaultProxy, FaultRule, Match};
use prx_ci_shared::testing::{NatsServer, wait_until};
use prx_ci_shared::{CancellationToken, Chain, Runtime, bus::subject};
use secrecy::SecretString;

const WAIT: Duration = Duration::from_secs(20);
const SHA: &str = "165df6a5fd675dcf67a1b2c3d4e5f60718293a4b";
const BEFORE: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const NEWER: &str = "abcdef0123456789abcdef0123456789abcdef01";
const BUILD_ID: &str = "infrastructure-ci-Runner2:6d1c4a38-3f1e-4b7e-9d7a-0f1e2d3c4b5a";
const LOG_URL: &str = "https://logs.example.test/build/6d1c4a38";
/// The fake GitHub's token (token mode).
const GITHUB_TOKEN: &str = "ghp_test";
/// The repositories the tests build, each with the push `BEFORE..SHA`.
const REPOSITORIES: [&str; 4] = [
    "PRX/my-app",
    "PRX/feeder",
    "PRX/console-app",
    "PRX/not-cut-over",
];

struct Env {
    nats: NatsServer,
    rt: Runtime,
    slack: FakeSlack,
    github: FakeGitHub,
    /// Where the notifier reaches GitHub: the fake, or a fault proxy in front of it.
    github_url: String,
}

struct Running {
    stats: DeliveryStats,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

impl Env {
    /// The peers, the push of every repository `commits` commits long.
    async fn start(commits: usize) -> Self {
        let nats = NatsServer::start().await;
        let rt = Runtime::from_client(nats.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        let github = FakeGitHub::start(FakeAuth::Token(GITHUB_TOKEN.into())).await;
        for repository in REPOSITORIES {
            add_push(&github, repository, commits);
        }
        Self {
            nats,
            rt,
            slack: FakeSlack::start().await,
            github_url: github.url(),
            github,
        }
    }

    /// Compare calls GitHub answered.
    fn compare_calls(&self) -> usize {
        self.github
            .requests()
            .iter()
            .filter(|r| r.path.contains("/compare/"))
            .count()
    }

    fn config(&self) -> NotifierConfig {
        let mut config = NotifierConfig::default();
        config.slack.api_url = self.slack.url.clone();
        config.slack.token = Some(SecretString::from(SLACK_TOKEN));
        config.slack.min_interval = Duration::from_millis(20);
        config.links.sso_start_url = Some("https://d-906713e952.awsapps.com/start".into());
        config
            .channel_overrides
            .insert("PRX/feeder".into(), "#feeder-ci".into());
        config
    }

    fn config_shadow(&self) -> NotifierConfig {
        NotifierConfig {
            mode: prx_ci_shared::config::Mode::Shadow,
            ..self.config()
        }
    }

    fn github_client(&self) -> GitHubClient {
        GitHubClient::new(GitHubConfig {
            api_url: self.github_url.clone(),
            token: Some(SecretString::from(GITHUB_TOKEN)),
            ..GitHubConfig::default()
        })
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_attempts: 3,
        })
    }

    async fn notifier(&self, config: NotifierConfig) -> Running {
        let mut registry = Registry::default();
        let rt = Runtime::from_client(self.nats.connect().await, &mut registry);
        let chat = SlackClient::new(&config.slack)
            .unwrap()
            .with_backoff(Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_secs(5),
                max_attempts: 4,
            });
        let statuses = GitHubStatusSink::new(self.github_client(), 80, 500);
        let commits = GitHubCommitSource::new(self.github_client());
        let notifier = Notifier::new(
            rt,
            config,
            Arc::new(chat),
            Arc::new(statuses),
            Some(Arc::new(commits)),
            &mut registry,
        )
        .unwrap();
        let stats = notifier.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(notifier.run(shutdown.clone()));
        Running {
            stats,
            shutdown,
            task,
        }
    }

    async fn publish(&self, envelope: &v1::Envelope) -> bool {
        self.rt.publisher.publish(envelope).await.unwrap().duplicate
    }

    /// The single message of the channel, once `check` accepts it.
    async fn message_where(
        &self,
        what: &str,
        check: impl Fn(&fakes::Message) -> bool,
    ) -> fakes::Message {
        wait_until(WAIT, what, || {
            let found = self.slack.messages().into_iter().find(|m| check(m));
            async move { found }
        })
        .await
    }

    async fn notifications(&self) -> Vec<v1::NotificationDelivered> {
        let stream = self.rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = vec![];
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await
                && let Ok(env) = v1::Envelope::decode(raw.payload)
                && let Some(Payload::NotificationDelivered(n)) = env.payload
            {
                out.push(n);
            }
        }
        out
    }
}

fn build_ref(repository: &str, build_id: &str) -> v1::BuildRef {
    v1::BuildRef {
        build_id: build_id.into(),
        build_request_id: format!("req-{build_id}"),
        repository: repository.into(),
        commit: SHA.into(),
        architecture: v1::Architecture::X8664 as i32,
        backend: "codebuild".into(),
        project: "infrastructure-ci-Runner2".into(),
        region: "us-east-1".into(),
        log_url: LOG_URL.into(),
        retry_of: String::new(),
        shadowed: false,
    }
}

fn env(repository: &str) -> HashMap<String, String> {
    [
        ("PRX_REPO", repository),
        ("PRX_COMMIT", SHA),
        ("PRX_BRANCH", "main"),
        ("PRX_CI_PUBLISH", "true"),
        ("PRX_GITHUB_BEFORE", BEFORE),
        ("PRX_GITHUB_AFTER", SHA),
        ("PRX_TARGET_ARCHITECTURE", "x86_64"),
        ("PRX_AWS_ACCOUNT_ID", "123456789012"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The events of one build, with deterministic ids (as the producers make them).
struct Events {
    /// The original's build adopted in shadow mode (`BuildRef.shadowed`).
    shadowed: bool,
    repository: String,
    build_id: String,
    /// Whether the dispatcher requested it (its request travels on the build's events).
    requested: bool,
    /// What the build exported besides its artifact variables.
    exported: HashMap<String, String>,
}

impl Events {
    fn new(repository: &str, build_id: &str) -> Self {
        Self {
            repository: repository.into(),
            build_id: build_id.into(),
            requested: true,
            shadowed: false,
            exported: HashMap::new(),
        }
    }

    /// The original system's build, adopted into a shadow request's chain (shadow mode).
    fn shadowed(mut self) -> Self {
        self.shadowed = true;
        self
    }

    /// Started in the console: no request anywhere.
    fn unrequested(mut self) -> Self {
        self.requested = false;
        self
    }

    fn exporting(mut self, name: &str, value: &str) -> Self {
        self.exported.insert(name.into(), value.into());
        self
    }

    /// The dispatcher's request as the build-watcher carries it (buildspec omitted).
    fn request(&self) -> Option<v1::BuildRequested> {
        self.requested.then(|| v1::BuildRequested {
            build: self.build(),
            environment: env(&self.repository),
            event_name: "push".into(),
            source_version: SHA.into(),
            branch: "main".into(),
            ..Default::default()
        })
    }

    fn envelope(&self, name: &str, payload: Payload) -> v1::Envelope {
        let chain = Chain {
            correlation_id: format!("delivery-{}", self.build_id),
            causation_id: format!("webhook-{}", self.build_id),
            ..Chain::default()
        };
        chain.envelope(chain.derive_id(&[name]), payload)
    }

    fn build(&self) -> Option<v1::BuildRef> {
        Some(v1::BuildRef {
            shadowed: self.shadowed,
            ..build_ref(&self.repository, &self.build_id)
        })
    }

    fn requested(&self) -> v1::Envelope {
        self.envelope(
            "requested",
            Payload::BuildRequested(v1::BuildRequested {
                build: self.build(),
                environment: env(&self.repository),
                event_name: "push".into(),
                source_version: SHA.into(),
                ..Default::default()
            }),
        )
    }

    fn started(&self) -> v1::Envelope {
        self.envelope(
            "started",
            Payload::BuildStarted(v1::BuildStarted {
                build: self.build(),
                requested: self.request(),
                ..Default::default()
            }),
        )
    }

    fn phase(&self, completed: &str, current: &str) -> v1::Envelope {
        self.envelope(
            &format!("phase-{completed}"),
            Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
                build: self.build(),
                completed_phase: completed.into(),
                completed_phase_status: "SUCCEEDED".into(),
                current_phase: current.into(),
                duration_ms: 5_000,
                ..Default::default()
            }),
        )
    }

    fn completed(&self, status: v1::BuildStatus) -> v1::Envelope {
        let mut exported: HashMap<String, String> = [
            (
                "PRX_SPIRE_ECR_PKG_PARAMETERS".to_owned(),
                "RAILS_APP=/prx/stag/Spire/MyApp/pkg/docker-image-tag".to_owned(),
            ),
            (
                "RAILS_APP".to_owned(),
                format!("github/prx/my-app:{SHA}-x86_64"),
            ),
        ]
        .into_iter()
        .collect();
        exported.extend(self.exported.clone());
        self.envelope(
            "completed",
            Payload::BuildCompleted(v1::BuildCompleted {
                build: self.build(),
                requested: self.request(),
                status: status as i32,
                exported_variables: exported,
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
                value: format!("github/prx/my-app:{SHA}-x86_64"),
                kind: v1::ArtifactKind::EcrImage as i32,
                label: "RAILS_APP".into(),
                build: self.build(),
                version: 3,
                shadow: false,
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

/// The push `BEFORE..SHA` of `repository`: `n` commits, `Commit 0` first, the second by
/// someone without a GitHub account.
fn add_push(github: &FakeGitHub, repository: &str, n: usize) {
    github.add_commit(repository, FakeCommit::new(BEFORE));
    let mut parent = BEFORE.to_owned();
    for i in 0..n {
        let sha = if i + 1 == n {
            SHA.to_owned()
        } else {
            format!("{i:02x}{}", &SHA[2..])
        };
        let login = (i != 1).then_some("octocat");
        github.add_commit(
            repository,
            FakeCommit::new(sha.clone())
                .parent(parent)
                .message(format!("Commit {i}\n\nbody"))
                .author("Git Author", login),
        );
        parent = sha;
    }
}

fn status_states(statuses: &[FakeStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.state.clone()).collect()
}

#[tokio::test]
async fn one_build_life_posts_once_then_updates_and_sets_statuses() {
    let env = Env::start(3).await;
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);

    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    // Pending first, with the per-architecture context and the log link.
    let pending = wait_until(WAIT, "the pending status", || {
        let statuses = env.github.statuses();
        async move { (!statuses.is_empty()).then_some(statuses) }
    })
    .await;
    let status = &pending[0];
    assert_eq!(
        (status.repository.as_str(), status.sha.as_str()),
        ("PRX/my-app", SHA)
    );
    assert_eq!(status.state, "pending");
    assert_eq!(status.context, "prx-ci/x86_64");
    assert_eq!(status.target_url.as_deref(), Some(LOG_URL));
    assert_eq!(
        status.description.as_deref(),
        Some("Build has started running")
    );

    // The message is up: later events must update it.
    env.message_where("the first message", |m| m.text.contains("» Building"))
        .await;

    env.publish(&build.phase("INSTALL", "BUILD")).await;
    env.publish(&build.completed(v1::BuildStatus::Succeeded))
        .await;
    env.publish(&build.publish_applied()).await;

    let message = env
        .message_where("the message to show the build and the publish", |m| {
            m.mrkdwn
                .contains("» Set `/prx/stag/Spire/MyApp/pkg/docker-image-tag`")
                && m.text.contains("» Built")
        })
        .await;
    assert_eq!(env.slack.calls("chat.postMessage").len(), 1, "posted once");
    assert!(!env.slack.calls("chat.update").is_empty(), "then updated");
    assert_eq!(env.slack.messages().len(), 1);
    assert_eq!(message.channel, "COPSBUILD");
    assert_eq!(message.color, "#2eb886");
    assert!(
        message
            .text
            .starts_with("N. Virginia » Built x86_64 PRX/my-app `main` branch"),
        "{}",
        message.text
    );
    assert!(message.mrkdwn.contains("» Docker image pushed to <https://d-906713e952.awsapps.com/start/#/console?account_id=123456789012&role_name=AdministratorAccess&destination="), "{}", message.mrkdwn);
    assert!(message.mrkdwn.contains("» Took 1m 35s"));
    assert!(message.mrkdwn.contains("octocat: Commit 0"));
    assert!(
        message.mrkdwn.contains("Git Author: Commit 1"),
        "author without login"
    );
    // The original's envelope: username and icon on the post.
    let post = &env.slack.calls("chat.postMessage")[0].body;
    assert_eq!(post["username"], "AWS CodeBuild");
    assert_eq!(post["icon_emoji"], ":ops-codebuild:");
    // The compare result is cached: one call for the whole life.
    assert_eq!(env.compare_calls(), 1);

    let statuses = wait_until(WAIT, "the final status", || {
        let statuses = env.github.statuses();
        async move {
            (status_states(&statuses).last().map(String::as_str) == Some("success"))
                .then_some(statuses)
        }
    })
    .await;
    assert_eq!(status_states(&statuses), ["pending", "success"]);
    assert_eq!(statuses[1].description.as_deref(), Some("Build complete"));
    assert_eq!(statuses[1].target_url.as_deref(), Some(LOG_URL));

    // History: the post, updates and statuses are recorded as events.
    let delivered = wait_until(WAIT, "notification events", || async {
        let n = env.notifications().await;
        let has = |action: &str| n.iter().any(|n| n.action == action);
        (has("success") && has("updated") && has("posted")).then_some(n)
    })
    .await;
    assert_eq!(delivered.iter().filter(|n| n.action == "posted").count(), 1);
    assert!(delivered.iter().any(|n| n.action == "updated"));
    assert!(
        delivered
            .iter()
            .any(|n| n.action == "pending" && n.reference == "prx-ci/x86_64")
    );
    running.stop().await;
}

#[tokio::test]
async fn redelivered_events_post_nothing_again() {
    let env = Env::start(1).await;
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/feeder", BUILD_ID);
    let events = [
        build.requested(),
        build.started(),
        build.completed(v1::BuildStatus::Succeeded),
        build.publish_applied(),
    ];
    for event in &events {
        env.publish(event).await;
    }
    env.message_where("the final message", |m| {
        m.mrkdwn.contains("» Set `") && m.text.contains("» Built")
    })
    .await;
    // Quiet: the record says the message and the status show the latest view.
    let store = NotificationStore::open(&env.rt.js, "prx_ci_notifications")
        .await
        .unwrap();
    wait_until(WAIT, "the first instance to settle", || async {
        let (record, _) = store.load(BUILD_ID).await.ok()??;
        (record.view.version == 4
            && !record.chat_dirty()
            && record.status.written.as_ref()?.state.as_str() == "success")
            .then_some(())
    })
    .await;
    // The override channel.
    assert_eq!(env.slack.messages()[0].channel, "CFEEDERCI");
    let calls_before = env.slack.all_calls().len();
    let statuses_before = env.github.statuses().len();

    // The same envelopes again: JetStream collapses them.
    for event in &events {
        assert!(env.publish(event).await, "deduplicated by id");
    }
    running.stop().await;

    // A full replay through the consumer (a new durable from the start) into a second
    // notifier instance.
    let stream = env.rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    stream.delete_consumer("notifier").await.unwrap();
    env.rt.provision(1).await.unwrap();
    let replay = env.notifier(env.config()).await;
    wait_until(WAIT, "the replay to be consumed", || async {
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("notifier")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0)
            .then_some(())
    })
    .await;
    // Every event came back and changed nothing, so nothing was even queued.
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&replay.stats.events_applied), 0);
    assert_eq!(load(&replay.stats.chat_requested), 0);
    assert_eq!(load(&replay.stats.statuses_requested), 0);
    replay.stop().await;
    assert_eq!(env.slack.calls("chat.postMessage").len(), 1);
    assert_eq!(
        env.slack.all_calls().len(),
        calls_before,
        "no post, no update"
    );
    assert_eq!(
        env.github.statuses().len(),
        statuses_before,
        "no status written again"
    );
    assert_eq!(env.slack.messages().len(), 1);
}

#[tokio::test]
async fn slack_429_retry_after_is_honoured() {
    let env = Env::start(1).await;
    env.slack.fail_next(
        "chat.postMessage",
        vec![Failure {
            status: 429,
            retry_after: Some(1),
            error: Some("ratelimited"),
        }],
    );
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.message_where("the message after the rate limit", |_| true)
        .await;
    let posts = env.slack.calls("chat.postMessage");
    assert_eq!(posts.len(), 2, "one refused, one accepted");
    let waited = posts[1].at.duration_since(posts[0].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert_eq!(env.slack.messages().len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_failing_compare_still_produces_a_message() {
    let mut env = Env::start(1).await;
    let compares = Match::any()
        .method("GET")
        .path_prefix("/repos/PRX/my-app/compare/");
    let proxy = FaultProxy::start(&env.github.url()).await;
    proxy.add(FaultRule::new(compares.clone(), Fault::server_error(502)));
    env.github_url = proxy.url();
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    let message = env
        .message_where("a degraded message", |m| {
            m.mrkdwn.contains("_(commit list unavailable)_")
        })
        .await;
    assert!(message.mrkdwn.contains("Building"));
    env.publish(&build.completed(v1::BuildStatus::Failed)).await;
    env.message_where("the final message", |m| {
        m.mrkdwn.contains("Failed to build")
    })
    .await;
    // Retried within the call (3 attempts), then cached as unavailable: not fetched again.
    assert_eq!(proxy.count(&compares), 3);
    assert_eq!(env.slack.calls("chat.postMessage").len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_superseded_build_says_so_in_slack_and_in_its_status() {
    let env = Env::start(1).await;
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    env.publish(&build.cancelled()).await;
    let message = env
        .message_where("the superseded message", |m| {
            m.mrkdwn.contains("Superseded")
        })
        .await;
    assert!(message.text.contains("Stopped building"));
    assert_eq!(message.color, "#a30200");
    assert!(message.mrkdwn.contains("commit <https://github.com/PRX/my-app/commit/abcdef0123456789abcdef0123456789abcdef01|abcdef0>"));
    let statuses = wait_until(WAIT, "the error status", || {
        let statuses = env.github.statuses();
        async move {
            (status_states(&statuses).last().map(String::as_str) == Some("error"))
                .then_some(statuses)
        }
    })
    .await;
    assert_eq!(
        statuses.last().unwrap().description.as_deref(),
        Some("Superseded by abcdef0")
    );
    running.stop().await;
}

#[tokio::test]
async fn a_post_whose_reference_was_lost_is_found_not_repeated() {
    let env = Env::start(1).await;
    let mut config = env.config();
    // Recovery reads the channel's history, which needs the channel's id.
    config.channel = "C0OPSBUILD".into();
    // The state a crash leaves: the event applied, the post marker set, the post done in
    // Slack, but its `ts` never stored.
    let store = NotificationStore::open(&env.rt.js, &config.bucket)
        .await
        .unwrap();
    let build = Events::new("PRX/my-app", BUILD_ID);
    store
        .modify(BUILD_ID, |record| {
            record.view.apply(&build.requested()).unwrap();
            record.slack.post_started_at = Some(time::OffsetDateTime::now_utc());
            prx_ci_shared::kv::Modify::Write(())
        })
        .await
        .unwrap();
    let ts = env
        .slack
        .seed("C0OPSBUILD", BUILD_ID, "posted before the crash");

    let running = env.notifier(config).await;
    let message = env
        .message_where("the found message to be updated", |m| m.updates > 0)
        .await;
    assert_eq!(message.ts, ts);
    assert!(message.mrkdwn.contains("Building"));
    assert!(
        env.slack.calls("chat.postMessage").is_empty(),
        "no second post"
    );
    assert_eq!(env.slack.calls("conversations.history").len(), 1);
    // The found reference is stored and the post marker cleared.
    let record = wait_until(WAIT, "the found reference to be stored", || async {
        let (record, _) = store.load(BUILD_ID).await.ok()??;
        record.slack.reference.is_some().then_some(record)
    })
    .await;
    assert_eq!(record.slack.reference.unwrap().ts, ts);
    assert_eq!(record.slack.post_started_at, None);
    running.stop().await;
}

#[tokio::test]
async fn one_channel_is_paced_and_bursts_coalesce() {
    let env = Env::start(1).await;
    let mut config = env.config();
    let interval = Duration::from_millis(150);
    config.slack.min_interval = interval;
    config.statuses.enabled = false;
    let running = env.notifier(config).await;
    let builds: Vec<Events> = (0..5)
        .map(|i| Events::new("PRX/my-app", &format!("{BUILD_ID}-{i}")))
        .collect();
    let mut published = 0;
    for build in &builds {
        for event in [
            build.requested(),
            build.started(),
            build.phase("INSTALL", "PRE_BUILD"),
            build.phase("PRE_BUILD", "BUILD"),
            build.completed(v1::BuildStatus::Succeeded),
        ] {
            env.publish(&event).await;
            published += 1;
        }
    }
    wait_until(WAIT, "every build to show as built", || {
        let messages = env.slack.messages();
        async move {
            (messages.len() == 5 && messages.iter().all(|m| m.text.contains("» Built")))
                .then_some(())
        }
    })
    .await;
    let calls = env.slack.all_calls();
    for pair in calls.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // The pace is measured between requests leaving; allow for scheduling jitter.
        assert!(
            gap + Duration::from_millis(40) >= interval,
            "calls {gap:?} apart"
        );
    }
    assert!(
        calls.len() < published,
        "{} calls for {published} events",
        calls.len()
    );
    assert_eq!(env.slack.calls("chat.postMessage").len(), 5);
    running.stop().await;
}

#[tokio::test]
async fn a_rejected_post_is_not_retried_in_a_loop_and_the_next_event_tries_again() {
    let env = Env::start(1).await;
    env.slack.fail_next(
        "chat.postMessage",
        vec![Failure {
            status: 200,
            retry_after: None,
            error: Some("channel_not_found"),
        }],
    );
    let config = env.config();
    let store = NotificationStore::open(&env.rt.js, &config.bucket)
        .await
        .unwrap();
    let running = env.notifier(config).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    let record = wait_until(WAIT, "the rejection to be recorded", || async {
        let (record, _) = store.load(BUILD_ID).await.ok()??;
        record.slack.last_error.is_some().then_some(record)
    })
    .await;
    assert!(
        record
            .slack
            .last_error
            .as_deref()
            .unwrap()
            .contains("channel_not_found")
    );
    assert!(!record.chat_dirty(), "given up for this version");
    assert_eq!(env.slack.calls("chat.postMessage").len(), 1);
    assert!(env.slack.messages().is_empty());

    // The channel is fixed; the next event posts.
    env.publish(&build.started()).await;
    env.message_where("the message after the fix", |_| true)
        .await;
    assert_eq!(env.slack.calls("chat.postMessage").len(), 2);
    running.stop().await;
}

#[tokio::test]
async fn a_deleted_message_is_posted_again_on_the_next_event() {
    let env = Env::start(1).await;
    let running = env.notifier(env.config()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    let first = env.message_where("the first message", |_| true).await;
    env.slack.delete_all();
    env.publish(&build.started()).await;
    env.publish(&build.completed(v1::BuildStatus::Succeeded))
        .await;
    let second = env
        .message_where("a new message", |m| m.text.contains("» Built"))
        .await;
    assert_ne!(first.ts, second.ts);
    assert_eq!(env.slack.messages().len(), 1);
    assert!(
        !env.slack.calls("chat.update").is_empty(),
        "the update was tried first"
    );
    running.stop().await;
}

#[tokio::test]
async fn local_mode_logs_messages_and_statuses() {
    let env = Env::start(1).await;
    let config = env.config();
    let store = NotificationStore::open(&env.rt.js, &config.bucket)
        .await
        .unwrap();
    let mut registry = Registry::default();
    let rt = Runtime::from_client(env.nats.connect().await, &mut registry);
    let notifier = Notifier::new(
        rt,
        config,
        Arc::new(prx_ci_notifier::LogChatSink::new()),
        Arc::new(prx_ci_notifier::LogStatusSink),
        None,
        &mut registry,
    )
    .unwrap();
    let stats = notifier.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(notifier.run(shutdown.clone()));
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    env.publish(&build.completed(v1::BuildStatus::Succeeded))
        .await;
    let record = wait_until(WAIT, "the build to be delivered to the log", || async {
        let (record, _) = store.load(BUILD_ID).await.ok()??;
        (record.view.version == 3
            && !record.chat_dirty()
            && record.status.written.as_ref()?.state.as_str() == "success")
            .then_some(record)
    })
    .await;
    assert_eq!(record.slack.reference.unwrap().ts, "log.1", "posted once");
    assert!(
        stats
            .statuses_written
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(env.slack.all_calls().is_empty() && env.github.statuses().is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn replayed_old_history_is_recorded_but_not_announced() {
    let env = Env::start(1).await;
    let config = env.config();
    let store = NotificationStore::open(&env.rt.js, &config.bucket)
        .await
        .unwrap();
    let running = env.notifier(config).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::days(4);
    for mut event in [build.requested(), build.started()] {
        event.time = Some(prx_ci_shared::bus::envelope::timestamp(long_ago));
        env.publish(&event).await;
    }
    let stream = env.rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    wait_until(WAIT, "the old events to be consumed", || async {
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("notifier")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence >= 2)
            .then_some(())
    })
    .await;
    let (record, _) = store.load(BUILD_ID).await.unwrap().unwrap();
    assert_eq!(record.view.version, 2);
    assert!(!record.chat_dirty());
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&running.stats.chat_requested), 0);
    assert_eq!(load(&running.stats.statuses_requested), 0);
    running.stop().await;
    assert!(env.slack.all_calls().is_empty());
    assert!(env.github.statuses().is_empty());
}

#[tokio::test]
async fn two_replicas_post_each_build_exactly_once() {
    let env = Env::start(1).await;
    let mut config = env.config();
    config.statuses.enabled = false;
    config.concurrency = 4;
    let a = env.notifier(config.clone()).await;
    let b = env.notifier(config).await;
    let builds: Vec<Events> = (0..12)
        .map(|i| Events::new("PRX/my-app", &format!("{BUILD_ID}-{i}")))
        .collect();
    for build in &builds {
        for event in [
            build.requested(),
            build.started(),
            build.phase("INSTALL", "BUILD"),
            build.completed(v1::BuildStatus::Succeeded),
            build.publish_applied(),
        ] {
            env.publish(&event).await;
        }
    }
    wait_until(WAIT, "every build's final message", || {
        let messages = env.slack.messages();
        async move {
            (messages.len() == 12
                && messages
                    .iter()
                    .all(|m| m.text.contains("» Built") && m.mrkdwn.contains("» Set `")))
            .then_some(())
        }
    })
    .await;
    let posts = env.slack.calls("chat.postMessage");
    assert_eq!(posts.len(), 12, "one post per build across both replicas");
    let mut builds_posted: Vec<String> = posts
        .iter()
        .map(|c| c.body["metadata"]["event_payload"]["build"].to_string())
        .collect();
    builds_posted.sort();
    builds_posted.dedup();
    assert_eq!(builds_posted.len(), 12);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn markup_a_build_exports_reaches_slack_inert() {
    let env = Env::start(1).await;
    let mut config = env.config();
    config.statuses.enabled = false;
    let running = env.notifier(config).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    env.message_where("the first message", |_| true).await;

    // The buildspec exports markup in every value the message shows.
    let hostile = "<!channel> <@U123> @here <https://evil|click>";
    let mut exported: HashMap<String, String> = [
        "PRX_REPO",
        "PRX_BRANCH",
        "PRX_COMMIT",
        "PRX_GITHUB_PR",
        "PRX_GITHUB_PR_TITLE",
        "PRX_GITHUB_PR_AUTHOR",
        "PRX_GITHUB_PR_BASE_BRANCH",
        "PRX_GITHUB_ACTION",
        "PRX_AWS_ACCOUNT_ID",
        "PRX_APPLICATION_CODE_BUCKET",
        "ZIP",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), hostile.to_owned()))
    .collect();
    exported.extend([
        (
            "PRX_SPIRE_ECR_PKG_PARAMETERS".to_owned(),
            format!("IMAGE=/prx/stag/Spire/{hostile}"),
        ),
        (
            "IMAGE".to_owned(),
            format!("github/prx/{hostile}:{SHA}-x86_64"),
        ),
        (
            "PRX_SPIRE_S3_PKG_PARAMETERS".to_owned(),
            "ZIP=/prx/stag/Spire/MyApp/pkg/s3-object-key".to_owned(),
        ),
    ]);
    env.publish(&build.envelope(
        "completed",
        Payload::BuildCompleted(v1::BuildCompleted {
            build: build.build(),
            status: v1::BuildStatus::Failed as i32,
            exported_variables: exported,
            failed_phase: hostile.into(),
            failure_message: hostile.into(),
            duration_ms: 95_000,
            ..Default::default()
        }),
    ))
    .await;
    let message = env
        .message_where("the final message", |m| m.text.contains("Failed to build"))
        .await;
    running.stop().await;

    let allowed = [
        "https://us-east-1.console.aws.amazon.com/",
        "https://d-906713e952.awsapps.com/start/#/console?",
        "https://github.com/PRX/my-app/",
    ];
    assert!(
        message
            .mrkdwn
            .contains("&lt;!channel&gt; &lt;@U123&gt; ＠here &lt;https://evil|click&gt;"),
        "{}",
        message.mrkdwn
    );
    let mut sent = 0;
    for call in env.slack.all_calls() {
        let body = &call.body;
        if !["chat.postMessage", "chat.update"].contains(&call.method.as_str()) {
            continue;
        }
        assert_eq!(body["parse"], "none", "{}", call.method);
        assert_eq!(body["link_names"], false, "{}", call.method);
        let mrkdwn = body["attachments"][0]["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap();
        fakes::assert_inert(mrkdwn, &allowed);
        fakes::assert_inert(body["text"].as_str().unwrap(), &allowed);
        sent += 1;
    }
    assert!(sent >= 2, "posted, then updated with the exported values");
}

#[tokio::test]
async fn statuses_and_slack_facts_follow_the_request_never_the_exports() {
    const OTHER_SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
    let env = Env::start(1).await;
    // What the builds claim exists on GitHub: a status written there would land.
    env.github
        .add_commit("Evil/other", FakeCommit::new(OTHER_SHA));
    let running = env.notifier(env.config()).await;
    // Started in the console, claiming a repository and commit: no status anywhere.
    let console = Events::new("PRX/console-app", "console:1")
        .unrequested()
        .exporting("PRX_REPO", "Evil/other")
        .exporting("PRX_COMMIT", OTHER_SHA);
    // Requested by the dispatcher for PRX/my-app, exporting another repository's identity.
    let lying = Events::new("PRX/my-app", BUILD_ID)
        .exporting("PRX_REPO", "Evil/other")
        .exporting("PRX_COMMIT", OTHER_SHA)
        .exporting("PRX_BRANCH", "evil-branch")
        .exporting("PRX_GITHUB_PR", "4242");
    let events = [
        console.started(),
        console.completed(v1::BuildStatus::Succeeded),
        lying.started(),
        lying.completed(v1::BuildStatus::Succeeded),
    ];
    for event in &events {
        env.publish(event).await;
    }
    let stats = running.stats.clone();
    let total = events.len() as u64;
    let statuses = wait_until(WAIT, "every event applied and every status written", || {
        let statuses = env.github.statuses();
        let applied = stats
            .events_applied
            .load(std::sync::atomic::Ordering::SeqCst);
        let requested = stats
            .statuses_requested
            .load(std::sync::atomic::Ordering::SeqCst);
        let written = stats
            .statuses_written
            .load(std::sync::atomic::Ordering::SeqCst);
        async move {
            (applied >= total
                && written == requested
                && status_states(&statuses).last().map(String::as_str) == Some("success"))
            .then_some(statuses)
        }
    })
    .await;
    assert!(!statuses.is_empty());
    for status in &statuses {
        assert_eq!(
            (status.repository.as_str(), status.sha.as_str()),
            ("PRX/my-app", SHA),
            "{statuses:#?}"
        );
    }
    let message = env
        .message_where("the requested build's message", |m| {
            m.text.contains("» Built") && m.text.contains("PRX/my-app")
        })
        .await;
    assert!(
        message
            .text
            .starts_with("N. Virginia » Built x86_64 PRX/my-app `main` branch"),
        "{}",
        message.text
    );
    for text in [&message.text, &message.mrkdwn] {
        for lie in [
            "Evil/other",
            OTHER_SHA,
            &OTHER_SHA[..7],
            "evil-branch",
            "4242",
        ] {
            assert!(!text.contains(lie), "{lie} in {text}");
        }
    }
    let console_message = env
        .message_where("the console build's message", |m| {
            m.text.contains("» Built") && m.text.contains("PRX/console-app")
        })
        .await;
    assert!(
        !console_message.text.contains("Evil/other"),
        "{}",
        console_message.text
    );
    running.stop().await;
}

#[tokio::test]
async fn records_written_by_earlier_versions_read_and_write_back_unchanged() {
    // The key and the JSON exactly as the notifier wrote them before its records moved to
    // `shared::kv` (its own key encoder and compare-and-set loop).
    const KEY_WRITTEN_BEFORE: &str =
        "b.infrastructure-ci-Runner2=3A6d1c4a38-3f1e-4b7e-9d7a-0f1e2d3c4b5a";
    let json = include_str!("../src/testdata/notification_record.json").trim_end();
    let env = Env::start(1).await;
    let config = env.config();
    let store = NotificationStore::open(&env.rt.js, &config.bucket)
        .await
        .unwrap();
    let raw = env.rt.js.get_key_value(&config.bucket).await.unwrap();
    raw.put(KEY_WRITTEN_BEFORE, json.as_bytes().to_vec().into())
        .await
        .unwrap();

    assert_eq!(store.build_keys().await.unwrap(), vec![BUILD_ID.to_owned()]);
    let (record, _) = store.load(BUILD_ID).await.unwrap().unwrap();
    assert_eq!(record.view.version, 5);
    assert_eq!(record.slack.deliveries, 2);
    store
        .modify(BUILD_ID, |_| prx_ci_shared::kv::Modify::Write(()))
        .await
        .unwrap();
    let stored = raw.get(KEY_WRITTEN_BEFORE).await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&stored).unwrap(), json);
    assert_eq!(store.build_keys().await.unwrap(), vec![BUILD_ID.to_owned()]);
}

#[tokio::test]
async fn shadow_mode_records_what_it_would_send_and_sends_nothing() {
    let env = Env::start(3).await;
    let running = env.notifier(env.config_shadow()).await;
    let build = Events::new("PRX/my-app", BUILD_ID);

    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;
    // The would-be post and pending status first, so that later events are would-be updates.
    wait_until(WAIT, "the shadow post and pending status", || async {
        let n = env.notifications().await;
        let has = |action: &str| n.iter().any(|n| n.action == action);
        (has("posted") && has("pending")).then_some(())
    })
    .await;
    for event in [
        build.phase("INSTALL", "BUILD"),
        build.completed(v1::BuildStatus::Succeeded),
        build.publish_applied(),
    ] {
        env.publish(&event).await;
    }
    // Would-be post, updates and both statuses, each recorded once, as shadow.
    let delivered = wait_until(WAIT, "shadow notification events", || async {
        let n = env.notifications().await;
        let has = |action: &str| n.iter().any(|n| n.action == action);
        (has("posted") && has("updated") && has("pending") && has("success")).then_some(n)
    })
    .await;
    running.stop().await;
    assert!(
        delivered.iter().all(|n| n.shadow && n.reference.is_empty()),
        "{delivered:#?}"
    );
    assert_eq!(delivered.iter().filter(|n| n.action == "posted").count(), 1);
    assert!(
        env.slack.all_calls().is_empty(),
        "{:?}",
        env.slack.all_calls()
    );
    assert!(env.github.statuses().is_empty());
}

#[tokio::test]
async fn a_live_notifier_leaves_the_originals_adopted_builds_to_the_original() {
    let env = Env::start(3).await;
    let running = env.notifier(env.config()).await;
    // A repository not cut over: its original build, adopted (shadow mode's dispatcher and
    // build-watcher beside a live notifier), then a cut-over repository's own build.
    let original = Events::new("PRX/not-cut-over", "infrastructure-ci-Runner2:0001").shadowed();
    let own = Events::new("PRX/my-app", BUILD_ID);
    for build in [&original, &own] {
        env.publish(&build.started()).await;
        env.publish(&build.completed(v1::BuildStatus::Succeeded))
            .await;
    }
    let delivered = wait_until(WAIT, "the cut-over build's post and status", || async {
        let n = env.notifications().await;
        let has = |action: &str| n.iter().any(|n| n.action == action);
        (has("posted") && has("success")).then_some(n)
    })
    .await;
    running.stop().await;
    let about = |n: &v1::NotificationDelivered| n.build.as_ref().unwrap().build_id.clone();
    assert!(
        delivered.iter().all(|n| about(n) == BUILD_ID && !n.shadow),
        "{delivered:#?}"
    );
    assert!(
        env.slack
            .all_calls()
            .iter()
            .all(|call| !format!("{call:?}").contains("not-cut-over")),
        "{:?}",
        env.slack.all_calls()
    );
}
