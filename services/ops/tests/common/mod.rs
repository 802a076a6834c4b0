//! Shared test fixtures: a real nats-server, a running ops service, a connected client, and
//! builders for the events a story needs.
#![allow(
    dead_code,
    reason = "each test binary uses its own part of the fixtures"
)]

use std::time::Duration;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use prx_ci_ops::ancestry::Ancestry;
use prx_ci_ops::api::ParameterOwnership;
use prx_ci_ops::client::{self, Client};
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub};
use prx_ci_shared::testing::fault_proxy::FaultProxy;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;

pub const WAIT: Duration = Duration::from_secs(20);
pub const TOKEN: &str = "test-token-0123456789";
/// The operator `TOKEN` authenticates as.
pub const OPERATOR: &str = "alice";
/// A second operator's token.
pub const BOB_TOKEN: &str = "bob-token-0123456789";

pub struct Harness {
    pub server: NatsServer,
    pub rt: Runtime,
    pub url: String,
    /// The web dashboard's base URL (`http://127.0.0.1:<port>`).
    pub dashboard: String,
    /// The GitHub the ops service checks commit ancestry with (compare over its commit
    /// graph: [`Harness::commit`]).
    pub github: FakeGitHub,
    /// Between the ops service and [`Harness::github`]: faults, and the requests made.
    pub github_proxy: FaultProxy,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(OpsConfig::default()).await
    }

    pub async fn start_with(config: OpsConfig) -> Self {
        Self::start_owning(config, ParameterOwnership::default()).await
    }

    /// With the publisher's parameter ownership settings.
    pub async fn start_owning(mut config: OpsConfig, ownership: ParameterOwnership) -> Self {
        let server = NatsServer::start().await;
        let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        config.token = Some(SecretString::from(TOKEN));
        config.token_name = OPERATOR.into();
        config
            .tokens
            .insert("bob".into(), SecretString::from(BOB_TOKEN));
        let github = FakeGitHub::start(FakeAuth::Anonymous).await;
        let github_proxy = FaultProxy::start(&github.url()).await;
        let client = GitHubClient::new(GitHubConfig {
            api_url: github_proxy.url(),
            ..GitHubConfig::default()
        })
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_attempts: 2,
        });
        let service = OpsService::new(rt.clone(), config, &mut Registry::default())
            .unwrap()
            .with_commit_graph(Arc::new(Ancestry::new(client)))
            .with_ownership(ownership);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dashboard = format!("http://{}", web.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.with_dashboard(web).run(listener, shutdown.clone()));
        Self {
            server,
            rt,
            url,
            dashboard,
            github,
            github_proxy,
            shutdown,
            task,
        }
    }

    /// A second ops service on the same NATS (as after a restart), authenticated like the
    /// first; stops with [`Harness::shutdown`]. Returns a client of it.
    pub async fn another_ops(&self) -> Client {
        let config = OpsConfig {
            token: Some(SecretString::from(TOKEN)),
            token_name: OPERATOR.into(),
            ..OpsConfig::default()
        };
        let service = OpsService::new(self.rt.clone(), config, &mut Registry::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(service.run(listener, self.shutdown.clone()));
        client::connect(&url, Some(&SecretString::from(TOKEN)), None)
            .await
            .unwrap()
    }

    /// A client authenticated as [`OPERATOR`].
    pub async fn client(&self) -> Client {
        self.client_with(TOKEN).await
    }

    pub async fn client_with(&self, token: &str) -> Client {
        client::connect(&self.url, Some(&SecretString::from(token)), None)
            .await
            .unwrap()
    }

    /// Adds commit `sha` with `parents` to `repository` on the fake GitHub (compare answers
    /// from this graph: `ahead`, `behind`, `identical`, `diverged`, 404 for an unknown commit).
    pub fn commit(&self, repository: &str, sha: &str, parents: &[&str]) {
        let commit = parents.iter().fold(FakeCommit::new(sha), |commit, parent| {
            commit.parent(*parent)
        });
        self.github.add_commit(repository, commit);
    }

    /// The compare requests made to GitHub (also those a fault answered).
    pub async fn compares(&self) -> Vec<String> {
        self.github_proxy
            .requests()
            .into_iter()
            .map(|r| r.path)
            .filter(|p| p.contains("/compare/"))
            .collect()
    }

    /// `GET path` on the dashboard as the operator of [`TOKEN`] (bearer), redirects not
    /// followed: the status and the body.
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{}{path}", self.dashboard))
            .header(reqwest::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn publish(&self, envelope: &v1::Envelope) -> u64 {
        self.rt.publisher.publish(envelope).await.unwrap().sequence
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

pub fn repo_json(full_name: &str) -> serde_json::Value {
    let (owner, _) = full_name.split_once('/').unwrap();
    serde_json::json!({
        "full_name": full_name,
        "default_branch": "main",
        "clone_url": format!("https://github.com/{full_name}.git"),
        "owner": {"login": owner},
    })
}

/// A webhook as ingress stores it (event id = delivery id).
pub fn webhook(
    delivery: &str,
    event_name: &str,
    repository: &str,
    payload: &serde_json::Value,
) -> v1::Envelope {
    Chain::starting(delivery).envelope(
        delivery.into(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: delivery.into(),
            event_name: event_name.into(),
            payload: payload.to_string().into_bytes().into(),
            repository: repository.into(),
            origin: v1::Origin::Github as i32,
            ..Default::default()
        }),
    )
}

/// A push webhook as ingress stores it (event id = delivery id).
pub fn push(delivery: &str, repository: &str, branch: &str, after: &str) -> v1::Envelope {
    let payload = serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": sha('0'),
        "after": after,
        "repository": repo_json(repository),
    });
    webhook(delivery, "push", repository, &payload)
}

