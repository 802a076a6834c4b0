//! `prx-ci healthz`, the container image's HEALTHCHECK: exit status 0 on a 2xx answer and 1 on
//! anything else (Docker reserves 2), including a missing URL.

use std::process::Output;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Serves `/healthz` answering `status` on a free loopback port; returns its URL.
async fn serve(status: StatusCode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new().route("/healthz", get(move || async move { (status, "ok\n") }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/healthz")
}

/// Runs `prx-ci healthz` with `url` in PRX_CI_HEALTHZ_URL (or no such variable).
async fn probe(url: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_prx-ci"));
    command.arg("healthz").env_remove("PRX_CI_HEALTHZ_URL");
    if let Some(url) = url {
        command.env("PRX_CI_HEALTHZ_URL", url);
    }
    command.output().await.expect("cannot run prx-ci healthz")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_healthy_service_passes_the_probe() {
    let url = serve(StatusCode::OK).await;
    let output = probe(Some(&url)).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("200 OK"));
}

#[tokio::test]
async fn an_unhealthy_or_absent_service_fails_the_probe_with_status_1() {
    let url = serve(StatusCode::SERVICE_UNAVAILABLE).await;
    let output = probe(Some(&url)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("503"), "{}", stderr(&output));

    // Nothing listens there any more.
    let port = prx_ci_shared::testing::free_port();
    let output = probe(Some(&format!("http://127.0.0.1:{port}/healthz"))).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot GET"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_container_that_names_no_url_fails_the_probe_with_status_1() {
    let output = probe(None).await;
    assert_eq!(output.status.code(), Some(1), "not clap's 2");
    assert!(
        stderr(&output).contains("PRX_CI_HEALTHZ_URL"),
        "{}",
        stderr(&output)
    );
}
