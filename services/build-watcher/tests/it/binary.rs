//! The `prx-ci-build-watcher` binary end to end: config file, provisioning, ops endpoints, the
//! SQS source and the consumers, graceful stop on SIGTERM.

use std::process::{Command, Stdio};

use prx_ci_shared::testing::{free_port, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::utils::{REPO, WAIT, World, completed, fixture, new_build_id};

async fn http_status(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

#[tokio::test]
async fn the_binary_turns_queued_events_into_build_events_and_stops_on_sigterm() {
    let world = World::with_aws().await;
    let sqs = world.sqs();
    let queue_url = crate::sqs::create_queue(&sqs, "codebuild-binary").await;
    let ops_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prx-ci.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{nats}\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{aws}\"\n\n\
             [build_watcher]\nqueue_url = \"{queue_url}\"\nsqs_wait_time = \"1s\"\n\
             unrequested_after = \"0s\"\nops_listen = \"127.0.0.1:{ops_port}\"\n",
            nats = world.nats.url(),
            aws = world.moto().endpoint(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prx-ci-build-watcher"))
        .arg("--config")
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("PRX_CI_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    wait_until(WAIT, "/readyz to answer 200", || async {
        http_status(ops_port, "/readyz")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
    })
    .await;
    // A build started by hand: only the queue knows about it.
    let build_id = new_build_id();
    crate::sqs::send(&sqs, &queue_url, &fixture("state-failed.json", &build_id)).await;
    let events = world.until_completed(&build_id).await;
    assert_eq!(completed(&events).build.unwrap().repository, REPO);
    let metrics = http_status(ops_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("prx_ci_build_watcher_transitions_total"),
        "{metrics}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_until(WAIT, "the binary to exit", || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(exit.success(), "{exit:?}");
}
