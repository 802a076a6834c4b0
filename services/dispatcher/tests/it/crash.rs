//! The double-start window, closed: the real `prx-ci-dispatcher` binary aborted at its
//! test-only fault point right after `StartBuild` returned (before the build was recorded),
//! restarted without it, and the webhook redelivered after CodeBuild's idempotency window:
//! exactly one build exists, adopted and announced. CodeBuild is the AWS emulator behind a
//! proxy that keeps what the emulator drops (a build's environment variables, see
//! [`EnvKeepingProxy`]); the emulator ignores idempotency tokens, so every second `StartBuild`
//! of a request behaves as one after the five-minute window would.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use aws_sdk_codebuild::types::{EnvironmentVariable, SourceType};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prx_ci_dispatcher::codebuild::{CodeBuildBackend, CodeBuildConfig};
use prx_ci_dispatcher::decision::build_request_id;
use prx_ci_shared::codebuild::backend::{BuildBackend, StartBuild};
use prx_ci_shared::codebuild::build::build_id_of;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use prx_ci_shared::testing::{MotoServer, free_port, wait_until};
use serde_json::Value;

use crate::codebuild::codebuild;
use crate::utils::*;

const PROJECT: &str = "infrastructure-ci-Runner2";
const BUILDSPEC: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\nphases:\n  build:\n    commands:\n      - make\n";

/// A proxy in front of the emulator's CodeBuild that remembers the `environmentVariablesOverride`
/// of every `StartBuild` and puts it back into `BatchGetBuilds` answers, as CodeBuild does (the
/// emulator answers every build with an empty environment). Everything else is the emulator's.
#[derive(Clone)]
struct EnvKeepingProxy {
    moto: String,
    http: reqwest::Client,
    environments: Arc<Mutex<HashMap<String, Value>>>,
}

