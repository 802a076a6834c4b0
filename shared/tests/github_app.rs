//! The real `GitHubClient` against the fake GitHub over HTTP: GitHub App authentication (JWT,
//! installation tokens, caching, refresh on expiry and on 401), token mode, and the fake's
//! own API (contents, compare, statuses, check runs, webhook deliveries).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use prx_ci_shared::github::{GitHubClient, GitHubConfig, GitHubError};
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fake_github::{
    FakeAuth, FakeCommit, FakeGitHub, TestAppKey, signature_256,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const REPO: &str = "octo/hello";
const SHA: &str = "1111111111111111111111111111111111111111";
const CONTENTS: &str =
    "/repos/octo/hello/contents/buildspec.yml?ref=1111111111111111111111111111111111111111";

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: 2,
    }
}

fn app_config(github: &FakeGitHub) -> GitHubConfig {
    GitHubConfig {
        api_url: github.url(),
        app_id: Some(APP_ID),
        private_key: Some(SecretString::from(TestAppKey::shared().private_pem.clone())),
        ..GitHubConfig::default()
    }
}

fn client(config: GitHubConfig) -> GitHubClient {
    GitHubClient::new(config).unwrap().with_backoff(backoff())
}

/// A fake in App mode with `octo/hello` installed and a buildspec at `SHA`.
async fn app_fake() -> FakeGitHub {
    let github = FakeGitHub::start(FakeAuth::App(TestAppKey::shared().app(APP_ID))).await;
    github.add_commit(
        REPO,
        FakeCommit::new(SHA).file("buildspec.yml", "version: 0.2\n"),
    );
    github.install(INSTALLATION, &[REPO]);
    github
}

fn buildspec_text(answer: &Value) -> String {
    let compact: String = answer["content"]
        .as_str()
        .unwrap()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .unwrap(),
    )
    .unwrap()
}

fn requests_to(github: &FakeGitHub, path: &str) -> usize {
    github.requests().iter().filter(|r| r.path == path).count()
}

#[tokio::test]
async fn the_fake_verifies_the_apps_jwt() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    let app: Value = client.get_json("/app").await.unwrap();
    assert_eq!(app["id"], APP_ID);

    // A repository call: installation looked up with the JWT, token minted with the JWT.
    let answer: Value = client.get_json(CONTENTS).await.unwrap();
    assert_eq!(buildspec_text(&answer), "version: 0.2\n");
    assert_eq!(answer["type"], "file");
    assert_eq!(answer["encoding"], "base64");
    assert_eq!(github.mints_for(INSTALLATION), 1);
}

#[tokio::test]
async fn a_jwt_of_another_key_is_refused_with_a_clear_error() {
    let other = TestAppKey::generate();
    let github = FakeGitHub::start(FakeAuth::App(other.app(APP_ID))).await;
    github.add_commit(REPO, FakeCommit::new(SHA));
    github.install(INSTALLATION, &[REPO]);
    let client = client(app_config(&github));

    let err = client.get_json::<Value>("/app").await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:#}");

    // Looked up per repository: the lookup is refused.
    let err = client.get_json::<Value>(CONTENTS).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::Installation { repository, source, .. }
            if repository == REPO && source.status() == Some(401)),
        "{err:?}"
    );
    assert!(!err.is_transient());

    // A configured installation: the mint is refused.
    let fixed = client_with_installation(&github);
    let err = fixed.get_json::<Value>(CONTENTS).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::InstallationToken { installation: INSTALLATION, source, .. }
            if source.status() == Some(401)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot get a token of GitHub App installation {INSTALLATION} (for {CONTENTS})")
    );
    assert_eq!(github.mints(), 0);
}

fn client_with_installation(github: &FakeGitHub) -> GitHubClient {
    client(GitHubConfig {
        installation_id: Some(INSTALLATION),
        ..app_config(github)
    })
}

