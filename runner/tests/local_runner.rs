//! The local runner against a real nats-server, with real git repositories and real bash:
//! every assertion is on the `BuildReportReceived` envelopes read back from PRX_EVENTS (and the
//! CodeBuild events inside them), or on files the builds wrote.

use prx_ci_shared::testing::git::git;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_local_runner::{Isolation, LocalRunner, LocalRunnerConfig};
use prx_ci_proto::v1::{Envelope, envelope::Payload};
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::subject::EVENTS_STREAM;
use prx_ci_shared::codebuild::backend::{BuildBackend, StartBuild, StartedBuild, StopOutcome};
use prx_ci_shared::codebuild::event::{CodeBuildEvent, PHASE_CHANGE, STATE_CHANGE};
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use prx_ci_shared::testing::{NatsServer, wait_until, workspace_root};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(60);

/// A new runner on a stopped one's data dir (a restart). The stopped runner's instance lock is
/// released at its shutdown, but a process another test forks at that instant holds a copy of
/// the lock's descriptor until it execs (close-on-exec): the new runner waits that moment out.
async fn restart(rt: &Runtime, config: LocalRunnerConfig) -> Arc<LocalRunner> {
    prx_ci_shared::testing::wait_until(WAIT, "the stopped runner's instance lock", || {
        let (rt, config) = (rt.clone(), config.clone());
        async move { LocalRunner::new(rt, config).ok() }
    })
    .await
}

/// A committed repository in a temp dir.
struct Repo {
    dir: TempDir,
    sha: String,
}

impl Repo {
    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }
}

/// A repository whose single commit holds `buildspec.yml` and `files` (path, content, mode).
fn repo(buildspec: &str, files: &[(&str, &str, u32)]) -> Repo {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet"]);
    std::fs::write(dir.path().join("buildspec.yml"), buildspec).unwrap();
    for (path, content, mode) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "--quiet", "-m", "app"]);
    let sha = git(dir.path(), &["rev-parse", "HEAD"]);
    Repo { dir, sha }
}

struct Fixture {
    server: NatsServer,
    rt: Runtime,
    data: TempDir,
    /// Where builds write what the tests check (`$OUT` in the buildspecs).
    out: TempDir,
    runner: Arc<LocalRunner>,
}

impl Fixture {
    async fn new(configure: impl FnOnce(&mut LocalRunnerConfig)) -> Self {
        let server = NatsServer::start().await;
        let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
        rt.provision(1).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut config = LocalRunnerConfig {
            data_dir: data.path().join("runner"),
            work_dir: data.path().join("work"),
            ..LocalRunnerConfig::default()
        };
        configure(&mut config);
        let runner = LocalRunner::new(rt.clone(), config).unwrap();
        Self {
            server,
            rt,
            data,
            out: tempfile::tempdir().unwrap(),
            runner,
        }
    }

    /// The work root of this fixture's builds.
    fn work_dir(&self) -> String {
        self.runner.config().work_dir.display().to_string()
    }

    fn out(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }

    fn request(&self, request_id: &str, repo: &Repo, buildspec: &str) -> StartBuild {
        let mut environment = BTreeMap::new();
        for (k, v) in [
            ("PRX_REPO", "PRX/app"),
            ("PRX_COMMIT", repo.sha.as_str()),
            ("PRX_BRANCH", "main"),
            ("PRX_CI_PUBLISH", "true"),
            ("PRX_TARGET_ARCHITECTURE", "x86_64"),
        ] {
            environment.insert(k.to_owned(), v.to_owned());
        }
        environment.insert("OUT".to_owned(), self.out.path().display().to_string());
        StartBuild {
            request_id: request_id.to_owned(),
            repository: RepoName::parse("PRX/app").unwrap(),
            commit: CommitSha::parse(&repo.sha).unwrap(),
            architecture: Architecture::X86_64,
            clone_url: repo.url(),
            source_version: repo.sha.clone(),
            buildspec: buildspec.to_owned(),
            environment,
            untrusted: false,
        }
    }

    /// Every runner report in the stream, in stream order.
    async fn reports(&self) -> Vec<(String, Envelope, CodeBuildEvent)> {
        let stream = self.rt.js.get_stream(EVENTS_STREAM).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            // A message that is gone is skipped; any other failed read (a timeout on a busy
            // machine) is read again, never taken for a missing report.
            let read = wait_until(WAIT, "a stored report to be readable", || async {
                match stream.get_raw_message(seq).await {
                    Ok(message) => Some(Some(message)),
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Some(None),
                    Err(_) => None,
                }
            })
            .await;
            let Some(message) = read else {
                continue;
            };
            if !message.subject.starts_with("prx.runner.report.") {
                continue;
            }
            let envelope = Envelope::decode(message.payload.as_ref()).unwrap();
            let Some(Payload::BuildReportReceived(report)) = &envelope.payload else {
                panic!("not a report: {envelope:?}");
            };
            let event: CodeBuildEvent = serde_json::from_slice(&report.event_json).unwrap();
            out.push((message.subject.to_string(), envelope, event));
        }
        out
    }

    /// The CodeBuild events of one build, in stream order.
    async fn events(&self, build_id: &str) -> Vec<CodeBuildEvent> {
        self.reports()
            .await
            .into_iter()
            .filter(|(_, _, e)| e.detail.build_id == build_id)
            .map(|(_, _, e)| e)
            .collect()
    }

    /// Waits for the final report of `build_id` and returns all its events.
    async fn finished(&self, build_id: &str) -> Vec<CodeBuildEvent> {
        wait_until(WAIT, "the build's final report", || async {
            let events = self.events(build_id).await;
            events
                .iter()
                .any(|e| e.detail.additional_information.build_complete == Some(true))
                .then_some(events)
        })
        .await
    }

    async fn run(
        &self,
        request_id: &str,
        repo: &Repo,
        buildspec: &str,
    ) -> (StartedBuild, Vec<CodeBuildEvent>) {
        let started = self
            .runner
            .start(self.request(request_id, repo, buildspec))
            .await
            .unwrap();
        let events = self.finished(&started.build_id).await;
        (started, events)
    }
}

fn final_event(events: &[CodeBuildEvent]) -> &CodeBuildEvent {
    let last = events.last().unwrap();
    assert_eq!(
        last.detail.additional_information.build_complete,
        Some(true)
    );
    assert_eq!(last.detail_type, STATE_CHANGE);
    last
}