async fn forward(
    State(proxy): State<EnvKeepingProxy>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut request = proxy.http.post(format!("{}/", proxy.moto));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = match request.body(body.clone()).send().await {
        Ok(answer) => answer,
        Err(err) => return (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-amz-json-1.1")
        .to_owned();
    let mut answer: Vec<u8> = answer.bytes().await.unwrap().to_vec();
    if status.is_success() && target.ends_with(".StartBuild") {
        let request: Value = serde_json::from_slice(&body).unwrap();
        let started: Value = serde_json::from_slice(&answer).unwrap();
        let id = started["build"]["id"].as_str().unwrap().to_owned();
        let variables = request["environmentVariablesOverride"].clone();
        proxy.environments.lock().unwrap().insert(id, variables);
    } else if status.is_success() && target.ends_with(".BatchGetBuilds") {
        let mut builds: Value = serde_json::from_slice(&answer).unwrap();
        let environments = proxy.environments.lock().unwrap();
        for build in builds["builds"].as_array_mut().unwrap() {
            if let Some(variables) = build["id"].as_str().and_then(|id| environments.get(id)) {
                build["environment"]["environmentVariables"] = variables.clone();
            }
        }
        answer = serde_json::to_vec(&builds).unwrap();
    }
    (status, [("content-type", content_type)], answer).into_response()
}

impl EnvKeepingProxy {
    /// Serves the proxy; returns its endpoint.
    async fn start(moto: &MotoServer) -> String {
        let proxy = EnvKeepingProxy {
            moto: moto.endpoint(),
            http: reqwest::Client::new(),
            environments: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        endpoint
    }
}

/// A CodeBuild client through the proxy.
fn client_through(moto: &MotoServer, endpoint: &str) -> aws_sdk_codebuild::Client {
    let config = aws_sdk_codebuild::config::Builder::from(&moto.sdk_config())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_codebuild::Client::from_conf(config)
}

async fn builds_of(client: &aws_sdk_codebuild::Client, project: &str) -> Vec<String> {
    client
        .list_builds_for_project()
        .project_name(project)
        .send()
        .await
        .unwrap()
        .ids()
        .to_vec()
}

fn request(request_id: &str) -> StartBuild {
    StartBuild {
        request_id: request_id.to_owned(),
        repository: RepoName::parse(REPO).unwrap(),
        commit: CommitSha::parse(&"a".repeat(40)).unwrap(),
        architecture: Architecture::X86_64,
        clone_url: "https://github.com/PRX/example-app.git".into(),
        source_version: format!("refs/heads/main^{{{}}}", "a".repeat(40)),
        buildspec: BUILDSPEC.into(),
        environment: [
            ("PRX_REPO".to_owned(), REPO.to_owned()),
            (env::CI_REQUEST_ID.to_owned(), request_id.to_owned()),
        ]
        .into(),
        untrusted: false,
    }
}

#[tokio::test]
async fn codebuild_finds_the_build_a_request_started_by_its_request_id_variable() {
    let moto = MotoServer::start().await;
    codebuild(&moto).await;
    let endpoint = EnvKeepingProxy::start(&moto).await;
    let client = client_through(&moto, &endpoint);
    let backend = CodeBuildBackend::from_client(client.clone(), CodeBuildConfig::default());
    let since = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);

    assert_eq!(backend.find(&request("req-a"), since).await.unwrap(), None);
    let a = backend.start(request("req-a")).await.unwrap();
    let b = backend.start(request("req-b")).await.unwrap();
    assert_ne!(a.build_id, b.build_id);
    assert_eq!(
        backend.find(&request("req-a"), since).await.unwrap(),
        Some(a)
    );
    assert_eq!(
        backend.find(&request("req-b"), since).await.unwrap(),
        Some(b)
    );
    assert_eq!(backend.find(&request("req-c"), since).await.unwrap(), None);
    // Another architecture's (another project's) builds are not searched.
    let arm = StartBuild {
        architecture: Architecture::Aarch64,
        ..request("req-a")
    };
    assert_eq!(backend.find(&arm, since).await.unwrap(), None);
}

/// The binary with a config file pointing at the test's NATS, fake GitHub and CodeBuild proxy;
/// its output goes to `log`.
fn spawn_dispatcher(
    dir: &std::path::Path,
    nats: &Nats,
    github: &FakeGitHub,
    codebuild: &str,
    fault: Option<&str>,
    log: &str,
) -> Child {
    let config = dir.join("prx-ci.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{nats}\"\n\n[github]\napi_url = \"{github}\"\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{codebuild}\"\n\n\
             [dispatcher]\nops_listen = \"127.0.0.1:{ops}\"\n",
            nats = nats._server.url(),
            github = github.url(),
            ops = free_port(),
        ),
    )
    .unwrap();
    let output = std::fs::File::create(dir.join(log)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_prx-ci-dispatcher"));
    command
        .arg("--config")
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("PRX_CI_CONFIG")
        .env_remove(prx_ci_dispatcher::fault::FAULT_ENV)
        .stdout(Stdio::from(output.try_clone().unwrap()))
        .stderr(Stdio::from(output));
    if let Some(fault) = fault {
        command.env(prx_ci_dispatcher::fault::FAULT_ENV, fault);
    }
    command.spawn().unwrap()
}

async fn exited(child: &mut Child) -> std::process::ExitStatus {
    wait_until(WAIT, "the dispatcher to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
}

#[tokio::test]
async fn a_crash_between_start_build_and_its_record_never_starts_a_second_build() {
    use std::os::unix::process::ExitStatusExt as _;

    let nats = Nats::start().await;
    let moto = MotoServer::start().await;
    let github = fake_github().await;
    codebuild(&moto).await;
    let endpoint = EnvKeepingProxy::start(&moto).await;
    let client = client_through(&moto, &endpoint);
    let dir = tempfile::tempdir().unwrap();
    let push = recorded("push.json");
    let sha = push["after"].as_str().unwrap();
    buildspec(&github, REPO, sha, BUILDSPEC);

    // The idempotency window is observably over: the emulator ignores tokens, so a second
    // StartBuild with the same token starts a second build (as CodeBuild does after five
    // minutes). Shown on a project the dispatcher does not use.
    let scratch = "infrastructure-ci-UntrustedRunner2";
    for _ in 0..2 {
        client
            .start_build()
            .project_name(scratch)
            .source_type_override(SourceType::Github)
            .idempotency_token("same-token")
            .environment_variables_override(
                EnvironmentVariable::builder()
                    .name("X")
                    .value("1")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    assert_eq!(builds_of(&client, scratch).await.len(), 2);

    // First run: aborts right after StartBuild returned, before the record is written.
    let mut first = spawn_dispatcher(
        dir.path(),
        &nats,
        &github,
        &endpoint,
        Some("dispatcher.after_start"),
        "first.log",
    );
    let (_, stored) = nats.webhook("push", &push, "delivery-crash-1").await;
    let status = exited(&mut first).await;
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "aborted (SIGABRT): {status:?}\n{log}"
    );
    assert!(log.contains("aborting at fault point AfterStart"), "{log}");
    let started = builds_of(&client, PROJECT).await;
    assert_eq!(started.len(), 1, "the crashed attempt started one build");
    assert!(nats.requested().await.is_empty(), "nothing was announced");
    assert!(
        nats.acked_up_to().await < stored.sequence,
        "nothing was acked"
    );

    // The webhook is delivered again, with no fault: the build is found and adopted.
    nats.reset_consumer().await;
    let mut second = spawn_dispatcher(dir.path(), &nats, &github, &endpoint, None, "second.log");
    let requested = nats.wait_for("one BuildRequested", 1, is_requested).await;
    wait_until(WAIT, "the dispatcher to ack the webhook", || async {
        (nats.acked_up_to().await >= stored.sequence).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert_eq!(
        builds_of(&client, PROJECT).await,
        started,
        "exactly one build for the request\n{log}"
    );
    assert!(log.contains("adopting it"), "{log}");
    assert_eq!(
        nats.requested().await.len(),
        1,
        "one BuildRequested for the request\n{log}"
    );
    let build = requested[0].build.as_ref().unwrap();
    assert_eq!(build_id_of(&build.build_id), started[0]);
    let request_id = build_request_id("github-delivery:delivery-crash-1", Architecture::X86_64);
    assert_eq!(build.build_request_id, request_id);
    assert_eq!(requested[0].environment[env::CI_REQUEST_ID], request_id);
    let (envelope, _) = nats.requested().await.remove(0);
    assert_eq!(
        envelope.event_id,
        prx_ci_shared::bus::envelope::derived_event_id(
            "github-delivery:delivery-crash-1",
            &["build.requested", "x86_64"]
        ),
        "announced with the event id a fresh start has"
    );

    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(exited(&mut second).await.success(), "{log}");
}

#[tokio::test]
async fn an_intent_without_a_record_adopts_the_found_build_or_starts_one_when_there_is_none() {
    use std::sync::atomic::Ordering;

    use prx_ci_dispatcher::DispatcherConfig;
    use prx_ci_dispatcher::dispatch_store::{
        DispatchStore, IntendedRequest, Intent, StartIntent, StartKey,
    };
    // As an earlier version wrote them: no record of what was started.
    let intent = |request_id: &str, at_unix: i64| StartIntent {
        request_id: request_id.to_owned(),
        at_unix,
        intended: None,
    };

    let nats = Nats::start().await;
    let github = fake_github().await;
    let push = recorded("push.json");
    let pr = recorded("pull_request-opened.json");
    buildspec(&github, REPO, push["after"].as_str().unwrap(), BUILDSPEC);
    buildspec(
        &github,
        REPO,
        pr["pull_request"]["head"]["sha"].as_str().unwrap(),
        BUILDSPEC,
    );
    let store = DispatchStore::open(&nats.rt.js).await.unwrap();
    let backend = Arc::new(FakeBackend::default());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Delivery A crashed after StartBuild: an intent, a build, no record.
    let a = "github-delivery:delivery-a";
    let a_request = build_request_id(a, Architecture::X86_64);
    let crashed = backend.start(request(&a_request)).await.unwrap();
    // Its intent recorded what it asked for: the rules of that time set a variable today's do
    // not (the configuration changed across the crash).
    let mut started_with = request(&a_request).environment;
    started_with.insert("PRX_SET_BY_THE_OLD_RULES".into(), "1".into());
    let a_intent = StartIntent {
        intended: Some(IntendedRequest {
            buildspec: BUILDSPEC.into(),
            environment: started_with,
        }),
        ..intent(&a_request, now)
    };
    assert_eq!(
        store
            .record_intent(&StartKey::webhook(a, Architecture::X86_64), &a_intent)
            .await
            .unwrap(),
        Intent::First
    );
    // Delivery B crashed before StartBuild: an intent only.
    let b = "github-delivery:delivery-b";
    let b_request = build_request_id(b, Architecture::X86_64);
    store
        .record_intent(
            &StartKey::webhook(b, Architecture::X86_64),
            &intent(&b_request, now),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .record_intent(&StartKey::webhook(b, Architecture::X86_64), &intent(&b_request, now + 1))
            .await
            .unwrap(),
        Intent::Earlier(earlier) if earlier.at_unix == now && earlier.request_id == b_request
    ));

    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    nats.webhook("push", &push, "delivery-a").await;
    nats.webhook("pull_request", &pr, "delivery-b").await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;
    let by_request = |id: &str| {
        requested
            .iter()
            .find(|r| r.build.as_ref().unwrap().build_request_id == id)
            .unwrap()
            .build
            .clone()
            .unwrap()
    };
    assert_eq!(by_request(&a_request).build_id, crashed.build_id, "adopted");
    let a_announced = requested
        .iter()
        .find(|r| r.build.as_ref().unwrap().build_request_id == a_request)
        .unwrap();
    assert_eq!(
        a_announced.environment.get("PRX_SET_BY_THE_OLD_RULES"),
        Some(&"1".to_owned()),
        "announced as it was started, not as planned now: {:?}",
        a_announced.environment
    );
    let started = backend.started().await;
    assert_eq!(started.len(), 2, "{started:#?}");
    assert_eq!(
        backend.start_calls.load(Ordering::SeqCst),
        2,
        "one StartBuild before the test's dispatcher ran (A's crashed attempt), one for B"
    );
    let b_build = started
        .iter()
        .find(|s| s.request.request_id == b_request)
        .expect("B started");
    assert_eq!(by_request(&b_request).build_id, b_build.build_id);
    assert_eq!(b_build.request.environment[env::CI_REQUEST_ID], b_request);
    // Both are recorded now: a further redelivery re-announces them.
    for dispatch in [a, b] {
        assert!(
            store
                .dispatched(&StartKey::webhook(dispatch, Architecture::X86_64))
                .await
                .unwrap()
                .is_some()
        );
    }
    running.stop().await;
}
