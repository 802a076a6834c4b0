//! The seam between the post-build helper and the publisher, end to end: signed push webhooks
//! into the real ingress, the dispatcher reading each app's `buildspec.yml` from a fake GitHub
//! contents API, the local runner building it (the stand-in `docker` from
//! `post_build_helper/fake-docker` on `PATH`, which really writes pushed images to the emulated
//! ECR; the real `aws` CLI uploads to the emulated S3), the buildspec sourcing
//! `ci/utility/post_build.sh` downloaded from the fake GitHub, and the publisher writing SSM
//! parameters after its ECR/S3 artifact checks, exactly as the production binaries wire it.
//!
//! `prx-ci up` cannot carry this test: it reads buildspecs from the local clone, writes the NATS
//! KV parameter store and checks no artifacts. So this composes the same services with the
//! production ports (GitHub buildspecs, SSM, AWS artifact checks) and the local runner as the
//! build backend.
//!
//! Three app shapes: one ECR-labelled image, two ECR-labelled images, one S3 ZIP; and a fourth
//! app whose two images share one label value (the duplicate-label warning, the last wins).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_dispatcher::{Dispatcher, DispatcherConfig, GitHubBuildspecSource};
use prx_ci_ingress::{Ingress, IngressConfig};
use prx_ci_local_runner::{LocalRunner, LocalRunnerConfig};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::{AwsArtifactChecker, Publisher, PublisherConfig, SsmParameterStore};
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub};
use prx_ci_shared::testing::{MotoServer, NatsServer, git::git, tool_path, wait_until};
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const SECRET: &str = "helper-to-publisher-secret";
/// moto's account id (the ECR registry host and repository ARNs use it).
const ACCOUNT: &str = "123456789012";
const BUCKET: &str = "prx-us-east-1-application-code";
/// Where the buildspecs download the helper from (raw.githubusercontent.com in production):
/// this repository, at this path, on `main`.
const HELPER_REPO: &str = "PRX/prx-ci";
const HELPER_PATH: &str = "ci/utility/post_build.sh";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// The services of the production deployment in one process, the local runner as the build
/// backend, against a real nats-server, the AWS emulator and a fake GitHub.
struct System {
    _nats: NatsServer,
    moto: MotoServer,
    github: FakeGitHub,
    dir: tempfile::TempDir,
    js: async_nats::jetstream::Context,
    runner: Arc<LocalRunner>,
    shutdown: CancellationToken,
    services: JoinSet<anyhow::Result<()>>,
    url: String,
}

impl System {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let github = FakeGitHub::start(FakeAuth::Anonymous).await;
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["bin", "repos"] {
            fs::create_dir(dir.path().join(sub)).expect("create dir");
        }

        // The helper, served like raw.githubusercontent.com serves it.
        let helper = fs::read(manifest_dir().join("../..").join(HELPER_PATH)).unwrap();
        let tools = "1".repeat(40);
        github.add_commit(
            HELPER_REPO,
            FakeCommit::new(&tools).file(HELPER_PATH, helper),
        );
        github.set_branch(HELPER_REPO, "main", &tools);

        // Each build has its own Docker daemon, as on CodeBuild: the stand-in keeps its state
        // in the build's checkout, which the runner removes afterwards.
        write_executable(
            &dir.path().join("bin/docker"),
            &format!(
                "#!/bin/sh\nstate=\"${{CODEBUILD_SRC_DIR:?the stand-in docker runs in builds}}/.fake-docker\"\n\
                 mkdir -p \"$state\"\n\
                 FAKE_DOCKER_STATE=\"$state\" FAKE_DOCKER_LOG=\"$state/calls.log\" exec bash '{}' \"$@\"\n",
                manifest_dir()
                    .join("tests/post_build_helper/fake-docker")
                    .display()
            ),
        );

        let aws = moto.sdk_config();
        let s3 = s3_client(&moto);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create the application-code bucket");