#[tokio::test]
async fn fifty_concurrent_calls_mint_one_token() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_json::<Value>(CONTENTS).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(github.mints(), 1);
    assert_eq!(requests_to(&github, "/repos/octo/hello/installation"), 1);
    assert_eq!(
        requests_to(&github, "/repos/octo/hello/contents/buildspec.yml"),
        50
    );
}

#[tokio::test]
async fn a_token_inside_the_refresh_margin_is_replaced_before_the_next_call() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    // Four minutes: already inside the five-minute margin when minted.
    github.set_token_lifetime(Duration::from_secs(4 * 60));
    client.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(github.mints(), 1);
    client.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(github.mints(), 2, "the short-lived token is not reused");

    github.set_token_lifetime(Duration::from_secs(3600));
    client.get_json::<Value>(CONTENTS).await.unwrap();
    client.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(github.mints(), 3, "an hour-long token is reused");
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_and_the_call_succeeds() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    client.get_json::<Value>(CONTENTS).await.unwrap();
    github.revoke_tokens(INSTALLATION);

    let answer: Value = client.get_json(CONTENTS).await.unwrap();
    assert_eq!(buildspec_text(&answer), "version: 0.2\n");
    assert_eq!(github.mints(), 2);
    // The refused call and its one retry.
    assert_eq!(
        requests_to(&github, "/repos/octo/hello/contents/buildspec.yml"),
        3
    );
}

#[tokio::test]
async fn a_persistent_401_is_returned_after_one_new_token() {
    let github = app_fake().await;
    github.refuse_tokens(INSTALLATION);
    let client = client(app_config(&github));

    let err = client.get_json::<Value>(CONTENTS).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:#}");
    assert_eq!(github.mints(), 2, "the first token and one replacement");
    assert_eq!(
        requests_to(&github, "/repos/octo/hello/contents/buildspec.yml"),
        2
    );
}

#[tokio::test]
async fn a_reinstalled_app_is_looked_up_again() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    client.get_json::<Value>(CONTENTS).await.unwrap();
    github.uninstall(INSTALLATION);
    github.install(INSTALLATION + 1, &[REPO]);

    // The cached installation is gone: that call fails and says so ...
    let err = client.get_json::<Value>(CONTENTS).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::InstallationToken { installation: INSTALLATION, source, .. }
            if source.status() == Some(404)),
        "{err:?}"
    );
    // ... and the next one finds the new installation.
    client.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(github.mints_for(INSTALLATION + 1), 1);
    assert_eq!(requests_to(&github, "/repos/octo/hello/installation"), 2);
}

#[tokio::test]
async fn a_named_installation_needs_no_lookup() {
    let github = app_fake().await;
    let client = client(app_config(&github));

    let err = client
        .get_json::<Value>("/installation/repositories")
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::NoInstallation { .. }), "{err:?}");

    let installed = client.for_installation(INSTALLATION);
    installed.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(requests_to(&github, "/repos/octo/hello/installation"), 0);
    // The view shares the cache with the client it came from.
    client_with_installation(&github);
    installed.get_json::<Value>(CONTENTS).await.unwrap();
    assert_eq!(github.mints(), 1);
}

