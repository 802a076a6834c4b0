//! The seam between the build-watcher and the publisher for CodeBuild console retries: both
//! services on one nats-server, SSM and SQS in the AWS emulator, CodeBuild's reports sent
//! through the SQS queue as EventBridge delivers them. A retry (a build nobody requested, with
//! the `PRX_*` environment of a requested one) is ordered as the push it retries; anything else
//! nobody requested stays unordered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, PublishSkipReason, envelope::Payload};
use prx_ci_publisher::{NoArtifactCheck, Publisher, PublisherConfig, SsmParameterStore};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::codebuild::build::build_id_of;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::wait_until;
use prx_ci_shared::{CancellationToken, Runtime};
use serde_json::{Value, json};

use crate::sqs::{create_queue, send};
use crate::utils::{REPO, WAIT, World, arn_of, fixture, new_build_id, runtime, test_config};

const PARAMETER: &str = "/prx/stag/Spire/Dovetail-Insights/pkg/docker-image-tag";
/// GitHub's time of the first push (the high 32 bits of a push position).
const PUSHED_AT: u64 = 1_764_500_000;

/// One push of `main` as the dispatcher placed it.
#[derive(Debug, Clone)]
struct Push {
    push_sequence: u64,
    before: String,
    commit: String,
}

impl Push {
    /// The `n`th push (later `n`, later position).
    fn nth(n: u64) -> Self {
        let sha = |n: u64| format!("{n:040x}");
        Self {
            push_sequence: ((PUSHED_AT + n) << 32) | n,
            before: sha(n + 1000),
            commit: sha(n + 2000),
        }
    }

