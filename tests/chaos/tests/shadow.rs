//! Shadow mode end to end, through the real service binaries: ingress, dispatcher,
//! build-watcher, publisher and notifier (all but the ingress in `mode = "shadow"`) and the ops
//! service, against a real nats-server, the AWS emulator (CodeBuild, SQS, SSM) and the fake
//! GitHub and Slack of the chaos run.
//!
//! Three pushes to `main` (A, B, C in GitHub's push order) arrive as signed webhooks. The
//! original system's CodeBuild builds of them reach the build-watcher's SQS queue as
//! EventBridge delivers them: A's with the variables our dispatcher decided, B's disagreeing
//! (its `PRX_BRANCH`), and finishing A, C, B, so the original's updater would leave the pointer
//! on B while our fence ends on C. Everything is asserted from the event log, and the emulator
//! and the fakes must have seen no write at all.
//!
//! Needs the service binaries next to the test's (`cargo build --workspace --bins --locked`,
//! which `scripts/test` runs first): a missing one fails the test, naming it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message as _;
use prx_ci_chaos::fakes::{self, FakeSlack};
use prx_ci_chaos::supervisor::{Process, Supervisor, binary};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::subject;
use prx_ci_shared::testing::fake_github::FakeGitHub;
use prx_ci_shared::testing::{MotoServer, NatsServer, free_port, wait_until, workspace_root};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WAIT: Duration = Duration::from_secs(90);
const REPO: &str = "PRX/shadow-app";
const PARAMETER: &str = "/prx/stag/Spire/Shadow-App/pkg/docker-image-tag";
const PREFIX: &str = "/prx/stag/Spire/";
const SECRET: &str = "shadow-webhook-secret";
const OPS_TOKEN: &str = "shadow-ops-token-0123456789";
/// The original system's CodeBuild project of x86_64 builds (`<stack>-Runner2`).
const ORIGINAL_PROJECT: &str = "infrastructure-ci-Runner2";
const SERVICES: [&str; 6] = [
    "prx-ci-ingress",
    "prx-ci-dispatcher",
    "prx-ci-build-watcher",
    "prx-ci-publisher",
    "prx-ci-notifier",
    "prx-ci-ops",
];

/// One push of the scenario.
#[derive(Debug, Clone)]
struct Push {
    name: &'static str,
    before: String,
    commit: String,
    pushed_at: i64,
}

impl Push {
    /// The value the builds of this push export for the parameter. Not an ECR image's shape:
    /// with `value_checks = "trusted"` the publisher then checks no artifact (as in the chaos
    /// run), so the emulator needs no image.
    fn value(&self) -> String {
        format!("shadow-{}", self.commit)
    }
}

fn buildspec() -> String {
    format!(
        "version: 0.2\n# PRX_BUILD_X86_64\nenv:\n  variables:\n    PRX_SPIRE_ECR_PKG_PARAMETERS: \"APP={PARAMETER}\"\n  \
         exported-variables:\n    - PRX_SPIRE_ECR_PKG_PARAMETERS\n    - APP\nphases:\n  build:\n    commands:\n      - echo build\n"
    )
}

/// Everything the test runs: servers, fakes, the service processes.
struct ShadowWorld {
    /// Kept for the services' lifetime (the server stops when dropped).
    _nats: NatsServer,
    moto: MotoServer,
    github: FakeGitHub,
    slack: FakeSlack,
    supervisor: Supervisor,
    ingress_url: String,
    ops_grpc: String,
    queue_url: String,
    sqs: aws_sdk_sqs::Client,
    js: async_nats::jetstream::Context,
    /// The services' configs and logs; kept when the test fails.
    dir: Option<tempfile::TempDir>,
}

impl Drop for ShadowWorld {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("the services' logs are kept in {}", dir.keep().display());
        }
    }
}

/// What the shadow report must find (see [`the_report_names_what_each_system_did`]).
#[derive(Debug, Clone)]
struct ExpectedFacts {
    /// The `prx-ci` binary (the report is read through it, as an operator does).
    cli: PathBuf,
    /// `http://127.0.0.1:<port>` of the ops gRPC API, and its token.
    ops_grpc: String,
    ops_token: String,
    repository: String,
    parameter: String,
    /// Pushes A, B, C in push order: (name, commit, value).
    pushes: Vec<(String, String, String)>,
    /// The value our fence ended on (C's).
    ours_final_value: String,
    /// The value the original's updater would have left (B's: it finished last).
    originals_final_value: String,
    /// Push B's original disagreed on this variable: (name, ours, the original's).
    disagreement: (String, String, String),
}