pub fn build_ref(repository: &str, commit: &str, request: &str) -> v1::BuildRef {
    v1::BuildRef {
        build_request_id: request.into(),
        repository: repository.into(),
        commit: commit.into(),
        architecture: v1::Architecture::X8664 as i32,
        backend: "local".into(),
        ..Default::default()
    }
}

/// The build events of one push: requested, started (with a log link) and, if `status` is
/// given, completed.
pub fn build_story(
    webhook: &v1::Envelope,
    push_sequence: u64,
    branch: &str,
    status: Option<v1::BuildStatus>,
) -> Vec<v1::Envelope> {
    let Some(Payload::WebhookReceived(w)) = &webhook.payload else {
        panic!("not a webhook")
    };
    let body: serde_json::Value = serde_json::from_slice(&w.payload).unwrap();
    let commit = body["after"].as_str().unwrap().to_owned();
    let key = OrderingKey::branch(
        RepoName::parse(&w.repository).unwrap(),
        Branch::new(branch).unwrap(),
    );
    let chain = Chain::caused_by(webhook).with_ordering(&key, push_sequence);
    let request = chain.derive_id(&["build", "x86_64"]);
    let requested = chain.envelope(
        request.clone(),
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(build_ref(&w.repository, &commit, &request)),
            ..Default::default()
        }),
    );
    let next = Chain::caused_by(&requested);
    let build_id = format!("local:{request}");
    let started = next.envelope(
        next.derive_id(&["started"]),
        Payload::BuildStarted(v1::BuildStarted {
            build: Some(v1::BuildRef {
                build_id: build_id.clone(),
                log_url: format!("file:///logs/{request}.log"),
                ..build_ref(&w.repository, &commit, &request)
            }),
            ..Default::default()
        }),
    );
    let mut out = vec![requested, started];
    if let Some(status) = status {
        out.push(next.envelope(
            next.derive_id(&["completed"]),
            Payload::BuildCompleted(v1::BuildCompleted {
                build: Some(v1::BuildRef {
                    build_id,
                    ..build_ref(&w.repository, &commit, &request)
                }),
                status: status as i32,
                ..Default::default()
            }),
        ));
    }
    out
}