    /// The variables the dispatcher gives the push's build (StartBuild overrides).
    fn environment(&self) -> BTreeMap<String, String> {
        [
            ("PRX_REPO", REPO),
            ("PRX_COMMIT", &self.commit),
            ("PRX_BRANCH", "main"),
            ("PRX_CI_PUBLISH", "true"),
            ("PRX_TARGET_ARCHITECTURE", "x86_64"),
            ("PRX_GITHUB_BEFORE", &self.before),
            ("PRX_GITHUB_AFTER", &self.commit),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The image the push's build pushes (the post-build helper's value).
    fn value(&self) -> String {
        format!("github/prx/dovetail-insights:{}-x86_64", self.commit)
    }
}

/// The build-watcher (fed by an SQS queue) and a publisher writing to SSM, on one nats-server.
struct Seam {
    world: World,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    ssm: aws_sdk_ssm::Client,
    publisher_stop: CancellationToken,
    publisher: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Seam {
    async fn start() -> Self {
        let mut world = World::with_aws().await;
        let sqs = world.sqs();
        let queue_url = create_queue(&sqs, "codebuild-events").await;
        world.start(
            prx_ci_build_watcher::BuildWatcherConfig {
                queue_url: Some(queue_url.clone()),
                ..test_config()
            },
            None,
            Some(sqs.clone()),
        );
        let store = Arc::new(SsmParameterStore::new(&world.moto().sdk_config()));
        let ssm = store.client().clone();
        // moto loads its SSM backend on the first call (slow): not inside a test's wait.
        ssm.put_parameter()
            .name("/warm-up")
            .value("x")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("moto SSM answers");
        let mut registry = Registry::default();
        let rt: Runtime = runtime(&world.nats).await;
        let config = PublisherConfig {
            claim_lease: Duration::from_millis(800),
            write_timeout: Duration::from_millis(300),
            fence_poll_interval: Duration::from_millis(5),
            retry_backoff: vec![Duration::from_millis(50)],
            ..PublisherConfig::default()
        };
        let service = Publisher::new(rt, config, store, Arc::new(NoArtifactCheck), &mut registry)
            .expect("publisher");
        let publisher_stop = CancellationToken::new();
        let publisher = tokio::spawn(service.run(publisher_stop.clone()));
        Self {
            world,
            sqs,
            queue_url,
            ssm,
            publisher_stop,
            publisher,
        }
    }

    async fn stop(mut self) {
        self.publisher_stop.cancel();
        self.publisher.await.unwrap().unwrap();
        self.world.stop().await;
    }

    /// Publishes the BuildRequested the dispatcher would for `push`'s build `build_id`.
    async fn request(&self, push: &Push, build_id: &str) {
        let key = OrderingKey::branch(RepoName::parse(REPO).unwrap(), Branch::new("main").unwrap());
        let envelope = Chain {
            causation_id: new_event_id(),
            ..Chain::starting(&format!("delivery-{}", push.commit))
        }
        .with_ordering(&key, push.push_sequence)
        .envelope(
            new_event_id(),
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    build_id: build_id.to_owned(),
                    build_request_id: format!("req-{build_id}"),
                    repository: REPO.into(),
                    commit: push.commit.clone(),
                    architecture: v1::Architecture::X8664 as i32,
                    backend: "codebuild".into(),
                    project: crate::utils::PROJECT.into(),
                    region: "us-east-1".into(),
                    ..v1::BuildRef::default()
                }),
                environment: push.environment().into_iter().collect(),
                buildspec: "version: 0.2\n".into(),
                clone_url: format!("https://github.com/{REPO}.git"),
                source_version: push.commit.clone(),
                event_name: "push".into(),
                branch: "main".into(),
                ..v1::BuildRequested::default()
            }),
        );
        self.world.rt.publisher.publish(&envelope).await.unwrap();
    }

    /// Sends CodeBuild's state change `fixture` of `build_id` through the queue: a build with
    /// `environment` (the StartBuild overrides) over the project's variables, which on success
    /// exported the push's image for the parameter.
    async fn report(
        &self,
        name: &str,
        build_id: &str,
        environment: &BTreeMap<String, String>,
        value: &str,
    ) {
        let mut event = fixture(name, build_id);
        let info = &mut event["detail"]["additional-information"];
        let mut variables = vec![
            json!({"name": "PRX_APPLICATION_CODE_BUCKET", "type": "PLAINTEXT", "value": "prx-application-code"}),
            json!({"name": "PRX_AWS_ACCOUNT_ID", "type": "PLAINTEXT", "value": "123456789012"}),
        ];
        variables.extend(
            environment
                .iter()
                .map(|(k, v)| json!({"name": k, "type": "PLAINTEXT", "value": v})),
        );
        info["environment"]["environment-variables"] = Value::Array(variables);
        // A retry checks out what the original did (the request below).
        info["source-version"] = environment["PRX_COMMIT"].clone().into();
        info["source"] =
            json!({"type": "GITHUB", "location": format!("https://github.com/{REPO}.git")});
        info["exported-environment-variables"] = if name == "state-succeeded.json" {
            json!([
                {"name": "DOVETAIL_INSIGHTS", "value": value},
                {"name": "PRX_SPIRE_ECR_PKG_PARAMETERS", "value": format!("DOVETAIL_INSIGHTS={PARAMETER}")},
                {"name": "PRX_SPIRE_S3_PKG_PARAMETERS", "value": ""}
            ])
        } else {
            json!([])
        };
        send(&self.sqs, &self.queue_url, &event).await;
    }

    /// A build of `push` run to `fixture` (`state-succeeded.json` / `state-failed.json`):
    /// in progress first, then its final state.
    async fn build(
        &self,
        final_state: &str,
        build_id: &str,
        environment: &BTreeMap<String, String>,
        value: &str,
    ) {
        self.report("state-in-progress.json", build_id, environment, value)
            .await;
        self.world.until_events(build_id, 1).await;
        self.report(final_state, build_id, environment, value).await;
    }

    /// The publisher's outcome events (applied, skipped) of `build_id`, once there are `n`.
    async fn until_outcomes(&self, build_id: &str, n: usize) -> Vec<Payload> {
        let build_id = build_id_of(build_id).to_owned();
        wait_until(
            WAIT,
            &format!("{n} publish outcomes of {build_id}"),
            || async {
                let outcomes: Vec<Payload> = self
                    .world
                    .events()
                    .await
                    .into_iter()
                    .filter_map(|e| e.payload)
                    .filter(|p| {
                        let build = match p {
                            Payload::PublishApplied(a) => a.build.as_ref(),
                            Payload::PublishSkipped(s) => s.build.as_ref(),
                            _ => None,
                        };
                        build.is_some_and(|b| build_id_of(&b.build_id) == build_id)
                    })
                    .collect();
                (outcomes.len() >= n).then_some(outcomes)
            },
        )
        .await
    }

    /// The parameter's values in SSM, oldest first (empty when never written).
    async fn history(&self) -> Vec<String> {
        match self
            .ssm
            .get_parameter_history()
            .name(PARAMETER)
            .send()
            .await
        {
            Ok(page) => {
                let mut versions: Vec<(i64, String)> = page
                    .parameters()
                    .iter()
                    .map(|p| (p.version(), p.value().unwrap_or_default().to_owned()))
                    .collect();
                versions.sort();
                versions.into_iter().map(|(_, v)| v).collect()
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Vec::new()
            }
            Err(e) => panic!("GetParameterHistory {PARAMETER}: {e:?}"),
        }
    }
}

/// The BuildCompleted of `build_id`.
async fn completion(world: &World, build_id: &str) -> (v1::Envelope, v1::BuildCompleted) {
    let events = world.until_completed(build_id).await;
    events
        .into_iter()
        .find_map(|e| match &e.payload {
            Some(Payload::BuildCompleted(c)) => Some((e.clone(), c.clone())),
            _ => None,
        })
        .unwrap()
}

fn applied_value(outcome: &Payload) -> Option<&str> {
    match outcome {
        Payload::PublishApplied(a) => Some(a.value.as_str()),
        _ => None,
    }
}