/// The services' `[github] token` (the fake GitHub accepts only this one).
const GITHUB_TOKEN: &str = "shadow-github-token";

fn config_file(service: &str, port: u16, w: &Endpoints) -> String {
    let common = format!(
        "[nats]\nurl = {nats:?}\nreplicas = 1\nclient_name = \"shadow-{service}\"\n\n\
         [telemetry]\nlog_filter = \"info,async_nats=warn\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = {aws:?}\n\n\
         [github]\napi_url = {github:?}\ntoken = {GITHUB_TOKEN:?}\nrequest_timeout = \"5s\"\n\n",
        nats = w.nats,
        aws = w.aws,
        github = w.github,
    );
    let listen = format!("127.0.0.1:{port}");
    let own = match service {
        "prx-ci-ingress" => format!("[ingress]\nlisten = {listen:?}\nsecrets = [{SECRET:?}]\n"),
        "prx-ci-dispatcher" => format!(
            "[dispatcher]\nops_listen = {listen:?}\nmode = \"shadow\"\nbackend = \"codebuild\"\n"
        ),
        "prx-ci-build-watcher" => format!(
            "[build_watcher]\nops_listen = {listen:?}\nmode = \"shadow\"\nqueue_url = {queue:?}\n\
             sqs_wait_time = \"1s\"\nsqs_visibility_timeout = \"2s\"\nrequest_wait = \"200ms\"\n",
            queue = w.queue_url,
        ),
        "prx-ci-publisher" => format!(
            "[publisher]\nops_listen = {listen:?}\nmode = \"shadow\"\n\
             application_code_bucket = \"shadow-application-code\"\ns3_force_path_style = true\n\
             value_checks = \"trusted\"\n"
        ),
        "prx-ci-notifier" => format!(
            "[notifier]\nops_listen = {listen:?}\nmode = \"shadow\"\nchannel = \"C0SHADOW\"\n\n\
             [notifier.slack]\napi_url = {slack:?}\ntoken = \"shadow-slack-token\"\nmin_interval = \"1ms\"\n",
            slack = w.slack,
        ),
        "prx-ci-ops" => format!(
            "[ops]\nlisten = \"127.0.0.1:{grpc}\"\nops_listen = {listen:?}\ntoken = {OPS_TOKEN:?}\n",
            grpc = w.ops_grpc_port,
        ),
        other => panic!("unknown service {other}"),
    };
    common + &own
}

/// Where the services find everything.
struct Endpoints {
    nats: String,
    aws: String,
    github: String,
    slack: String,
    queue_url: String,
    ops_grpc_port: u16,
}

