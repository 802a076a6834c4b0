//! The log tail of a failed build: read from CloudWatch Logs (the emulator's) when the build
//! completes, redacted, put on its `BuildCompleted`; a log that cannot be read gives a tail
//! marked unavailable and never holds the completion back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use prx_ci_build_watcher::REPORTS_CONSUMER;
use prx_ci_build_watcher::cloudwatch_logs::{CloudWatchLogs, LogLocation, LogReadError, LogSource};
use prx_ci_proto::v1::envelope::Payload;
use prx_ci_shared::bus::envelope::new_event_id;
use prx_ci_shared::kv::Modify;
use prx_ci_shared::log_tail::MAX_LINES;

use crate::utils::{PROJECT, World, arn_of, completed, fixture, new_build_id, test_config};

const TOKEN: &str = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8";

fn logs_client(world: &World) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&world.moto().sdk_config())
}

/// Writes `lines` to a fresh log stream of the project's group; returns where.
async fn write_log(client: &aws_sdk_cloudwatchlogs::Client, lines: &[String]) -> LogLocation {
    let location = LogLocation {
        group: format!("/aws/codebuild/{PROJECT}"),
        stream: new_event_id(),
    };
    // The group may exist from another build of the test.
    let _ = client
        .create_log_group()
        .log_group_name(&location.group)
        .send()
        .await;
    client
        .create_log_stream()
        .log_group_name(&location.group)
        .log_stream_name(&location.stream)
        .send()
        .await
        .unwrap();
    let start = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 60_000;
    let events = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            InputLogEvent::builder()
                .timestamp(start + i64::try_from(i).unwrap())
                .message(format!("{line}\n"))
                .build()
                .unwrap()
        })
        .collect::<Vec<_>>();
    client
        .put_log_events()
        .log_group_name(&location.group)
        .log_stream_name(&location.stream)
        .set_log_events(Some(events))
        .send()
        .await
        .unwrap();
    location
}

/// The fixture's final report of `build_id`, its log at `location`.
fn final_report(name: &str, build_id: &str, location: &LogLocation) -> serde_json::Value {
    let mut event = fixture(name, build_id);
    event["detail"]["additional-information"]["logs"] = serde_json::json!({
        "group-name": location.group,
        "stream-name": location.stream,
        "deep-link": "https://console.aws.amazon.com/cloudwatch/home",
    });
    event
}

#[tokio::test]
async fn a_failed_builds_completion_carries_the_redacted_end_of_its_cloudwatch_log() {
    let mut world = World::with_aws().await;
    let client = logs_client(&world);
    let mut lines: Vec<String> = (1..=70).map(|i| format!("[Container] step {i}")).collect();
    lines.push(format!(
        "\x1b[31mgit push https://x-access-token:{TOKEN}@github.com/PRX/app\x1b[0m"
    ));
    lines.push("```".into());
    lines.push("npm ERR! code ELIFECYCLE".into());
    let failed_log = write_log(&client, &lines).await;
    let succeeded_log = write_log(&client, &["all good".to_owned()]).await;
    world.start_with_logs(
        test_config(),
        None,
        None,
        Some(Arc::new(CloudWatchLogs::new(client))),
    );

    let failed = new_build_id();
    world.request(&failed).await;
    world
        .report(
            &final_report("state-failed.json", &failed, &failed_log),
            "sqs",
        )
        .await;
    let tail = completed(&world.until_completed(&failed).await)
        .log_tail
        .expect("a failed build's completion carries its log tail");
    assert_eq!(tail.unavailable, "");
    assert!(tail.truncated, "73 lines, 50 kept");
    assert_eq!(tail.lines.len(), MAX_LINES);
    assert_eq!(tail.lines[0], "[Container] step 24");
    assert_eq!(
        tail.lines[MAX_LINES - 3],
        "git push https://x-access-token:[REDACTED]@github.com/PRX/app"
    );
    assert_eq!(tail.lines[MAX_LINES - 2], "```");
    assert_eq!(tail.lines[MAX_LINES - 1], "npm ERR! code ELIFECYCLE");
    assert!(tail.lines.iter().all(|l| !l.contains("ghp_")));

    let succeeded = new_build_id();
    world.request(&succeeded).await;
    world
        .report(
            &final_report("state-succeeded.json", &succeeded, &succeeded_log),
            "sqs",
        )
        .await;
    let done = completed(&world.until_completed(&succeeded).await);
    assert_eq!(done.log_tail, None, "a build that succeeded gets no tail");
    world.stop().await;
}

