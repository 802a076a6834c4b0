//! The fake AWS of the end-to-end bench, one loopback HTTP server speaking the AWS JSON 1.1
//! protocol the SDKs use: CodeBuild whose builds complete at once (`StartBuild` answers, then
//! the build's `IN_PROGRESS` and `SUCCEEDED` EventBridge events are stored as
//! `BuildReportReceived`, exactly as the build-watcher's SQS source stores them), and SSM
//! (`PutParameter`, `GetParameter`, `GetParametersByPath`) recording every write with the time
//! it arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::build::format_codebuild_time;
use prx_ci_shared::codebuild::event::{COMPLETED_PHASE, PHASE_ORDER};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::pushes;

/// The account in the fake's ARNs.
pub const ACCOUNT: &str = "123456789012";
/// The region of the fake's ARNs.
pub const REGION: &str = "us-east-1";

/// When the fake CodeBuild saw one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendBuild {
    /// `StartBuild` received.
    pub started: OffsetDateTime,
    /// When the completion reports were handed on for storing (`None`: not yet, or storing
    /// them failed).
    pub completed: Option<OffsetDateTime>,
}

/// One `PutParameter` as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub at: OffsetDateTime,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Default)]
struct Recorded {
    /// By build id: the commit built, and when.
    builds: HashMap<String, (String, BackendBuild)>,
    /// name -> (value, version)
    parameters: HashMap<String, (String, i64)>,
    writes: Vec<Write>,
    report_failures: u64,
}

#[derive(Debug)]
struct Shared {
    publisher: EventPublisher,
    recorded: Mutex<Recorded>,
}

/// A running fake AWS.
#[derive(Debug, Clone)]
pub struct FakeAws {
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeAws {
    /// Serves on a free loopback port; reports are stored through `publisher`.
    pub async fn start(publisher: EventPublisher) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            publisher,
            recorded: Mutex::new(Recorded::default()),
        });
        let app = Router::new()
            .route("/", post(call))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("the fake AWS stopped: {err}");
            }
        });
        Ok(Self { url, shared })
    }

    /// The first build of each commit seen (by `StartBuild`), by commit, and how many builds
    /// each commit had.
    pub fn builds(&self) -> HashMap<String, (BackendBuild, usize)> {
        let mut by_commit: HashMap<String, (BackendBuild, usize)> = HashMap::new();
        for (commit, build) in lock(&self.shared.recorded).builds.values() {
            by_commit
                .entry(commit.clone())
                .and_modify(|(first, n)| {
                    *n += 1;
                    if build.started < first.started {
                        *first = *build;
                    }
                })
                .or_insert((*build, 1));
        }
        by_commit
    }

    /// Every `PutParameter` from the `from`th on, in arrival order.
    pub fn writes_from(&self, from: usize) -> Vec<Write> {
        lock(&self.shared.recorded)
            .writes
            .get(from..)
            .unwrap_or_default()
            .to_vec()
    }

    /// The current value of parameter `name`.
    pub fn parameter(&self, name: &str) -> Option<String> {
        lock(&self.shared.recorded)
            .parameters
            .get(name)
            .map(|(v, _)| v.clone())
    }

    /// Completion reports that could not be stored.
    pub fn report_failures(&self) -> u64 {
        lock(&self.shared.recorded).report_failures
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

fn error(kind: &str, message: &str) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        &json!({"__type": kind, "message": message}),
    )
}

async fn call(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error("SerializationException", "not JSON");
    };
    let text = |key: &str| request[key].as_str().unwrap_or_default().to_owned();
    match target.rsplit('.').next().unwrap_or_default() {
        "StartBuild" => start_build(&shared, &request),
        "PutParameter" => {
            let (name, value) = (text("Name"), text("Value"));
            let at = OffsetDateTime::now_utc();
            let mut rec = lock(&shared.recorded);
            let version = rec.parameters.get(&name).map_or(1, |(_, v)| v + 1);
            rec.parameters
                .insert(name.clone(), (value.clone(), version));
            rec.writes.push(Write { at, name, value });
            answer(
                StatusCode::OK,
                &json!({"Version": version, "Tier": "Standard"}),
            )
        }
        "GetParameter" => {
            let name = text("Name");
            let found = lock(&shared.recorded).parameters.get(&name).cloned();
            match found {
                Some((value, version)) => answer(
                    StatusCode::OK,
                    &json!({"Parameter": parameter_json(&name, &value, version)}),
                ),
                None => error("ParameterNotFound", &name),
            }
        }
        "GetParametersByPath" => {
            let path = text("Path");
            let rec = lock(&shared.recorded);
            let found: Vec<Value> = rec
                .parameters
                .iter()
                .filter(|(name, _)| name.starts_with(&path))
                .map(|(name, (value, version))| parameter_json(name, value, *version))
                .collect();
            answer(StatusCode::OK, &json!({"Parameters": found}))
        }
        other => error("UnknownOperationException", other),
    }
}