impl ShadowWorld {
    async fn start(bin_dir: &Path, pushes: &[Push]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let buildspecs: HashMap<(String, String), String> = pushes
            .iter()
            .map(|p| ((REPO.to_owned(), p.commit.clone()), buildspec()))
            .collect();
        let github = fakes::github(GITHUB_TOKEN, &buildspecs).await;
        let slack = FakeSlack::start().await.expect("fake Slack");
        let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config());
        let queue_url = sqs
            .create_queue()
            .queue_name("original-codebuild-events")
            .send()
            .await
            .expect("SQS queue")
            .queue_url()
            .expect("queue URL")
            .to_owned();
        // The dispatcher's projects exist, so a StartBuild that should not happen would
        // succeed and show in ListBuilds (without them it would only fail).
        for name in [
            "infrastructure-ci-Runner2",
            "infrastructure-ci-ArmRunner",
            "infrastructure-ci-UntrustedRunner2",
            "infrastructure-ci-UntrustedArmRunner",
        ] {
            moto.create_codebuild_project(name).await;
        }
        // moto loads its SSM backend on the first call (slow): not inside a later wait.
        let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config());
        ssm.describe_parameters().send().await.expect("moto SSM");

        let ops_grpc_port = free_port();
        let endpoints = Endpoints {
            nats: nats.url(),
            aws: moto.endpoint(),
            github: github.url(),
            slack: slack.url.clone(),
            queue_url: queue_url.clone(),
            ops_grpc_port,
        };
        let env = vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ];
        let mut supervisor = Supervisor::default();
        let mut ingress_url = String::new();
        for service in SERVICES {
            let port = free_port();
            if service == "prx-ci-ingress" {
                ingress_url = format!("http://127.0.0.1:{port}");
            }
            let stem = service.trim_start_matches("prx-ci-");
            let (config, log) = (
                dir.path().join(format!("{stem}.toml")),
                dir.path().join(format!("{stem}.log")),
            );
            std::fs::write(&config, config_file(service, port, &endpoints)).expect("config");
            let path = binary(bin_dir, service).unwrap_or_else(|e| panic!("{e:#}"));
            supervisor.processes.push(Process::new(
                service,
                0,
                path,
                (config, log),
                port,
                env.clone(),
            ));
        }
        supervisor.start_all().expect("start the services");
        if let Err(err) = supervisor.wait_ready(WAIT).await {
            let kept = dir.keep();
            panic!("{err:#}; logs in {}", kept.display());
        }
        let js = async_nats::jetstream::new(nats.connect().await);
        Self {
            ingress_url,
            ops_grpc: format!("http://127.0.0.1:{ops_grpc_port}"),
            queue_url,
            sqs,
            js,
            _nats: nats,
            moto,
            github,
            slack,
            supervisor,
            dir: Some(dir),
        }
    }

    /// GitHub's push webhook of `push`, signed, to the ingress.
    async fn send_push(&self, push: &Push) {
        let body = json!({
            "ref": "refs/heads/main",
            "before": push.before,
            "after": push.commit,
            "created": false,
            "deleted": false,
            "forced": false,
            "head_commit": {
                "id": push.commit,
                "message": format!("push {}", push.name),
                "timestamp": OffsetDateTime::from_unix_timestamp(push.pushed_at).unwrap().format(&Rfc3339).unwrap(),
                "author": {"name": "shadow", "username": "shadow"},
            },
            "repository": {
                "name": "shadow-app",
                "full_name": REPO,
                "owner": {"login": "PRX"},
                "default_branch": "main",
                "clone_url": format!("https://github.com/{REPO}.git"),
                "html_url": format!("https://github.com/{REPO}"),
                "pushed_at": push.pushed_at,
            },
            "pusher": {"name": "shadow"},
            "sender": {"login": "shadow"},
        })
        .to_string();
        let answer = reqwest::Client::new()
            .post(format!(
                "{}{}",
                self.ingress_url,
                prx_ci_ingress::WEBHOOK_PATH
            ))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("delivery-{}", push.name))
            .header(
                "X-Hub-Signature-256",
                prx_ci_ingress::signature_256(SECRET, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .expect("the ingress answers");
        assert!(
            answer.status().is_success(),
            "push {}: {}",
            push.name,
            answer.status()
        );
    }

    /// Every envelope in `PRX_EVENTS`, in stream order.
    async fn events(&self) -> Vec<v1::Envelope> {
        let Ok(stream) = self.js.get_stream(subject::EVENTS_STREAM).await else {
            return Vec::new();
        };
        let last = stream
            .get_info()
            .await
            .map_or(0, |info| info.state.last_sequence);
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await
                && let Ok(envelope) = v1::Envelope::decode(raw.payload)
            {
                out.push(envelope);
            }
        }
        out
    }

    /// Waits until the log holds `what` (`pick` returns `Some` once it does).
    async fn wait_for<T>(&self, what: &str, pick: impl Fn(&[v1::Envelope]) -> Option<T>) -> T {
        wait_until(WAIT, what, || async { pick(&self.events().await) }).await
    }

    /// An EventBridge `CodeBuild Build State Change` of the original's build, into the queue.
    async fn send_original(&self, event: &Value) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(event.to_string())
            .send()
            .await
            .expect("SQS send");
    }

    async fn stop(mut self) {
        self.supervisor.stop().await;
    }
}

/// The requests of the log, by commit.
fn requests(events: &[v1::Envelope]) -> BTreeMap<String, (v1::Envelope, v1::BuildRequested)> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::BuildRequested(r)) => {
                Some((r.build.as_ref()?.commit.clone(), (e.clone(), r.clone())))
            }
            _ => None,
        })
        .collect()
}

