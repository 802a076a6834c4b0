//! The web dashboard in a real browser: headless Chromium driven over WebDriver
//! (`common::browser`) against the local system of `prx-ci up` on a real nats-server. Every
//! page visited is saved as a screenshot in `target/screenshots/`.

mod common;

use common::browser::{Browser, WAIT};

/// The harness itself, against a tiny page served here: it finds, waits for what a script adds
/// later, saves screenshots of the window's size, and reads the console's errors.
#[tokio::test]
async fn the_browser_harness_finds_waits_screenshots_and_reads_console_errors() {
    let site = static_site().await;

    let browser = Browser::start().await;
    browser.goto(&format!("{site}/")).await;
    assert_eq!(browser.text("h1#title").await, "Harness");
    let late = browser.wait_for_text("#later p", "arrived", WAIT).await;
    assert_eq!(late.attr("class").await.unwrap().as_deref(), Some("late"));
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