#[tokio::test]
async fn token_mode_still_works() {
    let github = FakeGitHub::start(FakeAuth::Token("ghp_right".into())).await;
    github.add_commit(
        REPO,
        FakeCommit::new(SHA).file("buildspec.yml", "version: 0.2\n"),
    );
    let with = |token: &str| {
        client(GitHubConfig {
            api_url: github.url(),
            token: Some(SecretString::from(token.to_owned())),
            ..GitHubConfig::default()
        })
    };
    let answer: Value = with("ghp_right").get_json(CONTENTS).await.unwrap();
    assert_eq!(buildspec_text(&answer), "version: 0.2\n");

    let err = with("ghp_wrong")
        .get_json::<Value>(CONTENTS)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(!format!("{err:?} {err:#}").contains("ghp_wrong"));

    let missing =
        "/repos/octo/hello/contents/nope.yml?ref=1111111111111111111111111111111111111111";
    let err = with("ghp_right")
        .get_json::<Value>(missing)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let github = app_fake().await;
    github.refuse_tokens(INSTALLATION);
    let config = app_config(&github);
    let client = client(config.clone());
    let err = client.get_json::<Value>(CONTENTS).await.unwrap_err();

    let key_body = TestAppKey::shared()
        .private_pem
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let texts = [
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{err:?}"),
        format!("{err:#}"),
        format!("{:?}", client.for_installation(INSTALLATION)),
    ];
    let tokens = github.issued_tokens(INSTALLATION);
    assert_eq!(tokens.len(), 2);
    for text in &texts {
        assert!(!text.contains(&key_body), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "{text}");
        }
    }
}

#[tokio::test]
async fn a_key_from_a_file_or_with_escaped_newlines_works() {
    let github = app_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.pem");
    std::fs::write(&file, &TestAppKey::shared().private_pem).unwrap();
    let from_file = client(GitHubConfig {
        private_key: None,
        private_key_file: Some(file),
        ..app_config(&github)
    });
    from_file.get_json::<Value>("/app").await.unwrap();

    let escaped = TestAppKey::shared().private_pem.replace('\n', "\\n");
    let from_env = client(GitHubConfig {
        private_key: Some(SecretString::from(escaped)),
        ..app_config(&github)
    });
    from_env.get_json::<Value>("/app").await.unwrap();
}

#[tokio::test]
async fn compare_and_commits_follow_the_commit_graph() {
    let github = FakeGitHub::start(FakeAuth::Anonymous).await;
    let (a, b, c, d) = (
        "a".repeat(40),
        "b".repeat(40),
        "c".repeat(40),
        "d".repeat(40),
    );
    github.add_commit(REPO, FakeCommit::new(&a).file("f", "1"));
    github.add_commit(REPO, FakeCommit::new(&b).parent(&a).message("second"));
    github.add_commit(
        REPO,
        FakeCommit::new(&c)
            .parent(&b)
            .message("third")
            .author("Nobody", None),
    );
    github.add_commit(REPO, FakeCommit::new(&d).parent(&a));
    let client = client(GitHubConfig {
        api_url: github.url(),
        ..GitHubConfig::default()
    });
    let compare = |base: &str, head: &str| format!("/repos/{REPO}/compare/{base}...{head}");

    let ahead: Value = client.get_json(&compare(&a, &c)).await.unwrap();
    assert_eq!(ahead["status"], "ahead");
    assert_eq!(ahead["ahead_by"], 2);
    assert_eq!(ahead["behind_by"], 0);
    assert_eq!(ahead["total_commits"], 2);
    let shas: Vec<&str> = ahead["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sha"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [b.as_str(), c.as_str()], "oldest first");
    assert_eq!(ahead["commits"][1]["author"], Value::Null);
    assert_eq!(ahead["commits"][1]["commit"]["author"]["name"], "Nobody");

    let behind: Value = client.get_json(&compare(&c, &a)).await.unwrap();
    assert_eq!(behind["status"], "behind");
    let diverged: Value = client.get_json(&compare(&c, &d)).await.unwrap();
    assert_eq!(diverged["status"], "diverged");
    assert_eq!(diverged["merge_base_commit"]["sha"], a.as_str());
    let identical: Value = client.get_json(&compare(&c, &c)).await.unwrap();
    assert_eq!(identical["status"], "identical");
    let limited: Value = client
        .get_json(&format!("{}?per_page=1", compare(&a, &c)))
        .await
        .unwrap();
    assert_eq!(limited["commits"].as_array().unwrap().len(), 1);
    assert_eq!(limited["total_commits"], 2);
    let orphan = "9".repeat(40);
    github.add_commit(REPO, FakeCommit::new(&orphan));
    let unrelated = client
        .get_json::<Value>(&compare(&orphan, &a))
        .await
        .unwrap_err();
    assert_eq!(unrelated.status(), Some(404), "no common ancestor");
    let unknown = client
        .get_json::<Value>(&compare(&a, &"e".repeat(40)))
        .await
        .unwrap_err();
    assert_eq!(unknown.status(), Some(404));

    let commit: Value = client
        .get_json(&format!("/repos/{REPO}/commits/{c}"))
        .await
        .unwrap();
    assert_eq!(commit["commit"]["message"], "third");
    assert_eq!(commit["parents"][0]["sha"], b.as_str());
    // Files are inherited from the first parent.
    let file: Value = client
        .get_json(&format!("/repos/{REPO}/contents/f?ref={c}"))
        .await
        .unwrap();
    assert_eq!(buildspec_text(&file), "1");
}