/// A file of `tests/data/codebuild/` made into a report of the original's build `arn` of
/// `push`, with `environment` and (final reports) `APP` exported; its times yesterday (so the
/// notifier treats it as news, not old history).
fn original_event(
    name: &str,
    arn: &str,
    push: &Push,
    environment: &BTreeMap<String, String>,
) -> Value {
    let path = workspace_root().join("tests/data/codebuild").join(name);
    let yesterday = OffsetDateTime::now_utc() - time::Duration::days(1);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(
            "Mar 4, 2025",
            &format!(
                "{} {}, {}",
                &yesterday.month().to_string()[..3],
                yesterday.day(),
                yesterday.year()
            ),
        )
        .replace("2025-03-04", &yesterday.date().to_string());
    let mut event: Value = serde_json::from_str(&text).unwrap();
    event["id"] = json!(uuid::Uuid::new_v4().to_string());
    event["resources"] = json!([arn]);
    event["detail"]["build-id"] = json!(arn);
    event["detail"]["project-name"] = json!(ORIGINAL_PROJECT);
    let info = &mut event["detail"]["additional-information"];
    info["source-version"] = json!(push.commit);
    info["environment"]["environment-variables"] = environment
        .iter()
        .map(|(k, v)| json!({"name": k, "type": "PLAINTEXT", "value": v}))
        .collect();
    if info.get("exported-environment-variables").is_some() {
        info["exported-environment-variables"] = json!([
            {"name": "APP", "value": push.value()},
            {"name": "PRX_SPIRE_ECR_PKG_PARAMETERS", "value": format!("APP={PARAMETER}")},
        ]);
    }
    event
}

/// The original's environment of a build of ours: the dispatcher's variables (without our
/// request id), plus the project's own.
fn originals_environment(ours: &v1::BuildRequested) -> BTreeMap<String, String> {
    let mut environment: BTreeMap<String, String> = ours
        .environment
        .iter()
        .filter(|(k, _)| k.as_str() != "PRX_CI_REQUEST_ID")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    environment.insert("PRX_AWS_ACCOUNT_ID".into(), "123456789012".into());
    environment.insert(
        "PRX_APPLICATION_CODE_BUCKET".into(),
        "shadow-application-code".into(),
    );
    environment
}

fn applied(events: &[v1::Envelope]) -> Vec<v1::PublishApplied> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::PublishApplied(p)) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The build events (started, phase, completed) of the original's build `arn`.
fn build_events(events: &[v1::Envelope], arn: &str) -> Vec<v1::Envelope> {
    events
        .iter()
        .filter(|e| {
            let build = match &e.payload {
                Some(Payload::BuildStarted(p)) => p.build.as_ref(),
                Some(Payload::BuildPhaseChanged(p)) => p.build.as_ref(),
                Some(Payload::BuildCompleted(p)) => p.build.as_ref(),
                _ => None,
            };
            build.is_some_and(|b| b.build_id == arn)
        })
        .cloned()
        .collect()
}