/// A log source that never answers.
#[derive(Debug)]
struct Hanging;

#[async_trait::async_trait]
impl LogSource for Hanging {
    async fn last_messages(&self, _: &LogLocation, _: usize) -> Result<Vec<String>, LogReadError> {
        std::future::pending().await
    }
}

async fn completions(world: &World, build_id: &str) -> usize {
    world
        .build_events(build_id)
        .await
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::BuildCompleted(_))))
        .count()
}

#[tokio::test]
async fn a_log_stream_that_does_not_exist_gives_an_unavailable_tail_and_the_completion() {
    let mut world = World::with_aws().await;
    let client = logs_client(&world);
    world.start_with_logs(
        test_config(),
        None,
        None,
        Some(Arc::new(CloudWatchLogs::new(client))),
    );
    let build_id = new_build_id();
    world.request(&build_id).await;
    let nowhere = LogLocation {
        group: "/aws/codebuild/never-created".into(),
        stream: new_event_id(),
    };
    world
        .report(
            &final_report("state-failed.json", &build_id, &nowhere),
            "sqs",
        )
        .await;
    let tail = completed(&world.until_completed(&build_id).await)
        .log_tail
        .unwrap();
    assert!(tail.lines.is_empty());
    assert!(
        tail.unavailable.contains("does not exist"),
        "{}",
        tail.unavailable
    );
    world.stop().await;
}

#[tokio::test]
async fn a_log_source_that_hangs_gives_an_unavailable_tail_after_the_timeout_and_one_completion() {
    let mut world = World::nats_only().await;
    let config = prx_ci_build_watcher::BuildWatcherConfig {
        log_tail_timeout: Duration::from_millis(300),
        ..test_config()
    };
    world.start_with_logs(config, None, None, Some(Arc::new(Hanging)));
    let build_id = new_build_id();
    world.request(&build_id).await;
    let event = fixture("state-failed.json", &build_id);
    world.report(&event, "sqs").await;
    let tail = completed(&world.until_completed(&build_id).await)
        .log_tail
        .unwrap();
    assert!(tail.lines.is_empty());
    assert!(
        tail.unavailable.contains("took longer than 300ms"),
        "{}",
        tail.unavailable
    );
    // The same final state reported again (the reconciler, an SQS redelivery): still one
    // completion.
    let mut again = event.clone();
    again["id"] = new_event_id().into();
    world.report(&again, "reconciler").await;
    world.until_consumer_idle(REPORTS_CONSUMER).await;
    assert_eq!(completions(&world, &build_id).await, 1);
    world.stop().await;
}

/// A log source that counts its reads and, at the first, rewrites the build's record (as a
/// concurrent report would): a read inside the record's compare-and-set would make that fail
/// and be retried, reading again.
#[derive(Debug)]
struct RewritesTheRecord {
    store: prx_ci_build_watcher::BuildStore,
    build_id: String,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl LogSource for RewritesTheRecord {
    async fn last_messages(&self, _: &LogLocation, _: usize) -> Result<Vec<String>, LogReadError> {
        if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
            // Under whichever id the record is kept (the ARN or `project:uuid`).
            let mut rewritten = false;
            for id in [arn_of(&self.build_id), self.build_id.clone()] {
                let (wrote, _) = self
                    .store
                    .modify(&id, |record| {
                        if record.is_new() {
                            Modify::Keep(false)
                        } else {
                            Modify::Write(true)
                        }
                    })
                    .await
                    .unwrap();
                rewritten |= wrote;
            }
            assert!(rewritten, "no record of {} to rewrite", self.build_id);
        }
        Ok(vec![format!("npm ERR! {TOKEN}\n")])
    }
}