        let tools_bin = tool_path("aws");
        let tools_bin = tools_bin.parent().expect("aws has a directory");
        let runner_config = LocalRunnerConfig {
            data_dir: dir.path().join("runner"),
            work_dir: dir.path().join("work"),
            aws_account_id: ACCOUNT.to_owned(),
            application_code_bucket: BUCKET.to_owned(),
            // What an operator sets to let the helper really publish (docs/local-runner.md).
            environment: BTreeMap::from(
                [
                    (
                        "PATH",
                        format!(
                            "{}:{}:/usr/local/bin:/usr/bin:/bin",
                            dir.path().join("bin").display(),
                            tools_bin.display()
                        ),
                    ),
                    ("AWS_ENDPOINT_URL", moto.endpoint()),
                    ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
                    ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            ),
            ..LocalRunnerConfig::default()
        };

        let mut registry = Registry::default();
        let client = async_nats::connect(nats.url()).await.expect("connect NATS");
        let rt = Runtime::from_client(client, &mut registry);
        rt.provision(1).await.expect("provision NATS");

        let runner = LocalRunner::new(rt.clone(), runner_config).expect("local runner");
        let ingress = Ingress::new(
            rt.clone(),
            IngressConfig {
                secrets: vec![SecretString::from(SECRET)],
                ..IngressConfig::default()
            },
            &mut registry,
        )
        .expect("ingress");
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
            runner.clone(),
            &mut registry,
        )
        .expect("dispatcher");
        let watcher = BuildWatcher::new(
            rt.clone(),
            BuildWatcherConfig::default(),
            None,
            None,
            &mut registry,
        )
        .expect("build watcher");
        // What the prx-ci-publisher binary builds from [aws] and [publisher].
        let publisher_config = PublisherConfig {
            application_code_bucket: BUCKET.to_owned(),
            s3_force_path_style: true,
            ..PublisherConfig::default()
        };
        let artifacts = AwsArtifactChecker::with_path_style(
            &aws,
            publisher_config.application_code_bucket.clone(),
            publisher_config.s3_force_path_style,
        );
        let publisher = Publisher::new(
            rt.clone(),
            publisher_config,
            Arc::new(SsmParameterStore::new(&aws)),
            Arc::new(artifacts),
            &mut registry,
        )
        .expect("publisher");

        let webhooks = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/github", webhooks.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let mut services = JoinSet::new();
        services.spawn(ingress.run(webhooks, Arc::new(registry), shutdown.clone()));
        services.spawn(dispatcher.run(shutdown.clone()));
        services.spawn(watcher.run(shutdown.clone()));
        services.spawn(publisher.run(shutdown.clone()));