/// `prx-ci shadow-report` (the real binary, against the running ops service) with `args`.
fn shadow_report(facts: &ExpectedFacts, args: &[&str]) -> String {
    let output = std::process::Command::new(&facts.cli)
        .arg("shadow-report")
        .args([
            "--ops-url",
            &facts.ops_grpc,
            "--repository",
            &facts.repository,
        ])
        .args(args)
        .env("PRX_CI_OPS_TOKEN", &facts.ops_token)
        .output()
        .expect("cannot run prx-ci");
    assert!(
        output.status.success(),
        "prx-ci shadow-report failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The report, on the finished scenario with every service still running, names the
/// agreement (A), the disagreement on a variable (B), and the pointer the original moved back
/// (its B finished after its C) where this system ends on C.
fn the_report_names_what_each_system_did(facts: &ExpectedFacts) {
    let report: Value = serde_json::from_str(&shadow_report(facts, &["--json"])).unwrap();
    let webhooks = report["webhooks"].as_array().unwrap();
    let verdicts: Vec<(&str, &str)> = webhooks
        .iter()
        .map(|w| {
            (
                w["commit"].as_str().unwrap(),
                w["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    let commit = |name: &str| {
        facts
            .pushes
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, c, _)| c.as_str())
            .unwrap()
    };
    assert_eq!(
        verdicts,
        [
            (commit("A"), "agree"),
            (commit("B"), "disagree"),
            (commit("C"), "agree"),
        ],
        "{report:#}"
    );
    let (variable, ours, original) = &facts.disagreement;
    assert_eq!(
        webhooks[1]["differences"],
        json!([{
            "kind": "variable",
            "architecture": "x86_64",
            "variable": variable,
            "this_system": ours,
            "original": original,
            "text": format!("x86_64: {variable} is {ours:?} here, {original:?} in the original"),
        }]),
        "{report:#}"
    );
    for w in webhooks {
        assert_eq!(w["this_system_builds"], json!(["x86_64"]));
        assert_eq!(w["original_builds"], json!(["x86_64"]));
    }

    let parameters = report["parameters"].as_array().unwrap();
    assert_eq!(parameters.len(), 1, "{report:#}");
    let p = &parameters[0];
    assert_eq!(p["name"], facts.parameter.as_str());
    assert_eq!(p["this_system"]["value"], facts.ours_final_value.as_str());
    assert_eq!(p["this_system"]["commit"], commit("C"));
    assert_eq!(p["original"]["value"], facts.originals_final_value.as_str());
    assert_eq!(p["original"]["commit"], commit("B"));
    assert_eq!(
        p["original"]["writes"], 3,
        "the original wrote after each of its builds"
    );
    assert_eq!(p["agree"], false);
    assert_eq!(p["original_regressed"], true);
    assert_eq!(p["regressed_from_commit"], commit("C"));
    assert_eq!(report["unmatched_original_builds"], json!([]));

    // The text an operator reads says the same.
    let text = shadow_report(facts, &[]);
    assert!(
        text.starts_with("3 webhooks: 2 agree, 1 disagree, 0 waiting for the original's build; 1 parameters: 1 differ, 1 moved back by the original"),
        "{text}"
    );
    assert!(
        text.contains("the original moved the pointer back"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_every_decision_and_writes_nothing() {
    let bin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_prx-ci-chaos"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let base = OffsetDateTime::now_utc().unix_timestamp() - 600;
    let sha = |n: u64| format!("{:040x}", 0x5ad0_0000_u64 + n);
    let pushes: Vec<Push> = ["A", "B", "C"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| Push {
            name,
            before: sha(i as u64),
            commit: sha(i as u64 + 1),
            pushed_at: base + 10 * i as i64,
        })
        .collect();
    let (a, b, c) = (&pushes[0], &pushes[1], &pushes[2]);
    let world = ShadowWorld::start(&bin_dir, &pushes).await;

    // Three pushes, in push order: one shadow request each.
    for push in &pushes {
        world.send_push(push).await;
    }
    let requested = world
        .wait_for("three BuildRequested", |events| {
            let r = requests(events);
            (r.len() == 3).then_some(r)
        })
        .await;
    for push in &pushes {
        let (_, request) = &requested[&push.commit];
        let build = request.build.as_ref().unwrap();
        assert!(request.shadow, "{request:?}");
        assert_eq!(build.backend, "shadow");
        assert_eq!(build.build_id, format!("shadow:{}", build.build_request_id));
    }
    let sequence = |push: &Push| requested[&push.commit].0.push_sequence;
    assert!(sequence(a) < sequence(b) && sequence(b) < sequence(c));

    // The original's builds: A agrees with us, B's PRX_BRANCH disagrees, C agrees.
    let arns: BTreeMap<&str, String> = pushes
        .iter()
        .map(|p| {
            let id = uuid::Uuid::new_v4();
            let arn =
                format!("arn:aws:codebuild:us-east-1:123456789012:build/{ORIGINAL_PROJECT}:{id}");
            (p.name, arn)
        })
        .collect();
    let mut environments: BTreeMap<&str, BTreeMap<String, String>> = pushes
        .iter()
        .map(|p| (p.name, originals_environment(&requested[&p.commit].1)))
        .collect();
    let ours_branch = environments["B"]["PRX_BRANCH"].clone();
    environments
        .get_mut("B")
        .unwrap()
        .insert("PRX_BRANCH".into(), "master".into());
    let report = |name: &str, push: &Push| {
        original_event(name, &arns[push.name], push, &environments[push.name])
    };
    for push in &pushes {
        world
            .send_original(&report("state-in-progress.json", push))
            .await;
    }
    // They finish A, C, then B: the original's updater would end on B, an older push.
    world
        .send_original(&report("state-succeeded.json", a))
        .await;
    world
        .wait_for("A's shadow publish", |e| {
            applied(e)
                .iter()
                .any(|p| p.value == a.value())
                .then_some(())
        })
        .await;
    world
        .send_original(&report("state-succeeded.json", c))
        .await;
    world
        .wait_for("C's shadow publish", |e| {
            applied(e)
                .iter()
                .any(|p| p.value == c.value())
                .then_some(())
        })
        .await;
    world
        .send_original(&report("state-succeeded.json", b))
        .await;
    let events = world
        .wait_for("B's superseded skip and every shadow notification", |e| {
            let superseded = e.iter().any(|e| {
                matches!(&e.payload, Some(Payload::PublishSkipped(s))
                    if s.reason == v1::PublishSkipReason::Superseded as i32 && s.value == b.value())
            });
            let successes = e
                .iter()
                .filter(|e| matches!(&e.payload, Some(Payload::NotificationDelivered(n)) if n.action == "success"))
                .count();
            (superseded && successes == 3).then(|| e.to_vec())
        })
        .await;

    // Each original build flowed in our request's chain, shadowed, with its own environment.
    for push in &pushes {
        let (request_envelope, request) = &requested[&push.commit];
        let adopted = build_events(&events, &arns[push.name]);
        assert!(adopted.len() >= 2, "push {}: {adopted:#?}", push.name);
        for envelope in &adopted {
            assert_eq!(envelope.push_sequence, request_envelope.push_sequence);
            assert_eq!(envelope.correlation_id, request_envelope.correlation_id);
        }
        let started = adopted
            .iter()
            .find_map(|e| match &e.payload {
                Some(Payload::BuildStarted(s)) => Some(s.clone()),
                _ => None,
            })
            .expect("a BuildStarted");
        let build = started.build.unwrap();
        assert!(build.shadowed);
        assert_eq!(build.retry_of, "");
        assert_eq!(
            build.build_request_id,
            request.build.as_ref().unwrap().build_request_id
        );
        assert!(started.requested.unwrap().shadow);
        assert_eq!(
            started.environment["PRX_BRANCH"],
            environments[push.name]["PRX_BRANCH"]
        );
        let completed = adopted
            .iter()
            .find_map(|e| match &e.payload {
                Some(Payload::BuildCompleted(c)) => Some(c.clone()),
                _ => None,
            })
            .expect("a BuildCompleted");
        assert!(completed.build.unwrap().shadowed);
        assert_eq!(completed.exported_variables["APP"], push.value());
    }
    // The publisher: every publish shadow, ending on C's value (fence), B superseded, B's
    // disagreeing branch reported as live reports it.
    let published = applied(&events);
    assert!(
        published
            .iter()
            .all(|p| p.shadow && p.parameter == PARAMETER)
    );
    assert_eq!(
        published
            .iter()
            .map(|p| p.value.clone())
            .collect::<Vec<_>>(),
        [a.value(), c.value()]
    );
    assert!(events.iter().any(|e| matches!(&e.payload, Some(Payload::PublishSkipped(s))
        if s.reason == v1::PublishSkipReason::UntrustedOverride as i32 && s.detail.contains("PRX_BRANCH"))));
    // The notifier: what it would have sent, shadow, once per post.
    let delivered: Vec<v1::NotificationDelivered> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::NotificationDelivered(n)) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert!(!delivered.is_empty());
    assert!(delivered.iter().all(|n| n.shadow && n.reference.is_empty()));
    assert_eq!(delivered.iter().filter(|n| n.action == "posted").count(), 3);

    // Nothing was written anywhere.
    let codebuild = aws_sdk_codebuild::Client::new(&world.moto.sdk_config());
    let builds = codebuild.list_builds().send().await.expect("ListBuilds");
    assert!(builds.ids().is_empty(), "{:?}", builds.ids());
    let ssm = aws_sdk_ssm::Client::new(&world.moto.sdk_config());
    let written = ssm
        .get_parameters_by_path()
        .path(PREFIX)
        .recursive(true)
        .send()
        .await
        .expect("GetParametersByPath");
    assert!(
        written.parameters().is_empty(),
        "{:?}",
        written.parameters()
    );
    let described = ssm
        .describe_parameters()
        .send()
        .await
        .expect("DescribeParameters");
    assert!(
        described.parameters().is_empty(),
        "{:?}",
        described.parameters()
    );
    assert!(world.slack.calls().is_empty(), "{:?}", world.slack.calls());
    assert!(
        world.github.statuses().is_empty(),
        "{:?}",
        world.github.statuses()
    );

    let facts = ExpectedFacts {
        cli: bin_dir.join("prx-ci"),
        ops_grpc: world.ops_grpc.clone(),
        ops_token: OPS_TOKEN.to_owned(),
        repository: REPO.to_owned(),
        parameter: PARAMETER.to_owned(),
        pushes: pushes
            .iter()
            .map(|p| (p.name.to_owned(), p.commit.clone(), p.value()))
            .collect(),
        ours_final_value: c.value(),
        originals_final_value: b.value(),
        disagreement: ("PRX_BRANCH".into(), ours_branch, "master".into()),
    };
    the_report_names_what_each_system_did(&facts);
    world.stop().await;
}