#[tokio::test]
async fn statuses_and_check_runs_are_recorded() {
    let github = app_fake().await;
    let client = client(app_config(&github));
    let status: Value = client
        .post_json(
            &format!("/repos/{REPO}/statuses/{SHA}"),
            &json!({"state": "pending", "context": "prx-ci", "description": "Building", "target_url": "https://ci/1"}),
        )
        .await
        .unwrap();
    assert_eq!(status["state"], "pending");
    let bad = client
        .post_json::<Value>(
            &format!("/repos/{REPO}/statuses/{SHA}"),
            &json!({"state": "bogus"}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(422));
    let recorded = github.statuses();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].context, "prx-ci");
    assert_eq!(recorded[0].target_url.as_deref(), Some("https://ci/1"));

    let created: Value = client
        .post_json(
            &format!("/repos/{REPO}/check-runs"),
            &json!({"name": "build", "head_sha": SHA, "status": "in_progress", "details_url": "https://ci/1"}),
        )
        .await
        .unwrap();
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["status"], "in_progress");
    let incomplete = client
        .patch_json::<Value>(
            &format!("/repos/{REPO}/check-runs/{id}"),
            &json!({"status": "completed"}),
        )
        .await
        .unwrap_err();
    assert_eq!(incomplete.status(), Some(422));
    let done: Value = client
        .patch_json(
            &format!("/repos/{REPO}/check-runs/{id}"),
            &json!({"conclusion": "success", "output": {"title": "Passed", "summary": "All good"}}),
        )
        .await
        .unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["details_url"], "https://ci/1");
    let listed: Value = client
        .get_json(&format!("/repos/{REPO}/commits/{SHA}/check-runs"))
        .await
        .unwrap();
    assert_eq!(listed["total_count"], 1);
    assert_eq!(listed["check_runs"][0]["conclusion"], "success");
    assert_eq!(listed["check_runs"][0]["output"]["title"], "Passed");
    let writes = github.check_run_writes();
    assert_eq!(writes.len(), 2);
    assert!(writes[0].created && !writes[1].created);
    assert_eq!(
        github.check_runs()[0].conclusion.as_deref(),
        Some("success")
    );
}

/// A webhook receiver answering `status`, recording (headers, body) of each request.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/webhooks/github",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push((headers, body.to_vec()));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

