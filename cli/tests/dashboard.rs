//! The web dashboard in a real browser: headless Chromium driven over WebDriver
//! (`common::browser`) against the local system of `prx-ci up` on a real nats-server. Every
//! page visited is saved as a screenshot in `target/screenshots/`.

mod common;

use std::time::Duration;

use common::browser::{Browser, WAIT};
use common::{Local, Repo, push_event};
use prx_ci::demo::{PARAMETER, REPOSITORY};
use prx_ci_shared::domain::short_sha;

/// How long a build of the local runner, and what follows it, may take to show.
const BUILD_WAIT: Duration = Duration::from_secs(60);

/// A buildspec that builds at once (a PRX buildspec names a `PRX_` variable).
const QUICK_BUILDSPEC: &str = r#"version: 0.2
phases:
  build:
    commands:
      - echo "building $PRX_COMMIT"
"#;

/// The harness itself, against a tiny page served here: it finds, waits for what a script adds
/// later, saves screenshots of the window's size, and reads the console's errors.
#[tokio::test]
async fn the_browser_harness_finds_waits_screenshots_and_reads_console_errors() {
    let site = static_site().await;

    let browser = Browser::start().await;
    browser.goto(&format!("{site}/")).await;
    assert_eq!(browser.text("h1#title").await, "Harness");
    browser.wait_for_text("#later p", "arrived", WAIT).await;
    assert_eq!(browser.attr("#later p", "class").await, "late");
    let shot = browser.screenshot("harness-desktop").await;
    assert_eq!(png_width(&shot), 1280);
    assert!(
        browser.console_errors().await.is_empty(),
        "{:?}",
        browser.console_log().await
    );

    browser.goto(&format!("{site}/broken")).await;
    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("broken on purpose")),
        "the page's console.error is reported: {errors:?}"
    );
    browser.close().await;

    let phone = Browser::start_phone().await;
    phone.goto(&format!("{site}/")).await;
    let shot = phone.screenshot("harness-phone").await;
    assert_eq!(png_width(&shot), 390);
    phone.close().await;
}