#[tokio::test]
async fn the_log_is_read_once_per_report_outside_the_records_compare_and_set() {
    let mut world = World::nats_only().await;
    let build_id = new_build_id();
    let logs = Arc::new(RewritesTheRecord {
        store: world.store.clone(),
        build_id: build_id.clone(),
        reads: AtomicUsize::new(0),
    });
    world.start_with_logs(test_config(), None, None, Some(logs.clone()));
    world.request(&build_id).await;
    let event = fixture("state-failed.json", &build_id);
    world.report(&event, "sqs").await;
    let tail = completed(&world.until_completed(&build_id).await)
        .log_tail
        .unwrap();
    assert_eq!(tail.lines, ["npm ERR! [REDACTED]"]);
    // Reported again once the build is final: nothing more is read.
    let mut again = event.clone();
    again["id"] = new_event_id().into();
    world.report(&again, "reconciler").await;
    world.until_consumer_idle(REPORTS_CONSUMER).await;
    assert_eq!(completions(&world, &build_id).await, 1);
    assert_eq!(logs.reads.load(Ordering::SeqCst), 1);
    world.stop().await;
}

#[tokio::test]
async fn a_reported_tail_is_redacted_and_bounded_again_on_the_completion() {
    let mut world = World::nats_only().await;
    world.start(test_config(), None, None);
    let build_id = new_build_id();
    world.request(&build_id).await;
    let reported = prx_ci_proto::v1::LogTail {
        lines: (0..80)
            .map(|i| format!("line {i} AKIAIOSFODNN7EXAMPLE"))
            .collect(),
        truncated: false,
        unavailable: String::new(),
    };
    world
        .report_with_tail(
            &fixture("state-failed.json", &build_id),
            "local",
            Some(reported),
        )
        .await;
    let tail = completed(&world.until_completed(&build_id).await)
        .log_tail
        .unwrap();
    assert_eq!(tail.lines.len(), MAX_LINES);
    assert_eq!(tail.lines[MAX_LINES - 1], "line 79 [REDACTED]");
    assert!(tail.truncated);
    world.stop().await;
}

/// The CloudWatch Logs reader with the world's AWS settings, reaching `endpoint` instead.
fn logs_at(world: &World, endpoint: std::net::SocketAddr) -> CloudWatchLogs {
    let config = world
        .moto()
        .sdk_config()
        .into_builder()
        .endpoint_url(format!("http://{endpoint}"))
        .build();
    CloudWatchLogs::new(aws_sdk_cloudwatchlogs::Client::new(&config))
}

fn some_location() -> LogLocation {
    LogLocation {
        group: "/aws/codebuild/p".into(),
        stream: "s".into(),
    }
}

#[tokio::test]
async fn a_failed_read_says_only_that_it_failed_and_names_no_account() {
    // Nothing listens there: every attempt is refused.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let world = World::with_aws().await;
    let logs = logs_at(&world, unreachable);
    let location = some_location();
    let err = logs.last_messages(&location, 51).await.unwrap_err();
    assert_eq!(
        err,
        LogReadError::Failed {
            location,
            reason: "the request failed (see the build-watcher's log)".into()
        }
    );
}

/// Answers every request as CloudWatch Logs refuses one (moto grants everything unless its
/// whole server enforces IAM): `AccessDeniedException`, its message naming the role and account.
async fn refusing_endpoint() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request: its headers, then as many bytes as its Content-Length says.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/BuildWatcherTaskRole/task is not authorized to perform: logs:GetLogEvents"}"#;
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: r1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_refused_read_says_only_its_error_code() {
    let endpoint = refusing_endpoint().await;
    let world = World::with_aws().await;
    let logs = logs_at(&world, endpoint);
    let location = some_location();
    let err = logs.last_messages(&location, 60).await.unwrap_err();
    assert_eq!(
        err,
        LogReadError::Failed {
            location,
            reason: "AccessDeniedException (see the build-watcher's log)".into()
        }
    );
    assert!(!err.to_string().contains("123456789012"));
}
