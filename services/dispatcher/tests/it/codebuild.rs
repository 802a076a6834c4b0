//! CodeBuild through the AWS emulator: the StartBuild requests the real SDK sends (recorded by
//! an interceptor on the client), build references, and no second build on redelivery.

use std::sync::{Arc, Mutex};

use aws_sdk_codebuild::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_codebuild::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_codebuild::error::BoxError;
use prx_ci_dispatcher::codebuild::{CodeBuildBackend, ReportBuildStatus};
use prx_ci_dispatcher::decision::build_request_id;
use prx_ci_dispatcher::{CodeBuildConfig, DispatcherConfig};
use prx_ci_shared::codebuild::backend::{BuildBackend, StartBuild, StopOutcome};
use prx_ci_shared::codebuild::build::build_id_of;
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use prx_ci_shared::testing::MotoServer;
use serde_json::{Value, json};

use crate::utils::*;

const BUILDSPEC: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\n    PRX_BUILD_AARCH64: true\nphases:\n  build:\n    commands:\n      - make\n";

/// The JSON body and operation of every request the CodeBuild client sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestRecorder(Arc<Mutex<Vec<(String, Value)>>>);

impl RequestRecorder {
    fn of(&self, operation: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| op.ends_with(operation))
            .map(|(_, body)| body.clone())
            .collect()
    }
}

impl Intercept for RequestRecorder {
    fn name(&self) -> &'static str {
        "RequestRecorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let operation = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        let body = request
            .body()
            .bytes()
            .map(serde_json::from_slice)
            .transpose()?
            .unwrap_or(Value::Null);
        self.0.lock().unwrap().push((operation, body));
        Ok(())
    }
}

pub(crate) async fn codebuild(moto: &MotoServer) -> (aws_sdk_codebuild::Client, RequestRecorder) {
    let recorder = RequestRecorder::default();
    let config = aws_sdk_codebuild::config::Builder::from(&moto.sdk_config())
        .interceptor(recorder.clone())
        .build();
    let client = aws_sdk_codebuild::Client::from_conf(config);
    for name in [
        "infrastructure-ci-Runner2",
        "infrastructure-ci-ArmRunner",
        "infrastructure-ci-UntrustedRunner2",
        "infrastructure-ci-UntrustedArmRunner",
    ] {
        moto.create_codebuild_project(name).await;
    }
    (client, recorder)
}

async fn builds_in(client: &aws_sdk_codebuild::Client) -> usize {
    client.list_builds().send().await.unwrap().ids().len()
}