fn skip_reason(outcome: &Payload) -> Option<(PublishSkipReason, &str)> {
    match outcome {
        Payload::PublishSkipped(s) => Some((
            PublishSkipReason::try_from(s.reason).unwrap(),
            s.detail.as_str(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_console_retry_of_a_failed_build_publishes_at_its_push_position() {
    let seam = Seam::start().await;
    let (older, newer) = (Push::nth(1), Push::nth(2));

    // The older push publishes; the newer push's build fails.
    let older_build = new_build_id();
    seam.request(&older, &arn_of(&older_build)).await;
    seam.build(
        "state-succeeded.json",
        &older_build,
        &older.environment(),
        &older.value(),
    )
    .await;
    seam.until_outcomes(&older_build, 1).await;
    let failed = new_build_id();
    seam.request(&newer, &arn_of(&failed)).await;
    seam.build(
        "state-failed.json",
        &failed,
        &newer.environment(),
        &newer.value(),
    )
    .await;
    seam.world.until_completed(&failed).await;
    assert_eq!(seam.history().await, [older.value()]);

    // An operator retries the failed build in the console: same overrides, nobody requested it.
    let retry = new_build_id();
    seam.build(
        "state-succeeded.json",
        &retry,
        &newer.environment(),
        &newer.value(),
    )
    .await;
    let (envelope, completed) = completion(&seam.world, &retry).await;
    assert_eq!(
        envelope.push_sequence, newer.push_sequence,
        "the push it retries"
    );
    let build = completed.build.clone().unwrap();
    assert_eq!(build_id_of(&build.build_id), retry, "its own build id");
    assert_eq!(build.retry_of, arn_of(&failed));
    assert_eq!(build.build_request_id, "", "not the original's request");
    let requested = completed.requested.expect("the original's request");
    assert_eq!(requested.environment["PRX_GITHUB_BEFORE"], newer.before);
    // Its start is in the same chain (adopted at its first report).
    let started = &seam.world.build_events(&retry).await[0];
    assert!(matches!(started.payload, Some(Payload::BuildStarted(_))));
    assert_eq!(started.push_sequence, newer.push_sequence);

    let outcomes = seam.until_outcomes(&retry, 1).await;
    assert_eq!(
        applied_value(&outcomes[0]),
        Some(newer.value().as_str()),
        "{outcomes:?}"
    );
    assert_eq!(seam.history().await, [older.value(), newer.value()]);
    seam.stop().await;
}

#[tokio::test]
async fn a_console_retry_of_an_older_push_never_moves_the_parameter_back() {
    let seam = Seam::start().await;
    let (older, newer) = (Push::nth(1), Push::nth(2));
    for (push, build) in [(&older, new_build_id()), (&newer, new_build_id())] {
        seam.request(push, &arn_of(&build)).await;
        seam.build(
            "state-succeeded.json",
            &build,
            &push.environment(),
            &push.value(),
        )
        .await;
        seam.until_outcomes(&build, 1).await;
    }
    assert_eq!(seam.history().await, [older.value(), newer.value()]);

    // The older push's build retried in the console after the newer push published.
    let retry = new_build_id();
    seam.build(
        "state-succeeded.json",
        &retry,
        &older.environment(),
        &older.value(),
    )
    .await;
    let (envelope, completed) = completion(&seam.world, &retry).await;
    assert_eq!(envelope.push_sequence, older.push_sequence);
    assert!(completed.requested.is_some());
    let outcomes = seam.until_outcomes(&retry, 1).await;
    let (reason, detail) = skip_reason(&outcomes[0]).expect("skipped");
    assert_eq!(reason, PublishSkipReason::Superseded, "{detail}");
    assert_eq!(
        seam.history().await,
        [older.value(), newer.value()],
        "no write after the newer push's"
    );
    seam.stop().await;
}

#[tokio::test]
async fn builds_nobody_requested_that_match_no_request_stay_unordered() {
    let seam = Seam::start().await;
    let push = Push::nth(1);
    let original = new_build_id();
    seam.request(&push, &arn_of(&original)).await;
    seam.build(
        "state-failed.json",
        &original,
        &push.environment(),
        &push.value(),
    )
    .await;
    seam.world.until_completed(&original).await;

    // A console build of the same commit with a changed dispatcher variable.
    let mut changed = push.environment();
    changed.insert("PRX_GITHUB_BEFORE".into(), "0".repeat(40));
    // A console build of a commit nobody pushed.
    let unknown = Push::nth(7);
    for (build, environment, value) in [
        (new_build_id(), changed, push.value()),
        (new_build_id(), unknown.environment(), unknown.value()),
    ] {
        seam.build("state-succeeded.json", &build, &environment, &value)
            .await;
        let (envelope, completed) = completion(&seam.world, &build).await;
        assert_eq!(envelope.push_sequence, 0);
        assert_eq!(completed.requested, None);
        assert_eq!(completed.build.unwrap().retry_of, "");
        let outcomes = seam.until_outcomes(&build, 1).await;
        let (reason, _) = skip_reason(&outcomes[0]).expect("skipped");
        assert_eq!(reason, PublishSkipReason::Unordered, "{outcomes:?}");
    }
    assert!(seam.history().await.is_empty());
    seam.stop().await;
}