fn parameter_json(name: &str, value: &str, version: i64) -> Value {
    json!({
        "Name": name,
        "Type": "String",
        "Value": value,
        "Version": version,
        "DataType": "text",
        "ARN": format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"),
    })
}

/// `StartBuild`: answers with the new build and completes it at once in the background.
fn start_build(shared: &Arc<Shared>, request: &Value) -> Response {
    let now = OffsetDateTime::now_utc();
    let project = request["projectName"].as_str().unwrap_or_default();
    let environment: Vec<(String, String)> = request["environmentVariablesOverride"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_owned(),
                        v["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let var = |name: &str| {
        environment
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (repository, commit) = (var("PRX_REPO"), var("PRX_COMMIT"));
    let id = format!("{project}:{}", uuid::Uuid::new_v4());
    let arn = format!("arn:aws:codebuild:{REGION}:{ACCOUNT}:build/{id}");
    lock(&shared.recorded).builds.insert(
        id.clone(),
        (
            commit.clone(),
            BackendBuild {
                started: now,
                completed: None,
            },
        ),
    );
    let build = Build {
        arn: arn.clone(),
        project: project.to_owned(),
        source_version: request["sourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        source_location: request["sourceLocationOverride"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        exported: pushes::exported_variables(&repository, &commit),
        environment,
        started: now,
    };
    let shared = shared.clone();
    let build_id = id.clone();
    tokio::spawn(async move {
        // The build is over when its reports are handed on; storing them (the build-watcher's
        // SQS source's work in production) is the system's time, not the build's.
        let at = OffsetDateTime::now_utc();
        let mut stored = true;
        for event in [build.event(false), build.event(true)] {
            let envelope = prx_ci_build_watcher::sqs::report_envelope(
                &event.to_string(),
                &uuid::Uuid::new_v4().to_string(),
                prx_ci_build_watcher::sqs::SOURCE,
            );
            stored &= shared.publisher.publish(&envelope).await.is_ok();
        }
        let mut rec = lock(&shared.recorded);
        if stored {
            if let Some((_, b)) = rec.builds.get_mut(&build_id) {
                b.completed = Some(at);
            }
        } else {
            rec.report_failures += 1;
        }
    });
    answer(
        StatusCode::OK,
        &json!({"build": {
            "id": id,
            "arn": arn,
            "projectName": project,
            "buildStatus": "IN_PROGRESS",
            "currentPhase": "SUBMITTED",
            "startTime": now.unix_timestamp(),
        }}),
    )
}

/// What a fake build's events say.
#[derive(Debug, Clone)]
struct Build {
    arn: String,
    project: String,
    source_version: String,
    source_location: String,
    environment: Vec<(String, String)>,
    exported: Vec<(String, String)>,
    started: OffsetDateTime,
}

impl Build {
    /// The EventBridge `CodeBuild Build State Change` of the build: `IN_PROGRESS`, or (with
    /// `complete`) `SUCCEEDED` with every phase and the exported variables.
    fn event(&self, complete: bool) -> Value {
        let now = OffsetDateTime::now_utc();
        let at = format_codebuild_time(self.started);
        let phases: Vec<Value> = if complete {
            PHASE_ORDER
                .iter()
                .filter(|p| **p != COMPLETED_PHASE)
                .map(|p| json!({"phase-type": p, "phase-status": "SUCCEEDED", "start-time": at, "end-time": at, "duration-in-seconds": 0, "phase-context": []}))
                .chain([json!({"phase-type": COMPLETED_PHASE, "start-time": at})])
                .collect()
        } else {
            vec![json!({"phase-type": "SUBMITTED", "start-time": at})]
        };
        let names = |vars: &[(String, String)], typed: bool| -> Vec<Value> {
            vars.iter()
                .map(|(n, v)| {
                    if typed {
                        json!({"name": n, "value": v, "type": "PLAINTEXT"})
                    } else {
                        json!({"name": n, "value": v})
                    }
                })
                .collect()
        };
        json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "CodeBuild Build State Change",
            "source": "aws.codebuild",
            "account": ACCOUNT,
            "time": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "region": REGION,
            "resources": [self.arn],
            "detail": {
                "build-status": if complete { "SUCCEEDED" } else { "IN_PROGRESS" },
                "project-name": self.project,
                "build-id": self.arn,
                "current-phase": if complete { "COMPLETED" } else { "SUBMITTED" },
                "current-phase-context": "[]",
                "version": "1",
                "additional-information": {
                    "build-complete": complete,
                    "initiator": "prx-ci-bench",
                    "build-start-time": at,
                    "source-version": self.source_version,
                    "source": {"location": self.source_location, "type": "GITHUB"},
                    "timeout-in-minutes": 16,
                    "environment": {
                        "image": "aws/codebuild/standard:7.0",
                        "type": "LINUX_CONTAINER",
                        "compute-type": "BUILD_GENERAL1_SMALL",
                        "environment-variables": names(&self.environment, true),
                    },
                    "phases": phases,
                    "exported-environment-variables": if complete { names(&self.exported, false) } else { Vec::new() },
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prx_ci_shared::bus::subject::EVENTS_STREAM;
    use prx_ci_shared::testing::{NatsServer, wait_until};

    use super::*;

    fn sdk(url: &str) -> aws_config::SdkConfig {
        use aws_credential_types::Credentials;
        use aws_credential_types::provider::SharedCredentialsProvider;
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(url)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "test",
            )))
            .build()
    }

    #[tokio::test]
    async fn a_started_build_completes_at_once_with_its_exports_and_ssm_records_writes() {
        let nats = NatsServer::start().await;
        let js = async_nats::jetstream::new(nats.connect().await);
        let definitions = prx_ci_shared::bus::nats::Definitions::embedded().unwrap();
        prx_ci_shared::bus::nats::provision(&js, &definitions, 1)
            .await
            .unwrap();
        let fake = FakeAws::start(EventPublisher::new(js.clone()))
            .await
            .unwrap();
        let sdk = sdk(&fake.url);

        let codebuild = aws_sdk_codebuild::Client::new(&sdk);
        let var = |n: &str, v: &str| {
            aws_sdk_codebuild::types::EnvironmentVariable::builder()
                .name(n)
                .value(v)
                .build()
                .unwrap()
        };
        let started = codebuild
            .start_build()
            .project_name("infrastructure-ci-Runner2")
            .source_version("refs/heads/main^{abc}")
            .environment_variables_override(var("PRX_REPO", "bench/app-001"))
            .environment_variables_override(var("PRX_COMMIT", "abc"))
            .send()
            .await
            .unwrap();
        let arn = started.build_value().unwrap().arn().unwrap().to_owned();
        assert!(arn.starts_with(
            "arn:aws:codebuild:us-east-1:123456789012:build/infrastructure-ci-Runner2:"
        ));
        let (build, builds) = wait_until(Duration::from_secs(10), "the build to complete", || {
            let b = fake.builds().get("abc").copied();
            async move { b.filter(|(b, _)| b.completed.is_some()) }
        })
        .await;
        assert!(build.completed.unwrap() >= build.started);
        assert_eq!(builds, 1, "one build of the commit");
        // Both reports stored, as the build-watcher's SQS source stores them.
        let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 2);
        let last = stream
            .get_last_raw_message_by_subject("prx.runner.report.bench.app-001")
            .await
            .unwrap();
        let envelope =
            <prx_ci_proto::v1::Envelope as prost::Message>::decode(last.payload.as_ref()).unwrap();
        let Some(prx_ci_proto::v1::envelope::Payload::BuildReportReceived(report)) =
            envelope.payload
        else {
            panic!("not a report: {envelope:?}");
        };
        assert_eq!(report.build_id, arn);
        let event: prx_ci_shared::codebuild::event::CodeBuildEvent =
            serde_json::from_slice(&report.event_json).unwrap();
        assert_eq!(event.detail.build_status.as_deref(), Some("SUCCEEDED"));
        assert_eq!(event.merged_variables()["APP"], "bench-abc");
        assert_eq!(
            event.merged_variables()["PRX_SPIRE_ECR_PKG_PARAMETERS"],
            "APP=/prx/stag/Spire/app-001/image"
        );

        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let missing = ssm.get_parameter().name("/p/x").send().await.unwrap_err();
        assert!(missing.into_service_error().is_parameter_not_found());
        for value in ["one", "two"] {
            ssm.put_parameter()
                .name("/p/x")
                .value(value)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        }
        let got = ssm.get_parameter().name("/p/x").send().await.unwrap();
        assert_eq!(got.parameter().unwrap().value(), Some("two"));
        assert_eq!(got.parameter().unwrap().version(), 2);
        let writes = fake.writes_from(1);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (writes[0].name.as_str(), writes[0].value.as_str()),
            ("/p/x", "two")
        );
        assert_eq!(fake.parameter("/p/x").as_deref(), Some("two"));
        assert_eq!(fake.report_failures(), 0);
    }
}
