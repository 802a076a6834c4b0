//! Liveness after a crash, through the real `prx-ci up` binary: builds running and queued in
//! the local runner when its process is killed with SIGKILL are not lost. After a restart the
//! queued ones run (never reported as faults), each build that was running is reported `FAULT`
//! and re-run once by the dispatcher as the same push, a build that fails by its own fault is
//! never re-run, and the deploy pointer ends on the newest push.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Repo, stored_events};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_publisher::KvParameterStore;
use prx_ci_publisher::parameter_store::ParameterStore as _;
use prx_ci_shared::testing::{NatsServer, free_port, wait_until};

const REPOSITORY: &str = "PRX/crash-app";
const PARAMETER: &str = "/prx/stag/Spire/CrashApp/pkg/docker-image-tag";
/// GitHub's time of the first push (seconds).
const T0: i64 = 1_796_000_000;
const PUSHES: usize = 12;
/// The push whose build fails by its own fault (its commit holds a file `fail`).
const FAILING_PUSH: usize = 5;
const WAIT: Duration = Duration::from_secs(240);

/// Two-second builds; a commit with a `fail` file fails its build (the user's fault).
const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: "CRASH_APP=/prx/stag/Spire/CrashApp/pkg/docker-image-tag"
  exported-variables:
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - CRASH_APP
phases:
  build:
    commands:
      - sleep 2
      - test ! -e fail
  post_build:
    commands:
      - export CRASH_APP="github/prx/crash-app:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

fn push(repo: &Repo, before: &str, after: &str, pushed_at: i64) -> String {
    common::push_event(REPOSITORY, repo, before, after, pushed_at, false).to_string()
}

/// `prx-ci up` as its own process, on an external nats-server (which outlives it).
struct Up {
    child: tokio::process::Child,
}