#[tokio::test]
async fn webhooks_are_signed_logged_paged_and_redelivered() {
    let github = app_fake().await;
    let (url, seen) = receiver(202).await;
    github.set_webhook(&url, "s3cret");
    let payload = json!({"action": "opened", "installation": {"id": INSTALLATION}, "repository": {"id": 9, "full_name": REPO}});
    let first = github.send_webhook("pull_request", payload.clone()).await;
    assert_eq!((first.status_code, first.status.as_str()), (202, "OK"));
    assert_eq!(first.action.as_deref(), Some("opened"));
    assert_eq!(
        (first.installation_id, first.repository_id),
        (Some(INSTALLATION), Some(9))
    );
    {
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(headers["x-github-event"], "pull_request");
        assert_eq!(headers["x-github-delivery"], first.guid.as_str());
        assert_eq!(
            headers["x-hub-signature-256"],
            signature_256("s3cret", body).as_str()
        );
    }

    // Ingress answering 503, then unreachable.
    let (failing, _) = receiver(503).await;
    github.set_webhook(&failing, "s3cret");
    let second = github
        .send_webhook("push", json!({"ref": "refs/heads/main"}))
        .await;
    assert_eq!(
        (second.status_code, second.status.as_str()),
        (503, "Invalid HTTP Response: 503")
    );
    let port = prx_ci_shared::testing::free_port();
    github.set_webhook(
        &format!("http://127.0.0.1:{port}/webhooks/github"),
        "s3cret",
    );
    let third = github
        .send_webhook("check_run", json!({"action": "rerequested"}))
        .await;
    assert_eq!(third.status_code, 0);

    // Newest first, two per page, the next page in the Link header.
    let http = reqwest::Client::new();
    let jwt_client = client(app_config(&github));
    let page1: Value = jwt_client
        .get_json("/app/hook/deliveries?per_page=2")
        .await
        .unwrap();
    let ids: Vec<u64> = page1
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [third.id, second.id]);
    assert_eq!(page1[0]["event"], "check_run");
    assert_eq!(page1[1]["status_code"], 503);
    // The Link header names the next page (read raw: the client decodes bodies only).
    let jwt = app_jwt();
    let raw = http
        .get(format!("{}/app/hook/deliveries?per_page=2", github.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let link = raw.headers()["link"].to_str().unwrap().to_owned();
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("{link}"));
    let page2: Value = http
        .get(next)
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page2.as_array().unwrap().len(), 1);
    assert_eq!(page2[0]["id"], first.id);
    let unauthenticated = http
        .get(format!("{}/app/hook/deliveries?per_page=2", github.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let detail: Value = jwt_client
        .get_json(&format!("/app/hook/deliveries/{}", first.id))
        .await
        .unwrap();
    assert_eq!(detail["request"]["payload"], payload);
    assert_eq!(
        detail["request"]["headers"]["X-GitHub-Event"],
        "pull_request"
    );

    // Redeliver the first to the working receiver.
    github.set_webhook(&url, "s3cret");
    let _: Value = jwt_client
        .post_json(
            &format!("/app/hook/deliveries/{}/attempts", first.id),
            &json!({}),
        )
        .await
        .unwrap();
    let deliveries = github.deliveries();
    let again = deliveries.last().unwrap();
    assert!(again.redelivery);
    assert_eq!(again.guid, first.guid);
    assert_ne!(again.id, first.id);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// The App's JWT, made as GitHub documents it (for raw requests).
fn app_jwt() -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TestAppKey::shared().private_pem.as_bytes())
        .unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID.to_string()}),
        &key,
    )
    .unwrap()
}

#[test]
fn the_app_fields_load_from_toml() {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.pem");
    std::fs::write(&file, &TestAppKey::shared().private_pem).unwrap();
    let toml = format!(
        "[github]\napp_id = 4242\nprivate_key_file = {:?}\ninstallation_id = 77\n",
        file.display().to_string()
    );
    let config: GitHubConfig =
        prx_ci_shared::config::load_from(&Figment::from(Toml::string(&toml)), "github").unwrap();
    assert_eq!(
        (config.app_id, config.installation_id),
        (Some(APP_ID), Some(INSTALLATION))
    );
    assert!(config.is_app() && config.has_credentials());

    let both = format!("{toml}token = \"ghp_x\"\n");
    let err = prx_ci_shared::config::load_from::<GitHubConfig>(
        &Figment::from(Toml::string(&both)),
        "github",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mutually exclusive"), "{err}");
}