        Self {
            _nats: nats,
            moto,
            github,
            dir,
            js: rt.js.clone(),
            runner,
            shutdown,
            services,
            url,
        }
    }

    /// A new app repository `owner/name` with `files` committed on `main`, the same commit
    /// in the fake GitHub (its buildspec read from there); returns the commit.
    fn app(&self, repository: &str, files: &[(&str, &str)]) -> App {
        let dir = self
            .dir
            .path()
            .join("repos")
            .join(repository.replace('/', "-"));
        fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        git(&dir, &["add", "."]);
        git(
            &dir,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "-m",
                "app",
            ],
        );
        let commit = git(&dir, &["rev-parse", "HEAD"]);
        assert!(
            files.iter().any(|(name, _)| *name == "buildspec.yml"),
            "a buildspec"
        );
        let mut mirrored = FakeCommit::new(&commit);
        for (name, text) in files {
            mirrored = mirrored.file(*name, *text);
        }
        self.github.add_commit(repository, mirrored);
        App {
            repository: repository.to_owned(),
            clone_url: url::Url::from_file_path(&dir).unwrap().to_string(),
            commit,
        }
    }

    /// Sends GitHub's push of `app`'s commit to `main`.
    async fn push(&self, app: &App) {
        let (owner, name) = app.repository.split_once('/').unwrap();
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "before": "0".repeat(40),
            "after": app.commit,
            "created": true,
            "deleted": false,
            "forced": false,
            "head_commit": {"id": app.commit, "message": "app", "author": {"name": "T", "username": "t"}},
            "repository": {
                "name": name,
                "full_name": app.repository,
                "owner": {"login": owner},
                "default_branch": "main",
                "clone_url": app.clone_url,
                "html_url": app.clone_url,
                "pushed_at": 1_795_000_000,
            },
            "pusher": {"name": "t"},
            "sender": {"login": "t"},
        })
        .to_string();
        let status = reqwest::Client::new()
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
            .header(
                "X-Hub-Signature-256",
                prx_ci_ingress::signature_256(SECRET, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .expect("send webhook")
            .status();
        assert_eq!(status.as_u16(), 202, "webhook for {}", app.repository);
    }

    /// Waits for `count` publish outcomes of `app`'s build; panics with the build log when the
    /// build fails or a parameter is skipped (naming the check that refused it).
    async fn published(&self, app: &App, count: usize) -> Vec<v1::PublishApplied> {
        let what = format!("{count} publish outcome(s) of {}", app.repository);
        let outcomes = wait_until(Duration::from_secs(120), &what, || async {
            let events = stored_events(&self.js).await;
            for event in &events {
                if let Some(Payload::BuildCompleted(c)) = &event.payload
                    && c.build.as_ref().is_some_and(|b| b.commit == app.commit)
                    && c.status() != v1::BuildStatus::Succeeded
                {
                    panic!(
                        "the build of {} did not succeed: {c:?}\n{}",
                        app.repository,
                        self.build_logs()
                    );
                }
                if let Some(Payload::BuildSkipped(s)) = &event.payload
                    && s.commit == app.commit
                {
                    panic!("the push of {} was skipped: {s:?}", app.repository);
                }
            }
            let outcomes: Vec<Payload> = events
                .into_iter()
                .filter_map(|e| e.payload)
                .filter(|p| match p {
                    Payload::PublishApplied(a) => {
                        a.build.as_ref().is_some_and(|b| b.commit == app.commit)
                    }
                    Payload::PublishSkipped(s) => {
                        s.build.as_ref().is_some_and(|b| b.commit == app.commit)
                    }
                    _ => false,
                })
                .collect();
            (outcomes.len() >= count).then_some(outcomes)
        })
        .await;
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Payload::PublishApplied(a) => a,
                Payload::PublishSkipped(s) => panic!(
                    "{}: parameter {} skipped as {:?}: {} (value {:?})\n{}",
                    app.repository,
                    s.parameter,
                    s.reason(),
                    s.detail,
                    s.value,
                    self.build_logs()
                ),
                other => unreachable!("{other:?}"),
            })
            .collect()
    }

    /// Every build log the runner kept, for failure messages.
    fn build_logs(&self) -> String {
        let dir = self.dir.path().join("runner/builds");
        let mut out = String::new();
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("--- {}\n", entry.path().display()));
                out.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    /// The SSM parameter's value, as Spire CD reads it.
    async fn parameter(&self, name: &str) -> String {
        aws_sdk_ssm::Client::new(&self.moto.sdk_config())
            .get_parameter()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get SSM parameter {name}: {e:?}"))
            .parameter()
            .and_then(|p| p.value())
            .expect("a value")
            .to_owned()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.runner.shutdown().await;
        while let Some(done) = self.services.join_next().await {
            done.expect("service task")
                .expect("service stopped cleanly");
        }
    }
}

fn s3_client(moto: &MotoServer) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&moto.sdk_config())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An app repository and its pushed commit.
struct App {
    repository: String,
    clone_url: String,
    commit: String,
}

/// Every envelope in the events stream, in stream order.
async fn stored_events(js: &async_nats::jetstream::Context) -> Vec<v1::Envelope> {
    use prost::Message as _;
    let stream = js
        .get_stream(prx_ci_shared::bus::subject::EVENTS_STREAM)
        .await
        .expect("events stream");
    let last = stream
        .get_info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(raw) = stream.get_raw_message(seq).await {
            out.push(v1::Envelope::decode(raw.payload).unwrap_or_default());
        }
    }
    out
}