impl Up {
    async fn start(data_dir: &Path, nats_url: &str, listen: u16, ops: u16) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_prx-ci"))
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--nats-url", nats_url])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--ops-listen", &format!("127.0.0.1:{ops}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("prx-ci up starts");
        let ready = format!("http://127.0.0.1:{listen}/readyz");
        wait_until(Duration::from_secs(60), "prx-ci up to be ready", || {
            let ready = ready.clone();
            async move {
                let response = reqwest::get(&ready).await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        Self { child }
    }

    /// SIGKILL: no shutdown, no final reports, no acknowledgements.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// The local runner's build records (`<data dir>/runner/builds/*.json`), by build id.
fn records(data_dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let builds: PathBuf = data_dir.join("runner/builds");
    std::fs::read_dir(builds)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| {
                    let record: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                    Some((record["build_id"].as_str()?.to_owned(), record))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn unfinished(record: &serde_json::Value) -> bool {
    record["final_status"].is_null()
}

fn running(record: &serde_json::Value) -> bool {
    record["running"].as_bool() == Some(true)
}

/// The parameter's value, read by key (no consumer per read: this is polled every 10 ms); `None`
/// also while the store cannot be read (the system is restarting).
async fn pointer(js: &async_nats::jetstream::Context) -> Option<String> {
    let store = KvParameterStore::new(js).await.ok()?;
    store.get(PARAMETER).await.ok()?.map(|p| p.value)
}

fn value_of(commit: &str) -> String {
    format!("github/prx/crash-app:{commit}-x86_64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_lost_to_a_kill_are_rerun_once_queued_ones_run_and_the_pointer_ends_on_the_newest_push()
 {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("up");
    let (listen, ops) = (free_port(), free_port());
    let repo = Repo::init(dir.path());
    let zero = "0".repeat(40);
    let mut commits = Vec::new();
    for i in 1..=PUSHES {
        let mut files = vec![("v", i.to_string())];
        if i == 1 {
            files.push(("buildspec.yml", BUILDSPEC.to_owned()));
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        if i == FAILING_PUSH {
            std::fs::write(repo.path.join("fail"), "").unwrap();
        }
        if i == FAILING_PUSH + 1 {
            std::fs::remove_file(repo.path.join("fail")).unwrap();
        }
        commits.push(repo.commit(&files, &format!("push {i}")));
    }

    let up = Up::start(&data_dir, &nats.url(), listen, ops).await;
    let secret = std::fs::read_to_string(data_dir.join("webhook-secret")).unwrap();
    let client = reqwest::Client::new();
    for (i, commit) in commits.iter().enumerate() {
        let before = if i == 0 { &zero } else { &commits[i - 1] };
        let body = push(&repo, before, commit, T0 + 10 * i as i64);
        let status = client
            .post(format!("http://127.0.0.1:{listen}/webhooks/github"))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("crash-{i}"))
            .header(
                "X-Hub-Signature-256",
                prx_ci_ingress::signature_256(secret.trim(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202, "push {i}");
    }

    // Every push dispatched (no webhook in flight), some builds running, others queued: kill.
    let js = async_nats::jetstream::new(nats.connect().await);
    wait_until(WAIT, "builds running and queued", || {
        let data_dir = data_dir.clone();
        async move {
            let records = records(&data_dir);
            let busy = records.values().filter(|r| unfinished(r) && running(r));
            let waiting = records.values().filter(|r| unfinished(r) && !running(r));
            (records.len() == PUSHES && busy.count() >= 1 && waiting.count() >= 1).then_some(())
        }
    })
    .await;
    up.kill().await;
    let at_kill = records(&data_dir);
    let lost: BTreeSet<String> = at_kill
        .iter()
        .filter(|(_, r)| unfinished(r) && running(r))
        .map(|(id, _)| id.clone())
        .collect();
    let queued: BTreeSet<String> = at_kill
        .iter()
        .filter(|(_, r)| unfinished(r) && !running(r))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!lost.is_empty() && !queued.is_empty(), "{at_kill:#?}");
    eprintln!(
        "killed with {} build(s) running and {} queued",
        lost.len(),
        queued.len()
    );

    // Restart: the pointer ends on the newest push, and every build has finished.
    let up = Up::start(&data_dir, &nats.url(), listen, ops).await;
    let newest = commits.last().unwrap().clone();
    wait_until(WAIT, "the pointer on the newest push", || {
        let js = js.clone();
        let newest = newest.clone();
        async move { (pointer(&js).await? == value_of(&newest)).then_some(()) }
    })
    .await;
    let expected = PUSHES + lost.len();
    let events = wait_until(WAIT, "every requested build to finish", || {
        let js = js.clone();
        async move {
            let events = stored_events(&js).await;
            let requested = events
                .iter()
                .filter(|e| matches!(e.payload, Some(Payload::BuildRequested(_))))
                .count();
            let completed: BTreeSet<String> = events
                .iter()
                .filter_map(|e| match &e.payload {
                    Some(Payload::BuildCompleted(c)) => {
                        c.build.as_ref().map(|b| b.build_id.clone())
                    }
                    _ => None,
                })
                .collect();
            (requested == expected && completed.len() == requested).then_some(events)
        }
    })
    .await;
    up.kill().await;

    let requested: Vec<&v1::BuildRequested> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::BuildRequested(r)) => Some(r),
            _ => None,
        })
        .collect();
    let mut status: BTreeMap<String, v1::BuildStatus> = BTreeMap::new();
    for e in &events {
        if let Some(Payload::BuildCompleted(c)) = &e.payload {
            let id = c.build.as_ref().unwrap().build_id.clone();
            let previous = status.insert(id.clone(), c.status());
            assert!(
                previous.is_none_or(|p| p == c.status()),
                "{id} reached two terminal states"
            );
        }
    }
    // Each build lost to the kill ended FAULT and was re-run exactly once, as the same push.
    for id in &lost {
        assert_eq!(status[id], v1::BuildStatus::Fault, "{id}");
        let reruns: Vec<_> = requested
            .iter()
            .filter(|r| r.build.as_ref().unwrap().retry_of == *id)
            .collect();
        assert_eq!(reruns.len(), 1, "{id} re-run once");
        assert_eq!(reruns[0].rerun, 1);
        let lost_commit = &requested
            .iter()
            .find(|r| r.build.as_ref().unwrap().build_id == *id)
            .unwrap()
            .build
            .as_ref()
            .unwrap()
            .commit;
        assert_eq!(&reruns[0].build.as_ref().unwrap().commit, lost_commit);
    }
    // Queued builds ran after the restart, as themselves: never FAULT, never re-run.
    for id in &queued {
        assert_ne!(status[id], v1::BuildStatus::Fault, "{id} was queued");
        assert!(
            requested
                .iter()
                .all(|r| r.build.as_ref().unwrap().retry_of != *id)
        );
    }
    // Nothing else was re-run: the user's failing build failed once and stayed failed.
    let reruns = requested
        .iter()
        .filter(|r| !r.build.as_ref().unwrap().retry_of.is_empty())
        .count();
    assert_eq!(reruns, lost.len());
    let failing = &commits[FAILING_PUSH - 1];
    let failing_builds: Vec<_> = requested
        .iter()
        .filter(|r| r.build.as_ref().unwrap().commit == *failing)
        .map(|r| status[&r.build.as_ref().unwrap().build_id])
        .collect();
    assert_eq!(
        failing_builds.last(),
        Some(&v1::BuildStatus::Failed),
        "{failing_builds:?}"
    );
    // Every other push has a build that succeeded.
    for (i, commit) in commits.iter().enumerate() {
        if i + 1 == FAILING_PUSH {
            continue;
        }
        assert!(
            requested.iter().any(|r| {
                let build = r.build.as_ref().unwrap();
                build.commit == *commit && status[&build.build_id] == v1::BuildStatus::Succeeded
            }),
            "push {} never succeeded",
            i + 1
        );
    }
    assert_eq!(pointer(&js).await, Some(value_of(&newest)));
}
