//! The seam from a build's log to its check run (issue 14, part 2), through the system
//! `prx-ci up` runs with a GitHub App: a push whose build fails in the local runner ends as a
//! `failure` check run on the (fake) GitHub whose output shows the last lines of the build's
//! log, with a token the build printed masked. Runner -> build-watcher -> notifier -> GitHub,
//! each the real service.

mod common;

use common::{Local, Repo};
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeCommit, FakeGitHub, TestAppKey};
use prx_ci_shared::testing::wait_until;
use secrecy::SecretString;
use std::time::Duration;

const APP_ID: u64 = 5151;
const INSTALLATION: u64 = 77;
const REPOSITORY: &str = "PRX/tail-app";
/// A token-shaped string the build prints (GitHub's installation token shape).
const PRINTED_TOKEN: &str = "ghs_0123456789abcdefghijABCDEFGHIJ012345";

fn buildspec() -> String {
    format!(
        r#"version: 0.2
phases:
  build:
    commands:
      - echo "compiling the tail app at ${{PRX_COMMIT}}"
      - echo "pushing with {PRINTED_TOKEN}"
      - 'echo "error: the tests failed (3 of 12)"'
      - exit 3
"#
    )
}

#[tokio::test]
async fn a_failed_local_build_shows_the_redacted_end_of_its_log_in_its_check_run() {
    let data = tempfile::tempdir().unwrap();
    let repo = Repo::init(data.path());
    let commit = repo.commit(&[("buildspec.yml", &buildspec())], "a failing change");
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;
    github.install(INSTALLATION, &[REPOSITORY]);
    github.add_commit(REPOSITORY, FakeCommit::new(commit.clone()));
    let github_config = GitHubConfig {
        api_url: github.url(),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    };
    let local = Local::start_in(data, |config| config.github = github_config.clone()).await;

    let push = common::push_event(
        REPOSITORY,
        &repo,
        &"0".repeat(40),
        &commit,
        1_795_000_000,
        false,
    );
    assert_eq!(local.send("push", "tail-1", &push).await, 202);

    let run = wait_until(
        Duration::from_secs(60),
        "a completed check run for the failed build",
        || {
            let run = github
                .check_runs()
                .into_iter()
                .find(|r| r.head_sha == commit && r.status == "completed");
            async move { run }
        },
    )
    .await;
    assert_eq!(run.repository.to_lowercase(), REPOSITORY.to_lowercase());
    assert_eq!(run.conclusion.as_deref(), Some("failure"));
    let output = run.output.expect("the run has an output");
    let shown = format!("{}\n{}", output["summary"], output["text"]);
    assert!(
        shown.contains("error: the tests failed (3 of 12)"),
        "the log's last lines are shown: {shown}"
    );
    assert!(shown.contains("compiling the tail app"), "{shown}");
    assert!(
        !shown.contains(PRINTED_TOKEN) && !shown.contains("0123456789abcdefghij"),
        "the printed token is masked: {shown}"
    );
    assert!(
        shown.contains("pushing with"),
        "the line itself stays: {shown}"
    );
    local.system.stop().await.unwrap();
}