/// An app's buildspec: the mapping variables, its docker builds, and the helper sourced in
/// `post_build` after downloading it, as docs/post-build-helper.md shows.
fn buildspec(
    helper_url: &str,
    mappings: &[(&str, &str)],
    labels: &[&str],
    builds: &[&str],
) -> String {
    let mut text = String::from("version: 0.2\nenv:\n  shell: bash\n  variables:\n");
    for (name, value) in mappings {
        text.push_str(&format!("    {name}: \"{value}\"\n"));
    }
    text.push_str("  exported-variables:\n");
    for name in mappings
        .iter()
        .map(|(n, _)| *n)
        .chain(labels.iter().copied())
    {
        text.push_str(&format!("    - {name}\n"));
    }
    text.push_str("phases:\n  build:\n    commands:\n");
    for build in builds {
        text.push_str(&format!("      - {build}\n"));
    }
    text.push_str(&format!(
        "  post_build:\n    commands:\n      - curl -sfo post_build.sh \"{helper_url}\"\n      - . ./post_build.sh\n"
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_values_of_every_app_shape_are_published_to_ssm() {
    let system = System::start().await;
    let helper_url = system.github.raw_url(HELPER_REPO, "main", HELPER_PATH);

    // Mixed-case names on purpose: ECR repositories are lower-cased, S3 keys keep the case.
    let one = system.app(
        "PRX/One-Image",
        &[
            (
                "buildspec.yml",
                &buildspec(
                    &helper_url,
                    &[(
                        "PRX_SPIRE_ECR_PKG_PARAMETERS",
                        "RAILS_APP=/prx/stag/Spire/OneImage/pkg/docker-image-tag",
                    )],
                    &["RAILS_APP"],
                    &["docker build -t one-image ."],
                ),
            ),
            (
                "Dockerfile",
                "FROM scratch\nLABEL org.prx.spire.publish.ecr=\"RAILS_APP\"\n",
            ),
        ],
    );
    let two = system.app(
        "PRX/Two-Images",
        &[
            (
                "buildspec.yml",
                &buildspec(
                    &helper_url,
                    &[(
                        "PRX_SPIRE_ECR_PKG_PARAMETERS",
                        "WEB=/prx/stag/Spire/TwoImages/pkg/web-image-tag;\
                             Worker=/prx/stag/Spire/TwoImages/pkg/worker-image-tag",
                    )],
                    &["WEB", "Worker"],
                    &[
                        "docker build -t web -f Dockerfile.web .",
                        "docker build -t worker -f Dockerfile.worker .",
                    ],
                ),
            ),
            (
                "Dockerfile.web",
                "FROM scratch\nLABEL org.prx.spire.publish.ecr=WEB\n",
            ),
            (
                "Dockerfile.worker",
                "FROM scratch\nLABEL org.prx.spire.publish.ecr=Worker\n",
            ),
        ],
    );
    let zip = system.app(
        "PRX/Lambda-Zip",
        &[
            (
                "buildspec.yml",
                &buildspec(
                    &helper_url,
                    &[(
                        "PRX_SPIRE_S3_PKG_PARAMETERS",
                        "LAMBDA_ZIP=/prx/stag/Spire/LambdaZip/pkg/s3-object-key",
                    )],
                    &["LAMBDA_ZIP"],
                    &["docker build -t lambda ."],
                ),
            ),
            (
                "Dockerfile",
                "FROM scratch\nCOPY build.zip /.prxci/build.zip\n\
                     LABEL org.prx.spire.publish.s3=LAMBDA_ZIP\n",
            ),
        ],
    );

    // Not one of the three shapes: a label inherited from a base image, so two images carry
    // one value. The original's outcome (the last listed wins), with a warning in the build log.
    let shared = system.app(
        "PRX/Shared-Label",
        &[
            (
                "buildspec.yml",
                &buildspec(
                    &helper_url,
                    &[(
                        "PRX_SPIRE_ECR_PKG_PARAMETERS",
                        "APP=/prx/stag/Spire/SharedLabel/pkg/docker-image-tag",
                    )],
                    &["APP"],
                    &[
                        "docker build -t base -f Dockerfile.base .",
                        "docker build -t app .",
                    ],
                ),
            ),
            (
                "Dockerfile.base",
                "FROM scratch\nLABEL org.prx.spire.publish.ecr=APP\n",
            ),
            // The stand-in does not inherit: the app image repeats the base's label.
            (
                "Dockerfile",
                "FROM base\nLABEL org.prx.spire.publish.ecr=APP\n",
            ),
        ],
    );

    for app in [&one, &two, &zip, &shared] {
        system.push(app).await;
    }

    let mut applied: Vec<(String, String)> = Vec::new();
    for (app, count) in [(&one, 1), (&two, 2), (&zip, 1), (&shared, 1)] {
        applied.extend(
            system
                .published(app, count)
                .await
                .into_iter()
                .map(|a| (a.parameter, a.value)),
        );
    }
    applied.sort();
    let expected = [
        (
            "/prx/stag/Spire/LambdaZip/pkg/s3-object-key".to_owned(),
            format!("GitHub/PRX/Lambda-Zip/{}/LAMBDA_ZIP.zip", zip.commit),
        ),
        (
            "/prx/stag/Spire/OneImage/pkg/docker-image-tag".to_owned(),
            format!("github/prx/one-image:{}-x86_64", one.commit),
        ),
        (
            "/prx/stag/Spire/SharedLabel/pkg/docker-image-tag".to_owned(),
            format!("github/prx/shared-label:{}-x86_64", shared.commit),
        ),
        (
            "/prx/stag/Spire/TwoImages/pkg/web-image-tag".to_owned(),
            format!("github/prx/two-images:{}-x86_64-web", two.commit),
        ),
        (
            "/prx/stag/Spire/TwoImages/pkg/worker-image-tag".to_owned(),
            format!("github/prx/two-images:{}-x86_64-worker", two.commit),
        ),
    ];
    assert_eq!(applied, expected);
    // What Spire CD reads.
    for (name, value) in &expected {
        assert_eq!(&system.parameter(name).await, value, "SSM parameter {name}");
    }
    let logs = system.build_logs();
    assert!(
        logs.contains("post_build.sh: WARNING: label value APP is used by more than one image"),
        "{logs}"
    );
    assert_eq!(logs.matches("WARNING: label value").count(), 1, "{logs}");
    // The artifacts the values name are where the publisher checked them.
    let ecr = aws_sdk_ecr::Client::new(&system.moto.sdk_config());
    for (repository, tags) in [
        (
            "github/prx/one-image",
            vec![
                format!("{}-x86_64", one.commit),
                format!("release-{}-x86_64", one.commit),
            ],
        ),
        (
            "github/prx/two-images",
            vec![
                format!("{}-x86_64-web", two.commit),
                format!("{}-x86_64-worker", two.commit),
                format!("release-{}-x86_64-web", two.commit),
                format!("release-{}-x86_64-worker", two.commit),
            ],
        ),
    ] {
        let described = ecr
            .describe_images()
            .repository_name(repository)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe images of {repository}: {e:?}"));
        let mut found: Vec<String> = described
            .image_details()
            .iter()
            .flat_map(|d| d.image_tags().iter().cloned())
            .collect();
        found.sort();
        assert_eq!(found, tags, "tags in {repository}");
    }
    let object = s3_client(&system.moto)
        .get_object()
        .bucket(BUCKET)
        .key(format!(
            "GitHub/PRX/Lambda-Zip/{}/LAMBDA_ZIP.zip",
            zip.commit
        ))
        .send()
        .await
        .expect("the ZIP is in the bucket");
    let body = object.body.collect().await.unwrap().into_bytes();
    assert!(
        body.starts_with(b"PK\x03\x04 fake archive /.prxci/build.zip"),
        "{body:?}"
    );

    system.stop().await;
}