/// (completed phase, status, context) of the phase-change events, in order.
fn phase_changes(events: &[CodeBuildEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e.detail_type == PHASE_CHANGE)
        .map(|e| {
            (
                e.detail.completed_phase.clone().unwrap(),
                e.detail.completed_phase_status.clone().unwrap(),
                e.detail.completed_phase_context.clone().unwrap(),
            )
        })
        .collect()
}

fn phase_names(events: &[CodeBuildEvent]) -> Vec<String> {
    phase_changes(events)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const HAPPY: &str = r#"version: 0.2
env:
  variables:
    GREETING: from-buildspec
    PRX_CI_PUBLISH: from-buildspec
  exported-variables:
    - RESULT
    - LATE
    - MULTI
    - NEVER_SET
    - PRX_REPO
phases:
  install:
    commands:
      - export FROM_INSTALL=installed
      - cd sub
  pre_build:
    commands:
      - declare -x DECLARED=declared
  build:
    commands:
      - echo "$GREETING $PRX_CI_PUBLISH $FROM_INSTALL $DECLARED $(cat file.txt) $PWD" > "$OUT/vars"
      - echo "$CODEBUILD_RESOLVED_SOURCE_VERSION $CODEBUILD_BUILD_ID $CODEBUILD_BUILD_SUCCEEDING $PRX_CI_LOCAL $PRX_AWS_ACCOUNT_ID $AWS_DEFAULT_REGION" > "$OUT/builtins"
      - RESULT="built by $PRX_REPO"
      - |
        MULTI="line one
        line two"
  post_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING" > "$OUT/succeeding"
      - LATE=post
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_every_phase_in_one_shell_and_reports_like_codebuild() {
    let fx = Fixture::new(|_| {}).await;
    let repo = repo(HAPPY, &[("sub/file.txt", "committed", 0o644)]);
    let (started, events) = fx.run("req-happy", &repo, HAPPY).await;

    assert!(started.build_id.starts_with("local:"));
    assert_eq!(started.build_id, LocalRunner::build_id_for("req-happy"));
    assert_eq!(
        (started.backend.as_str(), started.project.as_str()),
        ("local", "local")
    );
    let log_path = fx.runner.log_path(&started.build_id);
    assert_eq!(started.log_url, format!("file://{}", log_path.display()));

    // Handler variables win over env.variables; exports, `declare` and `cd` persist.
    let src = fx
        .runner
        .config()
        .work_dir
        .join(started.build_id.trim_start_matches("local:"))
        .join("src");
    assert_eq!(
        read(&fx.out("vars")).trim(),
        format!(
            "from-buildspec true installed declared committed {}/sub",
            src.display()
        )
    );
    assert_eq!(
        read(&fx.out("builtins")).trim(),
        format!(
            "{} {} 1 true 000000000000 us-east-1",
            repo.sha, started.build_id
        )
    );
    assert_eq!(read(&fx.out("succeeding")).trim(), "1");
    assert!(!src.exists(), "the work dir is removed after the build");

    // Reports: IN_PROGRESS first, a phase change per phase in order, the final state last.
    let first = &events[0];
    assert_eq!(first.detail_type, STATE_CHANGE);
    assert_eq!(first.detail.build_status.as_deref(), Some("IN_PROGRESS"));
    assert_eq!(first.detail.current_phase.as_deref(), Some("SUBMITTED"));
    assert_eq!(first.source, "aws.codebuild");
    let env = first.merged_variables();
    assert_eq!(env["PRX_REPO"], "PRX/app");
    assert_eq!(env["PRX_CI_PUBLISH"], "true");
    assert_eq!(env["PRX_CI_LOCAL"], "true");
    assert!(
        !env.contains_key("GREETING"),
        "buildspec variables are reported only when exported"
    );
    assert_eq!(
        phase_names(&events),
        [
            "SUBMITTED",
            "QUEUED",
            "PROVISIONING",
            "DOWNLOAD_SOURCE",
            "INSTALL",
            "PRE_BUILD",
            "BUILD",
            "POST_BUILD",
            "UPLOAD_ARTIFACTS",
            "FINALIZING"
        ]
    );
    assert!(
        phase_changes(&events)
            .iter()
            .all(|(_, s, _)| s == "SUCCEEDED")
    );

    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("SUCCEEDED"));
    let info = &last.detail.additional_information;
    let exported: BTreeMap<_, _> = info
        .exported_environment_variables
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        exported,
        BTreeMap::from([
            ("LATE", "post"),
            ("MULTI", "line one\nline two"),
            ("PRX_REPO", "PRX/app"),
            ("RESULT", "built by PRX/app"),
        ])
    );
    assert_eq!(info.phases.len(), 11);
    assert_eq!(info.phases.last().unwrap().phase_type, "COMPLETED");
    assert_eq!(info.logs.as_ref().unwrap().deep_link, started.log_url);
    assert_eq!(last.merged_variables()["PRX_REPO"], "PRX/app");
    let log = read(&log_path);
    assert!(
        log.contains("Running command export FROM_INSTALL=installed"),
        "{log}"
    );
    assert!(
        log.contains("Phase complete: BUILD State: SUCCEEDED"),
        "{log}"
    );

    // The envelopes: subject per repository, source local, deterministic distinct ids.
    let reports = fx.reports().await;
    assert_eq!(reports.len(), events.len());
    let mut ids: Vec<_> = reports.iter().map(|(_, e, _)| e.event_id.clone()).collect();
    for (subject, envelope, _) in &reports {
        assert_eq!(subject, "prx.runner.report.PRX.app");
        let Some(Payload::BuildReportReceived(r)) = &envelope.payload else {
            unreachable!()
        };
        assert_eq!(
            (r.source.as_str(), r.repository.as_str()),
            ("local", "PRX/app")
        );
        assert_eq!(r.build_id, started.build_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), reports.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_phase_skips_the_rest_but_post_build_runs_with_succeeding_0() {
    let fx = Fixture::new(|_| {}).await;
    let spec = r#"version: 0.2
env:
  exported-variables: [FROM_POST, FROM_BUILD]
phases:
  build:
    commands:
      - FROM_BUILD=yes
      - "false"
      - touch "$OUT/never"
    finally:
      - touch "$OUT/finally"
  post_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING" > "$OUT/succeeding"
      - export FROM_POST=post
"#;
    let repo = repo(spec, &[]);
    let (_, events) = fx.run("req-fail", &repo, spec).await;

    assert_eq!(read(&fx.out("succeeding")).trim(), "0");
    assert!(
        !fx.out("never").exists(),
        "commands after the failing one are skipped"
    );
    assert!(fx.out("finally").exists(), "finally runs after a failure");
    let changes = phase_changes(&events);
    let build = changes.iter().find(|(p, _, _)| p == "BUILD").unwrap();
    assert_eq!(build.1, "FAILED");
    assert_eq!(
        build.2,
        "[COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1]"
    );
    let post = changes.iter().find(|(p, _, _)| p == "POST_BUILD").unwrap();
    assert_eq!(post.1, "SUCCEEDED");

    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("FAILED"));
    let phases = &last.detail.additional_information.phases;
    let build = phases.iter().find(|p| p.phase_type == "BUILD").unwrap();
    assert_eq!(build.phase_status.as_deref(), Some("FAILED"));
    assert_eq!(
        build.phase_context,
        ["COMMAND_EXECUTION_ERROR: Error while executing command: false. Reason: exit status 1"]
    );
    let exported = last.merged_variables();
    assert_eq!(exported["FROM_POST"], "post");
    assert_eq!(exported["FROM_BUILD"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_build_skips_build_and_post_build_like_codebuild() {
    let fx = Fixture::new(|_| {}).await;
    let spec = r#"version: 0.2
phases:
  pre_build:
    commands:
      - exit 3
  build:
    commands:
      - touch "$OUT/build"
  post_build:
    commands:
      - touch "$OUT/post_build"
"#;
    let repo = repo(spec, &[]);
    let (_, events) = fx.run("req-pre", &repo, spec).await;
    assert!(!fx.out("build").exists() && !fx.out("post_build").exists());
    let changes = phase_changes(&events);
    let names: Vec<_> = changes.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "SUBMITTED",
            "QUEUED",
            "PROVISIONING",
            "DOWNLOAD_SOURCE",
            "INSTALL",
            "PRE_BUILD",
            "FINALIZING"
        ]
    );
    assert_eq!(
        changes[5].2,
        "[COMMAND_EXECUTION_ERROR: Error while executing command: exit 3. Reason: exit status 3]"
    );
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("FAILED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_buildspec_fails_the_build_with_a_yaml_error() {
    let fx = Fixture::new(|_| {}).await;
    let spec = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo a: b\n";
    let repo = repo(spec, &[]);
    let (_, events) = fx.run("req-yaml", &repo, spec).await;
    let changes = phase_changes(&events);
    let (phase, status, context) = changes.last().unwrap();
    // DOWNLOAD_SOURCE failed, then FINALIZING.
    assert_eq!(changes[changes.len() - 2].0, "DOWNLOAD_SOURCE");
    assert_eq!(changes[changes.len() - 2].1, "FAILED");
    assert!(
        changes[changes.len() - 2]
            .2
            .contains("YAML_FILE_ERROR: phases.build.commands[0] is not a string"),
        "{changes:?}"
    );
    assert_eq!(
        (phase.as_str(), status.as_str(), context.as_str()),
        ("FINALIZING", "SUCCEEDED", "[]")
    );
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("FAILED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_commit_fails_download_source() {
    let fx = Fixture::new(|_| {}).await;
    let spec = "version: 0.2\nphases:\n  build:\n    commands: [\"touch $OUT/ran\"]\n";
    let repo = repo(spec, &[]);
    let mut request = fx.request("req-missing", &repo, spec);
    request.source_version = "0123456789abcdef0123456789abcdef01234567".into();
    let started = fx.runner.start(request).await.unwrap();
    let events = fx.finished(&started.build_id).await;
    let download = phase_changes(&events)
        .into_iter()
        .find(|(p, _, _)| p == "DOWNLOAD_SOURCE")
        .unwrap();
    assert_eq!(download.1, "FAILED");
    assert!(
        download.2.contains("CLIENT_ERROR: cannot check out"),
        "{download:?}"
    );
    assert!(!fx.out("ran").exists());
}

/// Writes what the build sees of its source to `$OUT/$CASE`.
const SOURCE: &str = r#"version: 0.2
phases:
  build:
    commands:
      - echo "$CODEBUILD_SOURCE_VERSION $CODEBUILD_RESOLVED_SOURCE_VERSION $(cat which.txt)" > "$OUT/$CASE"
"#;

/// `repo(SOURCE)` plus a commit only reachable through `refs/pull/5/head` and a later commit
/// on `main`: returns (the first main commit, the pull request's commit, main's tip).
fn repo_with_a_pull_request(repo: &Repo) -> (String, String, String) {
    let dir = repo.dir.path();
    let first = repo.sha.clone();
    git(dir, &["checkout", "--quiet", "-b", "contribution"]);
    std::fs::write(dir.join("which.txt"), "pull request\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "contribution"]);
    let pull = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["update-ref", "refs/pull/5/head", &pull]);
    git(dir, &["checkout", "--quiet", "main"]);
    git(dir, &["branch", "--quiet", "-D", "contribution"]);
    std::fs::write(dir.join("which.txt"), "main, later\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "later"]);
    let tip = git(dir, &["rev-parse", "HEAD"]);
    (first, pull, tip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_check_out_the_exact_commit_of_their_ref_and_see_codebuilds_source_variables() {
    let fx = Fixture::new(|_| {}).await;
    let repo = repo(SOURCE, &[("which.txt", "main, first\n", 0o644)]);
    let (first, pull, tip) = repo_with_a_pull_request(&repo);
    let build = |case: &str, source_version: String| {
        let mut request = fx.request(&format!("req-source-{case}"), &repo, SOURCE);
        request.source_version = source_version;
        request.environment.insert("CASE".into(), case.into());
        request
    };

    // A pull request: the commit is only under refs/pull/5/head.
    let pr = format!("refs/pull/5/head^{{{pull}}}");
    let started = fx.runner.start(build("pr", pr.clone())).await.unwrap();
    let events = fx.finished(&started.build_id).await;
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("SUCCEEDED")
    );
    assert_eq!(
        read(&fx.out("pr")).trim(),
        format!("{pr} {pull} pull request")
    );
    let log = read(&fx.runner.log_path(&started.build_id));
    assert!(log.contains("refs/pull/5/head of"), "{log}");
    assert!(log.contains("(depth 1)"), "{log}");

    // A push whose branch moved on before the build started: the pushed commit, not the tip.
    let push = format!("refs/heads/main^{{{first}}}");
    let started = fx.runner.start(build("push", push.clone())).await.unwrap();
    fx.finished(&started.build_id).await;
    assert_eq!(
        read(&fx.out("push")).trim(),
        format!("{push} {first} main, first")
    );

    // A bare commit still works (a full clone).
    let started = fx.runner.start(build("bare", tip.clone())).await.unwrap();
    fx.finished(&started.build_id).await;
    assert_eq!(
        read(&fx.out("bare")).trim(),
        format!("{tip} {tip} main, later")
    );

    // A commit that is not on the ref fails DOWNLOAD_SOURCE naming both; nothing runs.
    let wrong = format!("refs/heads/main^{{{pull}}}");
    let started = fx.runner.start(build("wrong", wrong)).await.unwrap();
    let events = fx.finished(&started.build_id).await;
    let download = phase_changes(&events)
        .into_iter()
        .find(|(p, _, _)| p == "DOWNLOAD_SOURCE")
        .unwrap();
    assert_eq!(download.1, "FAILED");
    assert_eq!(
        download.2,
        format!(
            "[CLIENT_ERROR: cannot check out {pull}: it is not reachable from refs/heads/main of \
             {} (refs/heads/main is at {tip})]",
            repo.url()
        )
    );
    assert!(!fx.out("wrong").exists());
}

/// The live processes (not zombies) whose command line contains `marker`, seen from the host:
/// isolated builds run in their own PID namespace, so `$$` inside a build is not a host pid.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        });
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

const SLEEPER: &str = r#"version: 0.2
phases:
  build:
    commands:
      - (exec -a "sleeper:$OUT" sleep 30) &
      - setsid bash -c 'exec -a "escaper:$1" sleep 30' _ "$OUT" &
      - touch "$OUT/started"; wait
      - touch "$OUT/after"
  post_build:
    commands:
      - touch "$OUT/post_build"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_kills_the_whole_build_and_reports_timed_out() {
    let fx = Fixture::new(|c| c.timeout = Duration::from_secs(2)).await;
    let repo = repo(SLEEPER, &[]);
    let (_, events) = fx.run("req-timeout", &repo, SLEEPER).await;

    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("TIMED_OUT"));
    let build = last
        .detail
        .additional_information
        .phases
        .iter()
        .find(|p| p.phase_type == "BUILD")
        .unwrap();
    assert_eq!(build.phase_status.as_deref(), Some("TIMED_OUT"));
    assert!(
        build.phase_context[0].starts_with("BUILD_TIMED_OUT"),
        "{build:?}"
    );
    assert!(!fx.out("after").exists() && !fx.out("post_build").exists());
    // The shell (its command line names the work dir), the sleep, and the one that left the
    // process group with setsid: the whole PID namespace goes.
    for marker in [fx.work_dir(), fx.out.path().display().to_string()] {
        wait_until(WAIT, "the build's processes to be gone", || async {
            processes_with(&marker).is_empty().then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_running_build_and_reports_stopped() {
    let fx = Fixture::new(|_| {}).await;
    let repo = repo(SLEEPER, &[]);
    let started = fx
        .runner
        .start(fx.request("req-stop", &repo, SLEEPER))
        .await
        .unwrap();
    let started_file = fx.out("started");
    wait_until(WAIT, "the build to run", || async {
        started_file.exists().then_some(())
    })
    .await;
    let sleeper = format!("sleeper:{}", fx.out.path().display());
    assert!(!processes_with(&sleeper).is_empty(), "the sleep runs");

    assert_eq!(
        fx.runner.stop(&started.build_id).await.unwrap(),
        StopOutcome::Stopped
    );
    let events = fx.finished(&started.build_id).await;
    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("STOPPED"));
    let build = phase_changes(&events)
        .into_iter()
        .find(|(p, _, _)| p == "BUILD")
        .unwrap();
    assert_eq!(build.1, "STOPPED");
    assert!(!fx.out("post_build").exists());
    wait_until(WAIT, "the sleep to be killed", || async {
        processes_with(&sleeper).is_empty().then_some(())
    })
    .await;

    assert_eq!(
        fx.runner.stop(&started.build_id).await.unwrap(),
        StopOutcome::AlreadyFinished
    );
    assert_eq!(
        fx.runner.stop("local:unknown").await.unwrap(),
        StopOutcome::AlreadyFinished
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_with_the_same_request_id_starts_one_build() {
    let fx = Fixture::new(|_| {}).await;
    let spec =
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo run >> \"$OUT/runs\"\n";
    let repo = repo(spec, &[]);
    let request = fx.request("req-once", &repo, spec);
    let (a, b) = tokio::join!(
        fx.runner.start(request.clone()),
        fx.runner.start(request.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    fx.finished(&a.build_id).await;
    let again = fx.runner.start(request.clone()).await.unwrap();
    assert_eq!(again, a);

    // A new runner on the same data dir (a restart) does not run it again either.
    let config = fx.runner.config().clone();
    fx.runner.shutdown().await;
    let restarted = restart(&fx.rt, config).await;
    assert_eq!(restarted.start(request).await.unwrap(), a);
    restarted.shutdown().await;

    assert_eq!(read(&fx.out("runs")), "run\n");
    let events = fx.events(&a.build_id).await;
    let in_progress = events
        .iter()
        .filter(|e| e.detail.build_status.as_deref() == Some("IN_PROGRESS"))
        .count();
    assert_eq!(in_progress, 1);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.detail.additional_information.build_complete == Some(true))
            .count(),
        1
    );
}

#[tokio::test]
async fn find_answers_the_build_a_request_started_from_the_runners_records() {
    let fx = Fixture::new(|_| {}).await;
    let spec = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo run\n";
    let repo = repo(spec, &[]);
    let request = fx.request("req-found", &repo, spec);
    let other = fx.request("req-never-started", &repo, spec);
    let since = time::OffsetDateTime::now_utc();
    assert_eq!(fx.runner.find(&request, since).await.unwrap(), None);
    let started = fx.runner.start(request.clone()).await.unwrap();
    assert_eq!(
        fx.runner.find(&request, since).await.unwrap(),
        Some(started.clone())
    );
    assert_eq!(fx.runner.find(&other, since).await.unwrap(), None);
    fx.finished(&started.build_id).await;

    // A restarted runner on the same data dir (the dispatcher crashed too, or the whole
    // process) still answers it, finished.
    let config = fx.runner.config().clone();
    fx.runner.shutdown().await;
    let restarted = restart(&fx.rt, config).await;
    assert_eq!(
        restarted.find(&request, since).await.unwrap(),
        Some(started)
    );
    assert_eq!(restarted.find(&other, since).await.unwrap(), None);
    restarted.shutdown().await;
}

/// A variable of this process outside the default `inherit_env` list (the test inherits it
/// explicitly to see whether an untrusted build gets it).
fn extra_inherited_variable() -> (String, String) {
    std::env::vars()
        .find(|(name, value)| {
            !prx_ci_local_runner::DEFAULT_INHERIT_ENV.contains(&name.as_str())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                // Names the build shell or the runner set themselves.
                && !["PWD", "OLDPWD", "SHLVL", "OUT"].contains(&name.as_str())
                && !["PRX_", "CODEBUILD_", "AWS_", "BASH"]
                    .iter()
                    .any(|p| name.starts_with(p))
                && !value.is_empty()
                && value.trim() == value
                && !value.contains(['\n', '\'', '\\'])
        })
        .expect("the test process has some environment variable outside the defaults")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_build_sees_none_of_the_configured_environment() {
    let (inherited_name, inherited_value) = extra_inherited_variable();
    let fx = Fixture::new(|config| {
        config.environment.insert(
            "PRX_TEST_CONFIGURED".to_owned(),
            "configured-secret".to_owned(),
        );
        config.inherit_env.push(inherited_name.clone());
    })
    .await;
    let spec = format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo \"${{PRX_TEST_CONFIGURED-unset}} ${{{inherited_name}-unset}} $PRX_CI_PUBLISH\" > \"$OUT/$PRX_TEST_NAME\"\n"
    );
    let repo = repo(&spec, &[]);
    let mut builds = Vec::new();
    for (name, untrusted) in [("trusted", false), ("untrusted", true)] {
        let mut request = fx.request(&format!("req-{name}"), &repo, &spec);
        request.untrusted = untrusted;
        request
            .environment
            .insert("PRX_TEST_NAME".to_owned(), name.to_owned());
        let started = fx.runner.start(request).await.unwrap();
        builds.push(started);
    }
    let trusted = fx.finished(&builds[0].build_id).await;
    let untrusted = fx.finished(&builds[1].build_id).await;
    assert_eq!(
        final_event(&untrusted).detail.build_status.as_deref(),
        Some("SUCCEEDED")
    );

    assert_eq!(
        read(&fx.out("trusted")).trim(),
        format!("configured-secret {inherited_value} true")
    );
    // The dispatcher's variables still reach the untrusted build; the runner's do not.
    assert_eq!(read(&fx.out("untrusted")).trim(), "unset unset true");
    // Nor are they reported as the build's project variables.
    assert_eq!(
        trusted[0].merged_variables()["PRX_TEST_CONFIGURED"],
        "configured-secret"
    );
    let reported = untrusted[0].merged_variables();
    assert!(
        !reported.contains_key("PRX_TEST_CONFIGURED"),
        "{reported:?}"
    );
    assert_eq!(reported["PRX_TEST_NAME"], "untrusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_beyond_max_concurrent_builds_wait_in_queued() {
    let fx = Fixture::new(|c| c.max_concurrent_builds = 1).await;
    // `mkdir` is atomic: it fails if another build holds the lock, failing that build.
    let spec = r#"version: 0.2
phases:
  build:
    commands:
      - mkdir "$OUT/lock"
      - echo "start $(date +%s%N)" >> "$OUT/timeline"
      - sleep 0.3
      - echo "end $(date +%s%N)" >> "$OUT/timeline"
      - rmdir "$OUT/lock"
"#;
    let repo = repo(spec, &[]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let started = fx
            .runner
            .start(fx.request(&format!("req-conc-{n}"), &repo, spec))
            .await
            .unwrap();
        ids.push(started.build_id);
    }
    for id in &ids {
        let events = fx.finished(id).await;
        assert_eq!(
            final_event(&events).detail.build_status.as_deref(),
            Some("SUCCEEDED")
        );
    }
    // Strictly alternating start/end: never two builds in their phases at once.
    let timeline = read(&fx.out("timeline"));
    let kinds: Vec<_> = timeline
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(kinds, ["start", "end", "start", "end", "start", "end"]);
    let stamps: Vec<u128> = timeline
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_faults_running_builds_and_a_restart_runs_the_queued_ones() {
    let fx = Fixture::new(|c| c.max_concurrent_builds = 1).await;
    let repo = repo(SLEEPER, &[]);
    let first = fx
        .runner
        .start(fx.request("req-sd-1", &repo, SLEEPER))
        .await
        .unwrap();
    let second = fx
        .runner
        .start(fx.request("req-sd-2", &repo, SLEEPER))
        .await
        .unwrap();
    let started_file = fx.out("started");
    wait_until(WAIT, "the first build to run", || async {
        started_file.exists().then_some(())
    })
    .await;

    let config = fx.runner.config().clone();
    fx.runner.shutdown().await;
    assert!(
        fx.runner
            .start(fx.request("req-sd-3", &repo, SLEEPER))
            .await
            .is_err(),
        "a runner shutting down refuses new builds"
    );
    // Either may have taken the one slot first: the running one is the one the shutdown
    // finished (the queued one never gets a final report).
    let (running, queued, events) =
        wait_until(WAIT, "the interrupted build's final report", || async {
            for (running, queued) in [(&first, &second), (&second, &first)] {
                let events = fx.events(&running.build_id).await;
                if events
                    .iter()
                    .any(|e| e.detail.additional_information.build_complete == Some(true))
                {
                    return Some((running.clone(), queued.clone(), events));
                }
            }
            None
        })
        .await;
    // The running one was interrupted by the system, not by anyone's stop: FAULT (the
    // dispatcher re-runs it), its BUILD phase cut short.
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("FAULT")
    );
    let changes = phase_changes(&events);
    let build = changes.iter().find(|(p, _, _)| p == "BUILD").unwrap();
    assert_eq!(build.1, "FAULT");
    assert!(build.2.contains("RUNNER_SHUTDOWN"), "{build:?}");
    // The queued one was neither run nor finished: no final report.
    let events = fx.events(&queued.build_id).await;
    assert!(
        events
            .iter()
            .all(|e| e.detail.additional_information.build_complete != Some(true)),
        "a queued build is not finished by a shutdown"
    );

    // The next start of the runner runs it (once), and leaves the FAULT one alone.
    std::fs::remove_file(&started_file).unwrap();
    let restarted = restart(&fx.rt, config).await;
    wait_until(
        WAIT,
        "the queued build to run after the restart",
        || async { started_file.exists().then_some(()) },
    )
    .await;
    let stopped = restarted.stop(&queued.build_id).await.unwrap();
    assert_eq!(
        stopped,
        StopOutcome::Stopped,
        "it is this runner's build now"
    );
    let events = fx.finished(&queued.build_id).await;
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("STOPPED")
    );
    assert_eq!(
        restarted.stop(&running.build_id).await.unwrap(),
        StopOutcome::AlreadyFinished,
        "the interrupted build is not run again by the runner (the dispatcher re-runs it)"
    );
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_survive_a_broker_outage() {
    let mut fx = Fixture::new(|_| {}).await;
    let spec = r#"version: 0.2
env:
  exported-variables: [DONE_AT]
phases:
  build:
    commands:
      - touch "$OUT/waiting"
      - while [ ! -e "$OUT/go" ]; do sleep 0.05; done
      - DONE_AT=end
"#;
    let repo = repo(spec, &[]);
    let started = fx
        .runner
        .start(fx.request("req-outage", &repo, spec))
        .await
        .unwrap();
    let waiting = fx.out("waiting");
    wait_until(WAIT, "the build to wait", || async {
        waiting.exists().then_some(())
    })
    .await;
    wait_until(WAIT, "the DOWNLOAD_SOURCE report", || async {
        phase_names(&fx.events(&started.build_id).await)
            .contains(&"DOWNLOAD_SOURCE".to_owned())
            .then_some(())
    })
    .await;

    fx.server.stop();
    std::fs::write(fx.out("go"), "").unwrap();
    let log_path = fx.runner.log_path(&started.build_id);
    wait_until(
        WAIT,
        "the build to finish while the broker is down",
        || async { read(&log_path).contains("Build SUCCEEDED").then_some(()) },
    )
    .await;
    fx.server.restart().await;

    let events = fx.finished(&started.build_id).await;
    assert_eq!(
        phase_names(&events),
        [
            "SUBMITTED",
            "QUEUED",
            "PROVISIONING",
            "DOWNLOAD_SOURCE",
            "INSTALL",
            "PRE_BUILD",
            "BUILD",
            "POST_BUILD",
            "UPLOAD_ARTIFACTS",
            "FINALIZING"
        ]
    );
    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("SUCCEEDED"));
    assert_eq!(last.merged_variables()["DONE_AT"], "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildspec_sourcing_the_post_build_helper_runs_in_local_mode() {
    let helper = std::fs::read_to_string(workspace_root().join("ci/utility/post_build.sh"))
        .expect("ci/utility/post_build.sh exists");
    // A stand-in `docker` that knows one image labelled for ECR (no daemon needed).
    let docker = r#"#!/usr/bin/env bash
echo "docker $*" >> "$OUT/docker-calls"
case "$1 $2 $3" in
  "images --filter label=org.prx.spire.publish.ecr") echo 0123456789ab ;;
  "images --filter"*) ;;
  inspect*) echo RAILS_APP ;;
  *) echo "unexpected docker call: $*" >&2; exit 1 ;;
esac
"#;
    let spec = r#"version: 0.2
env:
  exported-variables:
    - RAILS_APP
    - PRX_SPIRE_ECR_PKG_PARAMETERS
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: RAILS_APP=/prx/stag/app/image
phases:
  install:
    commands:
      - export PATH="$CODEBUILD_SRC_DIR/bin:$PATH"
  build:
    commands:
      - echo building
  post_build:
    commands:
      - set -o | grep -E '^(errexit|allexport) ' > "$OUT/options-before"
      - . ./post_build.sh
      - set -o | grep -E '^(errexit|allexport) ' > "$OUT/options-after"
"#;
    let fx = Fixture::new(|_| {}).await;
    let repo = repo(
        spec,
        &[
            ("post_build.sh", &helper, 0o755),
            ("bin/docker", docker, 0o755),
        ],
    );
    let (_, events) = fx.run("req-helper", &repo, spec).await;

    let last = final_event(&events);
    let log = read(&fx.runner.log_path(&last.detail.build_id));
    assert_eq!(
        last.detail.build_status.as_deref(),
        Some("SUCCEEDED"),
        "{log}"
    );
    assert!(log.contains("Local build (PRX_CI_LOCAL=true)"), "{log}");
    let merged = last.merged_variables();
    assert_eq!(
        merged["RAILS_APP"],
        format!("github/prx/app:{}-x86_64", repo.sha)
    );
    assert_eq!(
        merged["PRX_SPIRE_ECR_PKG_PARAMETERS"],
        "RAILS_APP=/prx/stag/app/image"
    );
    assert_eq!(
        read(&fx.out("options-before")),
        read(&fx.out("options-after"))
    );
    let calls = read(&fx.out("docker-calls"));
    assert!(
        !calls.contains("push") && !calls.contains("login"),
        "{calls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_build_of_a_dead_runner_is_reported_as_fault() {
    let fx = Fixture::new(|_| {}).await;
    let builds = fx.runner.config().data_dir.join("builds");
    // What a runner that died mid-build leaves behind.
    std::fs::write(
        builds.join("00000000-0000-0000-0000-00000000dead.json"),
        serde_json::json!({
            "build_id": "local:00000000-0000-0000-0000-00000000dead",
            "request_id": "req-dead",
            "repository": "PRX/app",
            "clone_url": "file:///nowhere",
            "source_version": "abc",
            "start_time_unix": 1_700_000_000,
            "environment": [["PRX_REPO", "PRX/app"]],
            "final_status": null
        })
        .to_string(),
    )
    .unwrap();
    // The fixture's runner goes away (its instance lock with it); the next one finds the record.
    let config = fx.runner.config().clone();
    fx.runner.shutdown().await;
    let restarted = restart(&fx.rt, config).await;
    let events = fx
        .finished("local:00000000-0000-0000-0000-00000000dead")
        .await;
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("FAULT")
    );
    restarted.shutdown().await;
    let _ = &fx.data;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_exit_in_build_fails_it_and_post_build_runs_in_the_restored_shell() {
    let fx = Fixture::new(|_| {}).await;
    let spec = r#"version: 0.2
env:
  exported-variables: [BEFORE_EXIT, FROM_POST]
phases:
  install:
    on-failure: CONTINUE
    commands:
      - "false"
  pre_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING" > "$OUT/pre_build_succeeding"
  build:
    commands:
      - BEFORE_EXIT=kept
      - mkdir -p deeper && cd deeper
      - greet() { echo "hi from a function"; }
      - set -e; false
      - touch "$OUT/after"
  post_build:
    commands:
      - echo "$CODEBUILD_BUILD_SUCCEEDING $BEFORE_EXIT $(basename "$PWD") $(greet) $-" > "$OUT/post"
      - export FROM_POST=post
"#;
    let repo = repo(spec, &[]);
    let (_, events) = fx.run("req-exit", &repo, spec).await;
    // on-failure: CONTINUE ran pre_build after the failed install.
    assert_eq!(read(&fx.out("pre_build_succeeding")).trim(), "0");
    assert!(!fx.out("after").exists());
    let changes = phase_changes(&events);
    let status_of = |phase: &str| {
        changes
            .iter()
            .find(|(p, _, _)| p == phase)
            .map(|(_, s, c)| (s.clone(), c.clone()))
    };
    assert_eq!(status_of("INSTALL").unwrap().0, "FAILED");
    assert_eq!(status_of("PRE_BUILD").unwrap().0, "SUCCEEDED");
    assert_eq!(
        status_of("BUILD").unwrap(),
        (
            "FAILED".to_owned(),
            "[COMMAND_EXECUTION_ERROR: Error while executing command: set -e; false. Reason: exit status 1]"
                .to_owned()
        )
    );
    let last = final_event(&events);
    assert_eq!(last.detail.build_status.as_deref(), Some("FAILED"));
    assert_eq!(last.merged_variables()["BEFORE_EXIT"], "kept");
    assert_eq!(last.merged_variables()["FROM_POST"], "post");
    // Variables, functions, directory and options (errexit) carried over.
    let post = read(&fx.out("post"));
    assert!(
        post.starts_with("0 kept deeper hi from a function "),
        "{post}"
    );
    assert!(
        post.trim_end().rsplit(' ').next().unwrap().contains('e'),
        "{post}"
    );
    assert_eq!(status_of("POST_BUILD").unwrap().0, "SUCCEEDED");
    assert_eq!(
        phase_names(&events)[4..],
        [
            "INSTALL",
            "PRE_BUILD",
            "BUILD",
            "POST_BUILD",
            "UPLOAD_ARTIFACTS",
            "FINALIZING"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_version_that_looks_like_an_option_is_refused() {
    let fx = Fixture::new(|_| {}).await;
    let spec = "version: 0.2\nphases: {}\n";
    let repo = repo(spec, &[]);
    let mut request = fx.request("req-option", &repo, spec);
    request.source_version = "--upload-pack=touch".into();
    assert!(matches!(
        fx.runner.start(request).await,
        Err(prx_ci_shared::codebuild::backend::BackendError::Permanent(
            _
        ))
    ));
}

/// What an attacking build tries: read the secrets by path, list the data dir, the other
/// builds' dirs and the host's processes, dump its environment, and unmount what hides them.
/// Everything it finds goes to exported variables (reported in the final event) and the log.
const SNOOP: &str = r#"version: 0.2
env:
  exported-variables: [SECRETS, LISTING, ENVIRONMENT, PROCS, HOST_PROC, AFTER_UMOUNT, WHOAMI, TRICKY]
phases:
  build:
    commands:
      - SECRETS="$(cat "$SECRETS_DIR/ops-token" "$SECRETS_DIR/webhook-secret" "$SECRETS_DIR/nats-credentials" "$SECRET_FILE" 2>&1)" || true
      - LISTING="$(ls -A "$SECRETS_DIR" "$DATA_DIR" "$DATA_DIR/builds" "$WORK_DIR" 2>&1)" || true
      - ENVIRONMENT="$(env)" || true
      - PROCS="$(ls /proc | grep -c '^[0-9]')" || true
      - HOST_PROC="$(cat "/proc/$HOST_PID/environ" "/proc/$HOST_PID/cmdline" 2>&1; ls "/proc/$HOST_PID/root/" 2>&1)" || true
      - umount "$SECRETS_DIR" 2>/dev/null; unshare --user --map-root-user --mount umount "$SECRETS_DIR" 2>/dev/null; AFTER_UMOUNT="$(cat "$SECRETS_DIR/ops-token" 2>&1)" || true
      - WHOAMI="$(id -u) $(grep CapEff /proc/self/status)" || true
      - echo "log $SECRETS $LISTING $HOST_PROC $AFTER_UMOUNT"
"#;

/// A variable value the environment loader must pass through untouched.
const TRICKY: &str = "a=b $(touch /tmp/x) `id` 'q' \"dq\"\nsecond line\\";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_build_cannot_read_secrets_the_data_dir_other_builds_or_host_processes() {
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    let values = [
        ("ops-token", "ops-token-5a1e6f"),
        ("webhook-secret", "webhook-secret-77c2d1"),
        ("nats-credentials", "nats-password-0b9e44"),
    ];
    for (name, value) in values {
        std::fs::write(secrets.path().join(name), value).unwrap();
    }
    std::fs::write(secret_file.path(), "secret-file-3c8a90").unwrap();
    let hidden = vec![secrets.path().to_owned(), secret_file.path().to_owned()];
    let fx = Fixture::new(|c| {
        c.hidden_paths = hidden;
        // A hidden directory holding the work dir (like a hidden home): the build's own dir
        // stays visible, the rest does not.
        c.hidden_paths.push(c.work_dir.parent().unwrap().to_owned());
    })
    .await;
    // Another build's checkout, present while this one runs.
    let other = fx.runner.config().work_dir.join("other-build/src");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("main.rs"), "other-build-file-e41d").unwrap();

    let repo = repo(SNOOP, &[]);
    let mut request = fx.request("req-snoop", &repo, SNOOP);
    let config = fx.runner.config();
    for (name, value) in [
        ("SECRETS_DIR", secrets.path().display().to_string()),
        ("SECRET_FILE", secret_file.path().display().to_string()),
        ("DATA_DIR", config.data_dir.display().to_string()),
        ("WORK_DIR", config.work_dir.display().to_string()),
        ("HOST_PID", std::process::id().to_string()),
        ("TRICKY", TRICKY.to_owned()),
    ] {
        request.environment.insert(name.to_owned(), value);
    }
    let started = fx.runner.start(request).await.unwrap();
    let events = fx.finished(&started.build_id).await;
    let log = read(&fx.runner.log_path(&started.build_id));
    let last = final_event(&events);
    assert_eq!(
        last.detail.build_status.as_deref(),
        Some("SUCCEEDED"),
        "{log}"
    );
    let exported: BTreeMap<String, String> = last
        .detail
        .additional_information
        .exported_environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();

    // The attempts ran (and failed): the hidden paths look empty or missing.
    assert!(
        exported["SECRETS"].contains("No such file or directory"),
        "{exported:?}"
    );
    let uuid = started.build_id.trim_start_matches("local:");
    // `ls` of four directories: their names, and in them only the build's own dir.
    let entries: Vec<&str> = exported["LISTING"]
        .lines()
        .filter(|l| !l.is_empty() && !l.ends_with(':') && !l.starts_with("ls: cannot access"))
        .collect();
    assert_eq!(entries, [uuid], "{exported:?}");
    assert!(exported["ENVIRONMENT"].contains("CODEBUILD_BUILD_ID="));
    let processes: usize = exported["PROCS"].parse().unwrap();
    assert!(processes < 10, "only the build's processes: {processes}");
    assert!(exported["HOST_PROC"].contains("No such file or directory"));
    assert!(
        exported["WHOAMI"].ends_with("0000000000000000"),
        "{exported:?}"
    );
    for secret in values
        .iter()
        .map(|(_, v)| *v)
        .chain(["secret-file-3c8a90", "other-build-file-e41d"])
    {
        for (name, value) in &exported {
            assert!(!value.contains(secret), "{name} shows {secret}: {value}");
        }
        assert!(!log.contains(secret), "the log shows {secret}");
    }
    // Variables reach the build verbatim through the loader: no expansion, newlines kept.
    assert_eq!(exported["TRICKY"], TRICKY);
    // The runner's own environment (the test process's) is not the build's.
    assert!(!exported["ENVIRONMENT"].contains("CARGO_MANIFEST_DIR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_isolation_none_a_build_runs_on_the_host_and_sees_the_data_dir() {
    let fx = Fixture::new(|c| c.isolation = Isolation::None).await;
    let spec = r#"version: 0.2
phases:
  build:
    commands:
      - ls "$(dirname "$CODEBUILD_SRC_DIR")/.." > "$OUT/work-root"
      - echo $$ > "$OUT/pid"
"#;
    let repo = repo(spec, &[]);
    let (started, events) = fx.run("req-none", &repo, spec).await;
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("SUCCEEDED")
    );
    let uuid = started.build_id.trim_start_matches("local:");
    assert!(read(&fx.out("work-root")).contains(uuid));
    // Not in a PID namespace: `$$` is a host pid (the shell, gone now).
    let pid: u32 = read(&fx.out("pid")).trim().parse().unwrap();
    assert!(pid > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_refuses_to_start_when_builds_cannot_be_isolated() {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    let data = tempfile::tempdir().unwrap();
    let config = LocalRunnerConfig {
        data_dir: data.path().join("runner"),
        work_dir: data.path().join("work"),
        shell: "/nonexistent/bash".to_owned(),
        ..LocalRunnerConfig::default()
    };
    let err = LocalRunner::new(rt.clone(), config.clone()).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("cannot isolate local builds"), "{message}");
    assert!(message.contains("isolation = \"none\""), "{message}");

    // A work dir inside the data dir is refused too.
    let err = LocalRunner::new(
        rt,
        LocalRunnerConfig {
            work_dir: data.path().join("runner/work"),
            shell: "bash".to_owned(),
            ..config
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("must be outside"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_does_not_run_when_a_hidden_path_was_swapped_for_a_decoy() {
    let root = tempfile::tempdir().unwrap();
    let secrets = root.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("ops-token"), "ops-token-91d3aa").unwrap();
    let hidden = secrets.clone();
    let fx = Fixture::new(|c| c.hidden_paths = vec![hidden]).await;
    // What an earlier build could do on the host: move the secrets away (renaming an ancestor
    // works as well) and leave an empty decoy where the runner hides them.
    let moved = root.path().join("moved");
    std::fs::rename(&secrets, &moved).unwrap();
    std::fs::create_dir(&secrets).unwrap();

    let spec = format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - cat {}/ops-token\n",
        moved.display()
    );
    let repo = repo(&spec, &[]);
    let (started, events) = fx.run("req-decoy", &repo, &spec).await;
    assert_eq!(
        final_event(&events).detail.build_status.as_deref(),
        Some("FAILED")
    );
    let log = read(&fx.runner.log_path(&started.build_id));
    assert!(log.contains("was moved or replaced"), "{log}");
    assert!(!log.contains("ops-token-91d3aa"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_reports_the_redacted_end_of_its_log_and_a_passing_one_none() {
    let fx = Fixture::new(|config| {
        config.environment.insert(
            "PRX_TEST_API_KEY".to_owned(),
            "configured-api-key-value".to_owned(),
        );
    })
    .await;
    let spec = r#"version: 0.2
env:
  variables:
    DEPLOY_TOKEN: buildspec-token-value
phases:
  build:
    commands:
      - for i in $(seq 1 80); do echo "step $i"; done
      - echo "token $DEPLOY_TOKEN key $PRX_TEST_API_KEY"
      - echo "pushing with ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
      - echo '```'
      - printf '\033[31mred error\033[0m\n'
      - "false"
"#;
    let failing = repo(spec, &[]);
    let (started, _) = fx.run("req-tail", &failing, spec).await;
    let reports: Vec<_> = fx
        .reports()
        .await
        .into_iter()
        .filter(|(_, _, e)| e.detail.build_id == started.build_id)
        .map(|(_, envelope, event)| {
            let Some(Payload::BuildReportReceived(report)) = envelope.payload else {
                unreachable!()
            };
            (event, report.log_tail)
        })
        .collect();
    let (last, tail) = reports.last().unwrap();
    assert_eq!(last.detail.build_status.as_deref(), Some("FAILED"));
    assert!(
        reports[..reports.len() - 1]
            .iter()
            .all(|(_, t)| t.is_none()),
        "only the final report carries the tail"
    );
    let tail = tail
        .as_ref()
        .expect("a failed build's final report carries its tail");
    let text = tail.lines.join("\n");
    assert!(tail.truncated, "{text}");
    assert!(tail.lines.len() <= prx_ci_shared::log_tail::MAX_LINES);
    for secret in ["buildspec-token-value", "configured-api-key-value", "ghp_"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("token [REDACTED] key [REDACTED]"), "{text}");
    assert!(text.contains("pushing with [REDACTED]"), "{text}");
    assert!(tail.lines.iter().any(|l| l == "```"), "{text}");
    assert!(tail.lines.iter().any(|l| l == "red error"), "{text}");
    assert!(
        tail.lines.last().unwrap().ends_with("Build FAILED"),
        "{text}"
    );

    let passing = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo fine\n";
    let passing_repo = repo(passing, &[]);
    let (started, _) = fx.run("req-no-tail", &passing_repo, passing).await;
    let final_report = fx
        .reports()
        .await
        .into_iter()
        .rfind(|(_, _, e)| e.detail.build_id == started.build_id)
        .unwrap();
    let Some(Payload::BuildReportReceived(report)) = final_report.1.payload else {
        unreachable!()
    };
    assert_eq!(
        report.log_tail, None,
        "a build that succeeded reports no tail"
    );
}