#[tokio::test]
async fn start_build_requests_carry_the_originals_fields_and_a_token() {
    let nats = Nats::start().await;
    let moto = MotoServer::start().await;
    let github = fake_github().await;
    let (client, recorder) = codebuild(&moto).await;
    let push = recorded("push.json");
    let sha = push["after"].as_str().unwrap();
    buildspec(&github, REPO, sha, BUILDSPEC);

    let backend = Arc::new(CodeBuildBackend::from_client(
        client.clone(),
        CodeBuildConfig::default(),
    ));
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend.clone(),
    );
    let (webhook, stored) = nats.webhook("push", &push, "delivery-push-1").await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;

    // What the SDK sent to CodeBuild, field by field: the pushed commit through its branch
    // (a shallow fetch of one ref), and no reportBuildStatusOverride (the project decides).
    let source_version = format!("refs/heads/main^{{{sha}}}");
    let starts = recorder.of("StartBuild");
    assert_eq!(starts.len(), 2, "{starts:#?}");
    let dispatch_id = "github-delivery:delivery-push-1";
    for (body, (project, arch)) in starts.iter().zip([
        (
            "infrastructure-ci-Runner2",
            prx_ci_shared::domain::Architecture::X86_64,
        ),
        (
            "infrastructure-ci-ArmRunner",
            prx_ci_shared::domain::Architecture::Aarch64,
        ),
    ]) {
        let mut env: Vec<Value> = body["environmentVariablesOverride"]
            .as_array()
            .unwrap()
            .clone();
        env.sort_by_key(|v| v["name"].as_str().unwrap().to_owned());
        let body_without_env = {
            let mut b = body.clone();
            b.as_object_mut()
                .unwrap()
                .remove("environmentVariablesOverride");
            b
        };
        assert_eq!(
            body_without_env,
            json!({
                "projectName": project,
                "sourceTypeOverride": "GITHUB",
                "sourceLocationOverride": "https://github.com/PRX/example-app.git",
                "sourceVersion": source_version,
                "buildspecOverride": BUILDSPEC,
                "idempotencyToken": build_request_id(dispatch_id, arch),
            })
        );
        let plain =
            |name: &str, value: &str| json!({"name": name, "value": value, "type": "PLAINTEXT"});
        assert_eq!(
            env,
            [
                plain("PRX_BRANCH", "main"),
                plain("PRX_CI_PUBLISH", "true"),
                plain("PRX_CI_REQUEST_ID", &build_request_id(dispatch_id, arch)),
                plain("PRX_COMMIT", sha),
                plain("PRX_GITHUB_AFTER", sha),
                plain("PRX_GITHUB_BEFORE", push["before"].as_str().unwrap()),
                plain("PRX_REPO", REPO),
                plain("PRX_TARGET_ARCHITECTURE", arch.as_str()),
            ]
        );
    }

    // The announced builds name what CodeBuild started. (The emulator itself keeps only the
    // project and the source version of a StartBuild; the recorder above saw the rest.)
    let ids = client.list_builds().send().await.unwrap().ids().to_vec();
    assert_eq!(ids.len(), 2);
    let emulated = client
        .batch_get_builds()
        .set_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    for build in emulated.builds() {
        assert_eq!(build.source_version(), Some(source_version.as_str()));
    }
    for r in &requested {
        let build = r.build.as_ref().unwrap();
        assert_eq!(build.backend, "codebuild");
        assert_eq!(build.region, "us-east-1");
        assert_eq!(build.repository, REPO);
        assert_eq!(build.commit, sha);
        assert!(
            build.build_id.starts_with("arn:aws:codebuild:us-east-1:"),
            "{}",
            build.build_id
        );
        assert!(ids.iter().any(|id| build.build_id.ends_with(id.as_str())));
        assert!(
            build
                .log_url
                .starts_with("https://us-east-1.console.aws.amazon.com/codesuite/codebuild/"),
            "{}",
            build.log_url
        );
        assert_eq!(r.source_version, source_version);
        assert_eq!(r.buildspec, BUILDSPEC);
        assert_eq!(r.event_name, "push");
    }
    let (envelope, _) = nats.requested().await.remove(0);
    assert_eq!(envelope.correlation_id, "delivery-push-1");
    assert_eq!(envelope.causation_id, webhook.event_id);
    assert_eq!(arrival_of(envelope.push_sequence), stored.sequence);
    let key = envelope.ordering_key.unwrap();
    assert_eq!(key.repository, REPO);
    assert_eq!(
        key.lane,
        Some(prx_ci_proto::v1::ordering_key::Lane::Branch("main".into()))
    );

    // Redelivery of the same message (a replay, or a restart after a crash before the ack):
    // no new build.
    running.stop().await;
    nats.reset_consumer().await;
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend,
    );
    wait_until_acked(&nats, stored.sequence).await;
    // The same delivery stored again after the duplicate window, with a new event id and a
    // new stream sequence: the KV record answers, not CodeBuild.
    let (_, again) = nats
        .webhook_with_id("push", &push, "delivery-push-1", "another-event-id")
        .await;
    assert!(!again.duplicate);
    wait_until_acked(&nats, again.sequence).await;
    assert_eq!(
        recorder.of("StartBuild").len(),
        2,
        "no StartBuild after the first two"
    );
    assert_eq!(builds_in(&client).await, 2);
    assert_eq!(
        requests_for(&github, sha),
        1,
        "the recorded build's buildspec is reused, GitHub is not asked again"
    );
    let after = nats.requested().await;
    assert_eq!(
        after.len(),
        2,
        "re-announcements collapse in the duplicate window"
    );
    assert_eq!(
        arrival_of(after[0].0.push_sequence),
        stored.sequence,
        "the original push sequence"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_pull_request_builds_its_head_through_its_ref_and_the_switch_turns_codebuilds_status_off()
{
    let nats = Nats::start().await;
    let moto = MotoServer::start().await;
    let github = fake_github().await;
    let (client, recorder) = codebuild(&moto).await;
    let opened = recorded("pull_request-opened.json");
    let sha = opened["pull_request"]["head"]["sha"].as_str().unwrap();
    let number = opened["number"].as_u64().unwrap();
    buildspec(&github, REPO, sha, BUILDSPEC);

    let config = CodeBuildConfig {
        report_build_status: ReportBuildStatus::Off,
        ..CodeBuildConfig::default()
    };
    let backend = Arc::new(CodeBuildBackend::from_client(client.clone(), config));
    let running = start(
        &nats,
        DispatcherConfig::default(),
        source(&github.url()),
        backend,
    );
    nats.webhook("pull_request", &opened, "delivery-pr-1").await;
    let requested = nats.wait_for("two BuildRequested", 2, is_requested).await;

    let source_version = format!("refs/pull/{number}/head^{{{sha}}}");
    let starts = recorder.of("StartBuild");
    assert_eq!(starts.len(), 2, "{starts:#?}");
    for body in &starts {
        assert_eq!(body["sourceVersion"], json!(source_version), "{body:#}");
        assert_eq!(body["reportBuildStatusOverride"], json!(false), "{body:#}");
    }
    for r in &requested {
        assert_eq!(r.source_version, source_version);
        assert_eq!(r.build.as_ref().unwrap().commit, sha);
    }
    running.stop().await;
}

async fn wait_until_acked(nats: &Nats, sequence: u64) {
    prx_ci_shared::testing::wait_until(WAIT, "the dispatcher to ack the webhook", || async {
        (nats.acked_up_to().await >= sequence).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stop_build_reports_what_happened() {
    let moto = MotoServer::start().await;
    let (client, recorder) = codebuild(&moto).await;
    let backend = CodeBuildBackend::from_client(client.clone(), CodeBuildConfig::default());
    let started = backend
        .start(prx_ci_shared::codebuild::backend::StartBuild {
            request_id: "request-1".into(),
            repository: prx_ci_shared::domain::RepoName::parse(REPO).unwrap(),
            commit: prx_ci_shared::domain::CommitSha::parse(&"a".repeat(40)).unwrap(),
            architecture: prx_ci_shared::domain::Architecture::X86_64,
            clone_url: "https://github.com/PRX/example-app.git".into(),
            source_version: "a".repeat(40),
            buildspec: "PRX_".into(),
            environment: Default::default(),
            untrusted: false,
        })
        .await
        .unwrap();
    assert_eq!(started.project, "infrastructure-ci-Runner2");
    assert_eq!(
        backend.stop(&started.build_id).await.unwrap(),
        StopOutcome::Stopped
    );
    // StopBuild takes the `project:uuid` id even though builds are named by ARN.
    let stop = recorder.of("StopBuild");
    assert_eq!(stop.len(), 1);
    let id = stop[0]["id"].as_str().unwrap();
    assert!(id.starts_with("infrastructure-ci-Runner2:"), "{id}");
    assert!(started.build_id.ends_with(id));
    // An unknown build cannot be stopped: not retried forever.
    assert!(matches!(
        backend
            .stop("infrastructure-ci-Runner2:does-not-exist")
            .await,
        Ok(StopOutcome::AlreadyFinished)
            | Err(prx_ci_shared::codebuild::backend::BackendError::Permanent(
                _
            ))
    ));
}

fn start_request(request_id: &str, architecture: Architecture, untrusted: bool) -> StartBuild {
    StartBuild {
        request_id: request_id.into(),
        repository: RepoName::parse(REPO).unwrap(),
        commit: CommitSha::parse(&"c".repeat(40)).unwrap(),
        architecture,
        clone_url: "https://github.com/fork-owner/example-app.git".into(),
        source_version: "c".repeat(40),
        buildspec: "PRX_".into(),
        environment: [("PRX_CI_PUBLISH".to_owned(), "false".to_owned())].into(),
        untrusted,
    }
}

#[tokio::test]
async fn untrusted_builds_start_in_the_untrusted_projects_only() {
    let moto = MotoServer::start().await;
    let (client, recorder) = codebuild(&moto).await;
    let backend = CodeBuildBackend::from_client(client.clone(), CodeBuildConfig::default());

    let mut started = Vec::new();
    for (id, architecture) in [
        ("fork-x86", Architecture::X86_64),
        ("fork-arm", Architecture::Aarch64),
    ] {
        started.push(
            backend
                .start(start_request(id, architecture, true))
                .await
                .unwrap(),
        );
    }
    let trusted = backend
        .start(start_request("trusted-x86", Architecture::X86_64, false))
        .await
        .unwrap();

    // What the SDK sent: the untrusted project names, never a trusted one.
    let projects: Vec<String> = recorder
        .of("StartBuild")
        .iter()
        .map(|body| body["projectName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        projects,
        [
            "infrastructure-ci-UntrustedRunner2",
            "infrastructure-ci-UntrustedArmRunner",
            "infrastructure-ci-Runner2",
        ]
    );
    // The build references name the project CodeBuild ran them in.
    assert_eq!(started[0].project, "infrastructure-ci-UntrustedRunner2");
    assert_eq!(started[1].project, "infrastructure-ci-UntrustedArmRunner");
    assert_eq!(trusted.project, "infrastructure-ci-Runner2");
    let builds = client
        .batch_get_builds()
        .set_ids(Some(
            started
                .iter()
                .map(|s| build_id_of(&s.build_id).to_owned())
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    let mut emulated: Vec<&str> = builds
        .builds()
        .iter()
        .map(|b| b.project_name().unwrap())
        .collect();
    emulated.sort_unstable();
    assert_eq!(
        emulated,
        [
            "infrastructure-ci-UntrustedArmRunner",
            "infrastructure-ci-UntrustedRunner2"
        ]
    );
}
