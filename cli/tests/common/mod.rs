//! What the end-to-end tests of the local system share: the system `prx-ci up` runs, started
//! against a real nats-server, signed webhooks sent to it over HTTP, and the stored events.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the harness"
)]

pub mod browser;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prx_ci::system::{LocalSystem, SystemConfig};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::testing::{NatsServer, wait_until};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

pub const SECRET: &str = "local-flow-secret";

/// The local system of `prx-ci up` with its own nats-server and data directory.
pub struct Local {
    pub nats: NatsServer,
    pub data: tempfile::TempDir,
    pub system: LocalSystem,
    /// The webhook URL.
    pub url: String,
    /// The web dashboard's base URL (`http://127.0.0.1:<port>`).
    pub dashboard_url: String,
    /// The ops token (signs in to the dashboard).
    pub ops_token: String,
}

impl Local {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the system after `configure` adjusted its configuration.
    pub async fn start_with(configure: impl FnOnce(&mut SystemConfig)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), configure).await
    }

    /// Starts the system with its data in `data` (made beforehand, e.g. to hold a repository
    /// the test commits to before the system runs).
    pub async fn start_in(
        data: tempfile::TempDir,
        configure: impl FnOnce(&mut SystemConfig),
    ) -> Self {
        let nats = NatsServer::start().await;
        let mut config = SystemConfig::default();
        config.nats.url = nats.url();
        config.ingress.secrets = vec![SecretString::from(SECRET)];
        config.ops.token = Some(SecretString::from("local-flow-ops-token"));
        config.runner.data_dir = data.path().join("runner");
        config.runner.work_dir = data.path().join("work");
        configure(&mut config);
        let webhooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dashboard = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/github", webhooks.local_addr().unwrap());
        let dashboard_url = format!("http://{}", dashboard.local_addr().unwrap());
        let ops_token = config
            .ops
            .token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default();
        let system = LocalSystem::start(config, webhooks, ops, Some(dashboard))
            .await
            .unwrap();
        Self {
            nats,
            data,
            system,
            url,
            dashboard_url,
            ops_token,
        }
    }

    pub fn js(&self) -> async_nats::jetstream::Context {
        self.system.runtime.js.clone()
    }

    /// Sends a signed webhook; returns the HTTP status.
    pub async fn send(&self, event: &str, delivery: &str, body: &serde_json::Value) -> u16 {
        let body = body.to_string();
        let signature = prx_ci_ingress::signature_256(SECRET, body.as_bytes());
        reqwest::Client::new()
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Runs `prx-ci demo`'s scenario (two pushes whose builds finish in reverse order) against
    /// this system, to its end.
    pub async fn run_demo(&self) -> prx_ci::demo::DemoOutcome {
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            prx_ci::demo::run_scenario(&prx_ci::demo::DemoArgs {
                url: self.url.clone(),
                secret: Some(SECRET.into()),
                data_dir: self.data.path().to_owned(),
                nats_url: self.nats.url(),
            }),
        )
        .await
        .expect("the scenario finishes")
        .unwrap()
    }

    /// Every envelope in the events stream, in stream order.
    pub async fn events(&self) -> Vec<v1::Envelope> {
        stored_events(&self.js()).await
    }

    /// Waits until `pick` finds what it looks for in the stored events.
    pub async fn wait_for<T>(&self, what: &str, pick: impl Fn(&[v1::Envelope]) -> Option<T>) -> T {
        let js = self.js();
        wait_until(Duration::from_secs(60), what, || {
            let js = js.clone();
            let pick = &pick;
            async move { pick(&stored_events(&js).await) }
        })
        .await
    }
}

/// Every envelope in the events stream, in stream order.
pub async fn stored_events(js: &async_nats::jetstream::Context) -> Vec<v1::Envelope> {
    stored_messages(js)
        .await
        .into_iter()
        .map(|(_, envelope)| envelope)
        .collect()
}

/// Every message of the events stream: subject and decoded envelope (an undecodable one as
/// default), in stream order.
pub async fn stored_messages(js: &async_nats::jetstream::Context) -> Vec<(String, v1::Envelope)> {
    messages_of(js, prx_ci_shared::bus::subject::EVENTS_STREAM).await
}

/// Every webhook stored (the webhooks stream), in stream order.
pub async fn stored_webhooks(js: &async_nats::jetstream::Context) -> Vec<v1::Envelope> {
    messages_of(js, prx_ci_shared::bus::subject::WEBHOOKS_STREAM)
        .await
        .into_iter()
        .map(|(_, envelope)| envelope)
        .collect()
}

async fn messages_of(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, v1::Envelope)> {
    use prost::Message as _;
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(raw) = stream.get_raw_message(seq).await {
            let envelope = v1::Envelope::decode(raw.payload).unwrap_or_default();
            out.push((raw.subject.to_string(), envelope));
        }
    }
    out
}

/// The publish outcomes (applied or skipped) of builds of `commit`, in stream order.
pub fn publish_outcomes(events: &[v1::Envelope], commit: &str) -> Vec<Payload> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(p @ Payload::PublishApplied(a))
                if a.build.as_ref().is_some_and(|b| b.commit == commit) =>
            {
                Some(p.clone())
            }
            Some(p @ Payload::PublishSkipped(s))
                if s.build.as_ref().is_some_and(|b| b.commit == commit) =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect()
}

/// A push to `main` of `repository` (`owner/name`, cloned from `repo`) as GitHub sends it, with
/// GitHub's time of the push (what orders pushes, with the `before`/`after` chain).
pub fn push_event(
    repository: &str,
    repo: &Repo,
    before: &str,
    after: &str,
    pushed_at: i64,
    forced: bool,
) -> serde_json::Value {
    let (owner, name) = repository.split_once('/').expect("owner/name");
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "created": before.bytes().all(|b| b == b'0'),
        "deleted": false,
        "forced": forced,
        "head_commit": {"id": after, "message": "change", "author": {"name": "T", "username": "t"}},
        "repository": {
            "name": name,
            "full_name": repository,
            "owner": {"login": owner},
            "default_branch": "main",
            "clone_url": repo.url(),
            "html_url": repo.url(),
            "pushed_at": pushed_at,
        },
        "pusher": {"name": "t"},
        "sender": {"login": "t"},
    })
}

/// A local git repository (a `file://` clone URL works for the local runner).
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn init(parent: &Path) -> Self {
        let path = parent.join("repo");
        std::fs::create_dir_all(&path).unwrap();
        let repo = Self {
            path: path.canonicalize().unwrap(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// Writes `files` and commits them; returns the commit SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, text) in files {
            std::fs::write(self.path.join(name), text).unwrap();
        }
        self.git(&["add", "."]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        prx_ci_shared::testing::git::git(&self.path, args)
    }
}