/// Serves `/` (a heading, and a paragraph a script adds after 200 ms) and `/broken` (a page
/// that logs a console error); returns its base URL.
async fn static_site() -> String {
    use axum::response::Html;
    const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>harness</title>
<link rel="icon" href="data:,"></head><body><h1 id="title">Harness</h1><div id="later"></div>
<script>setTimeout(() => { document.getElementById("later").innerHTML = '<p class="late">arrived</p>'; }, 200);</script>
</body></html>"#;
    const BROKEN: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>broken</title>
<link rel="icon" href="data:,"></head><body><script>console.error("broken on purpose");</script></body></html>"#;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { Html(PAGE) }))
        .route("/broken", axum::routing::get(|| async { Html(BROKEN) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The width of a PNG image, from its header.
fn png_width(path: &std::path::Path) -> u32 {
    let png = std::fs::read(path).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    u32::from_be_bytes(png[16..20].try_into().unwrap())
}

/// The demo's two pushes (the older one builds slower and finishes last) read clearly: the
/// branch timeline shows the newer push published and the older one superseded, the parameter
/// is on the newer commit; every page renders without console errors, and each is saved as a
/// screenshot (the timeline on a phone too).
#[tokio::test]
async fn the_demo_reads_as_a_superseded_push_and_a_parameter_on_the_newer_commit() {
    let local = Local::start().await;
    let outcome = local.run_demo().await;
    let (older, newer) = (outcome.first.as_str(), outcome.second.as_str());
    let browser = Browser::start().await;
    sign_in(&browser, &local).await;

    // Builds: both of the demo's builds, succeeded.
    for commit in [older, newer] {
        browser
            .wait_for_text(
                &format!(
                    r#"table#builds tr[data-repository="{REPOSITORY}"][data-status="SUCCEEDED"]"#
                ),
                short_sha(commit),
                WAIT,
            )
            .await;
    }
    browser.screenshot("builds").await;

    // The branch timeline: newest push first, published; the older one superseded.
    let timeline = format!("{}/branches/{REPOSITORY}/main", local.dashboard_url);
    browser.goto(&timeline).await;
    let newer_push = format!(r#"ol#timeline li[data-commit="{newer}"][data-outcome="published"]"#);
    let older_push = format!(r#"ol#timeline li[data-commit="{older}"][data-outcome="superseded"]"#);
    browser.wait_for(&newer_push, WAIT).await;
    browser.wait_for(&older_push, WAIT).await;
    let order = browser
        .attrs("ol#timeline li[data-commit]", "data-commit")
        .await;
    assert_eq!(
        order,
        [newer, older],
        "newest push first, in GitHub's order"
    );
    assert!(
        browser.text(&older_push).await.contains("superseded"),
        "said in words, not only in colour"
    );
    browser.screenshot("branch-timeline").await;

    // The build page of the older push: its phases, and its publish skipped as superseded.
    let older_build = browser
        .attr(&format!("{older_push} a[href^='/builds/']"), "href")
        .await;
    browser
        .goto(&format!("{}{older_build}", local.dashboard_url))
        .await;
    browser.wait_for("ol#phases li[data-phase]", WAIT).await;
    browser
        .wait_for_text(
            r#"table#publishes tr[data-outcome="skipped"]"#,
            "superseded",
            WAIT,
        )
        .await;
    browser.screenshot("build").await;

    // Parameters: the demo's parameter on the newer commit.
    browser
        .goto(&format!("{}/parameters", local.dashboard_url))
        .await;
    let row = format!(r#"table#parameters tr[data-parameter="{PARAMETER}"]"#);
    browser.wait_for(&row, WAIT).await;
    assert_eq!(
        browser.text(&format!("{row} td.commit")).await,
        short_sha(newer)
    );
    assert!(
        browser
            .text(&format!("{row} td.value"))
            .await
            .contains(newer)
    );
    browser.screenshot("parameters").await;

    // The other pages render too.
    let parameter = format!("/parameter?name={PARAMETER}");
    for (path, css, name) in [
        ("/branches", "ul#branches", "branches"),
        (parameter.as_str(), "table#history", "parameter"),
        ("/parked", "table#parked", "parked-none"),
        ("/actions", "form#rebuild-form", "actions"),
    ] {
        browser
            .goto(&format!("{}{path}", local.dashboard_url))
            .await;
        browser.wait_for(css, WAIT).await;
        browser.screenshot(name).await;
    }
    assert_no_console_errors(&browser).await;
    browser.close().await;

    // A phone: the timeline still reads.
    let phone = Browser::start_phone().await;
    sign_in(&phone, &local).await;
    phone.goto(&timeline).await;
    phone.wait_for(&older_push, WAIT).await;
    phone.screenshot("branch-timeline-phone").await;
    assert_no_console_errors(&phone).await;
    phone.close().await;

    local.system.stop().await.unwrap();
}

/// A push sent while the Builds page is open shows up on it, then its build's progress, all
/// without reloading the page.
#[tokio::test]
async fn a_webhook_sent_while_the_builds_page_is_open_appears_without_a_reload() {
    let local = Local::start().await;
    let browser = Browser::start().await;
    sign_in(&browser, &local).await;
    browser.wait_for("body[data-live-connected]", WAIT).await;
    assert_eq!(browser.count("table#builds tr[data-build]").await, 0);
    // Survives only as long as the page is not reloaded.
    browser
        .client()
        .execute("window.prxNotReloaded = true; return null;", vec![])
        .await
        .unwrap();

    let repo = Repo::init(local.data.path());
    let commit = repo.commit(&[("buildspec.yml", QUICK_BUILDSPEC)], "live");
    let push = push_event(
        "PRX/live-app",
        &repo,
        &"0".repeat(40),
        &commit,
        1_900_000_000,
        false,
    );
    assert_eq!(local.send("push", "d-live", &push).await, 202);

    let row = r#"table#builds tr[data-build][data-repository="PRX/live-app"]"#;
    browser
        .wait_for_text(row, short_sha(&commit), BUILD_WAIT)
        .await;
    browser
        .wait_for(&format!(r#"{row}[data-status="SUCCEEDED"]"#), BUILD_WAIT)
        .await;
    let kept = browser
        .client()
        .execute("return window.prxNotReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(kept, serde_json::json!(true), "the page was not reloaded");
    browser.screenshot("builds-live").await;
    assert_no_console_errors(&browser).await;
    browser.close().await;
    local.system.stop().await.unwrap();
}

/// The build page of a local build shows its log as it is written: the first line while the
/// build waits (for a file the test creates), the next one after, without a reload.
#[tokio::test]
async fn the_build_page_log_grows_while_a_local_build_runs() {
    let local = Local::start().await;
    let gate = tempfile::tempdir().unwrap();
    let gate_file = gate.path().join("open");
    let buildspec = format!(
        r#"version: 0.2
phases:
  build:
    commands:
      - echo "first log line of $PRX_COMMIT"
      - i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
      - echo "second log line of $PRX_COMMIT"
"#,
        gate_file.display()
    );
    let repo = Repo::init(local.data.path());
    let commit = repo.commit(&[("buildspec.yml", buildspec.as_str())], "log");
    let browser = Browser::start().await;
    sign_in(&browser, &local).await;
    let push = push_event(
        "PRX/log-app",
        &repo,
        &"0".repeat(40),
        &commit,
        1_900_000_000,
        false,
    );
    assert_eq!(local.send("push", "d-log", &push).await, 202);

    let row =
        r#"table#builds tr[data-build][data-repository="PRX/log-app"][data-status="RUNNING"]"#;
    browser.wait_for(row, BUILD_WAIT).await;
    let href = browser
        .attr(&format!("{row} a[href^='/builds/']"), "href")
        .await;
    browser
        .goto(&format!("{}{href}", local.dashboard_url))
        .await;
    // The commands are logged as they run, the output lines below with the commit expanded.
    let (first, second) = (
        format!("first log line of {commit}"),
        format!("second log line of {commit}"),
    );
    browser.wait_for_text("pre#log", &first, BUILD_WAIT).await;
    assert!(!browser.text("pre#log").await.contains(&second));
    browser
        .client()
        .execute("window.prxNotReloaded = true; return null;", vec![])
        .await
        .unwrap();
    browser.scroll_into_view("pre#log").await;
    browser.screenshot("build-log-running").await;

    std::fs::write(&gate_file, "").unwrap();
    browser.wait_for_text("pre#log", &second, BUILD_WAIT).await;
    let kept = browser
        .client()
        .execute("return window.prxNotReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        kept,
        serde_json::json!(true),
        "the log grew without a reload"
    );
    browser.scroll_into_view("pre#log").await;
    browser.screenshot("build-log").await;
    assert_no_console_errors(&browser).await;
    browser.close().await;
    local.system.stop().await.unwrap();
}

/// A message the dispatcher parked (an undecodable webhook) is listed with its error, and the
/// Retry button puts it back, recorded as the signed-in operator.
#[tokio::test]
async fn a_parked_message_can_be_retried_from_the_page() {
    let local = Local::start().await;
    let browser = Browser::start().await;
    sign_in(&browser, &local).await;
    browser
        .goto(&format!("{}/parked", local.dashboard_url))
        .await;
    browser.wait_for("table#parked", WAIT).await;

    // Not a protobuf envelope: the dispatcher's consumer parks it at once.
    local
        .js()
        .publish(
            prx_ci_shared::bus::subject::webhook_subject("push", "PRX/parked-app"),
            "not an envelope".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The open page lists it without a reload.
    let waiting = r#"table#parked tr[data-parked][data-retried="false"]"#;
    browser.wait_for(waiting, WAIT).await;
    let id = browser.attr(waiting, "data-parked").await;
    let row = format!(r#"table#parked tr[data-parked="{id}"]"#);
    assert!(
        browser.text(&row).await.contains("decode"),
        "the error is shown"
    );
    browser.screenshot("parked").await;

    browser
        .click(&format!(r#"{row} button[value="retry"]"#))
        .await;
    let retried = format!(r#"{row}[data-retried="true"]"#);
    browser.wait_for(&retried, WAIT).await;
    assert!(
        browser
            .text(&retried)
            .await
            .contains("retried by ops-token")
    );
    browser.screenshot("parked-retried").await;
    assert_no_console_errors(&browser).await;
    browser.close().await;
    local.system.stop().await.unwrap();
}

/// Without the ops token's session cookie (or the token as a bearer), every page and the live
/// events are refused; with the token they are served.
#[tokio::test]
async fn a_request_without_the_token_is_refused() {
    let local = Local::start().await;
    let client = reqwest::Client::new();
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    for path in [
        "/",
        "/builds/any",
        "/branches",
        "/branches/PRX/app/main",
        "/parameters",
        "/parked",
        "/actions",
        "/events",
    ] {
        let url = format!("{}{path}", local.dashboard_url);
        assert_eq!(
            status(client.get(&url)).await,
            401,
            "{path} without a token"
        );
        assert_eq!(
            status(client.get(&url).bearer_auth("not-the-token")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(client.get(&url).header("Cookie", "prx_ci_session=forged")).await,
            401,
            "{path} with a forged cookie"
        );
    }
    let post = client
        .post(format!("{}/parked/1/retry", local.dashboard_url))
        .form(&[("action", "retry")]);
    assert_eq!(status(post).await, 401, "a POST without a session");
    let signed_in = client
        .get(format!("{}/parameters", local.dashboard_url))
        .bearer_auth(&local.ops_token);
    assert_eq!(status(signed_in).await, 200, "with the token");
    local.system.stop().await.unwrap();
}

/// Signs in through the login form with the ops token; ends on the Builds page.
async fn sign_in(browser: &Browser, local: &Local) {
    browser
        .goto(&format!("{}/login", local.dashboard_url))
        .await;
    browser
        .type_into("form#login input[name=token]", &local.ops_token)
        .await;
    browser.click("form#login button[type=submit]").await;
    browser.wait_for("table#builds", WAIT).await;
    assert_eq!(browser.current_url().await.path(), "/");
}

async fn assert_no_console_errors(browser: &Browser) {
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
