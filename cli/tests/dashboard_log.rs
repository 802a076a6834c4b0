//! The dashboard's live log of a local build (`GET /builds/<key>/log`), end to end on the
//! system of `prx-ci up` and a real nats-server: the log is read while the build runs (the
//! build waits on a gate file the test creates), follows it to the end, resumes at an offset,
//! and no file outside the runner's data dir is ever served; the build's page shows the Slack
//! message and commit status the notifier renders for it.

mod common;

use std::time::Duration;

use common::{Local, Repo};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::publish::EventPublisher;

const REPOSITORY: &str = "PRX/log-app";
const T0: i64 = 1_796_100_000;
const WAIT: Duration = Duration::from_secs(90);

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    event: String,
    id: String,
    data: String,
}

/// Reads a Server-Sent Events answer event by event.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: String::new(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = value.to_owned(),
                        "data" => data.push(value),
                        _ => {} // comments (keep-alives)
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The text of `log` events until `stop` holds for the text so far, or `end` arrives
    /// (then `ended` is true).
    async fn read_until(&mut self, stop: impl Fn(&str) -> bool) -> (String, bool) {
        let mut text = String::new();
        let read = async {
            while let Some(event) = self.next().await {
                match event.event.as_str() {
                    "log" => {
                        let chunk: String = serde_json::from_str(&event.data).unwrap();
                        assert!(!event.id.is_empty(), "every chunk says where it ends");
                        text.push_str(&chunk);
                        if stop(&text) {
                            return false;
                        }
                    }
                    "end" => return true,
                    other => panic!("unexpected event {other}"),
                }
            }
            panic!("the log stream closed without an end event");
        };
        let ended = tokio::time::timeout(WAIT, read)
            .await
            .expect("the log arrives in time");
        (text, ended)
    }
}

async fn get(local: &Local, path: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("{}{path}", local.dashboard_url))
        .bearer_auth(&local.ops_token);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

async fn open_log(local: &Local, src: &str, last_event_id: Option<u64>) -> SseReader {
    let response = get(local, src, last_event_id).await;
    assert_eq!(response.status(), 200, "the log stream opens");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    SseReader {
        response,
        buffer: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_builds_log_streams_while_it_runs_and_nothing_outside_the_runners_dir_is_served() {
    let local = Local::start().await;
    // The repository and the gate live outside the runner's data dir (the build sees them).
    let outside = tempfile::tempdir().unwrap();
    let gate = outside.path().canonicalize().unwrap().join("gate");
    let repo = Repo::init(outside.path());
    let buildspec = format!(
        "version: 0.2\nenv:\n  variables:\n    PRX_LOG_TEST: \"1\"\nphases:\n  build:\n    commands:\n      - echo 'before the gate, héllo'\n      \
         - while [ ! -e '{}' ]; do sleep 0.1; done\n      - echo 'after the gate'\n",
        gate.display()
    );
    let commit = repo.commit(&[("buildspec.yml", &buildspec)], "log test");
    let push = common::push_event(REPOSITORY, &repo, &"0".repeat(40), &commit, T0, false);
    assert_eq!(local.send("push", "delivery-log-1", &push).await, 202);

    let started = local
        .wait_for("the build to start", |events| {
            events.iter().find_map(|e| match &e.payload {
                Some(Payload::BuildStarted(s)) => s.build.clone(),
                _ => None,
            })
        })
        .await;
    let key = started.build_request_id.clone();
    let log_path = started.log_url.strip_prefix("file://").unwrap().to_owned();

    // The page holds the log element the script fills.
    let page = get(&local, &format!("/builds/{key}"), None).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"id="log""#), "{page}");
    let src = page
        .split_once(r#"data-log-src=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(src, _)| src.to_owned())
        .expect("the log element names its source");
    assert!(
        src.starts_with("/builds/") && src.ends_with("/log"),
        "{src}"
    );

    // While the build waits at the gate, the log has its first output and no end.
    let mut reader = open_log(&local, &src, None).await;
    let (before, ended) = reader
        .read_until(|text| text.contains("before the gate, héllo\n"))
        .await;
    assert!(!ended, "the build is still running: {before}");
    assert!(!before.contains("after the gate"));

    // Opened, the gate lets the build finish: the same stream follows the rest, then ends.
    std::fs::write(&gate, "").unwrap();
    let (rest, ended) = reader.read_until(|_| false).await;
    assert!(ended);
    let streamed = format!("{before}{rest}");
    assert!(streamed.contains("after the gate"), "{streamed}");
    let file = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        streamed, file,
        "the stream is the file, nothing lost or doubled"
    );
    local
        .wait_for("the build to complete", |events| {
            events
                .iter()
                .any(|e| matches!(&e.payload, Some(Payload::BuildCompleted(_))))
                .then_some(())
        })
        .await;

    // The page shows what the notifier posts for the finished build: its message and status.
    let page = prx_ci_shared::testing::wait_until(WAIT, "the page of the finished build", || {
        let local = &local;
        let key = &key;
        async move {
            let page = get(local, &format!("/builds/{key}"), None).await;
            let page = page.text().await.ok()?;
            page.contains(r#"data-state="success""#).then_some(page)
        }
    })
    .await;
    assert!(page.contains(r#"id="slack-message""#), "{page}");
    assert!(page.contains("Built"), "{page}");
    assert!(page.contains("prx-ci/x86_64"), "{page}");

    // A reader reconnecting with its last event id gets only what follows.
    let from = file.len() as u64 - 15;
    let (tail, ended) = open_log(&local, &src, Some(from))
        .await
        .read_until(|_| false)
        .await;
    assert!(ended);
    assert_eq!(tail, file[file.len() - 15..]);

    // Without the token: refused.
    let anonymous = reqwest::get(format!("{}{src}", local.dashboard_url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A build whose event names a file outside the runner's data dir: refused, never read.
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "not for the dashboard").unwrap();
    for (request_id, log_url) in [
        ("forged-outside", format!("file://{}", secret.display())),
        (
            "forged-dotdot",
            format!("file://{}/../../secret.txt", local.data.path().display()),
        ),
    ] {
        let forged = v1::Envelope {
            event_id: format!("{request_id}-started"),
            payload: Some(Payload::BuildStarted(v1::BuildStarted {
                build: Some(v1::BuildRef {
                    build_request_id: request_id.into(),
                    build_id: format!("local:{request_id}"),
                    repository: REPOSITORY.into(),
                    commit: commit.clone(),
                    backend: "local".into(),
                    log_url,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        EventPublisher::new(local.js())
            .publish(&forged)
            .await
            .unwrap();
        let refused = prx_ci_shared::testing::wait_until(WAIT, "the forged build's page", || {
            let local = &local;
            async move {
                let response = get(local, &format!("/builds/{request_id}/log"), None).await;
                (response.status() != 404).then_some(response)
            }
        })
        .await;
        assert_eq!(refused.status(), 403, "{request_id}");
        let text = refused.text().await.unwrap();
        assert!(text.contains("outside [ops] local_build_logs"), "{text}");
        assert!(!text.contains("not for the dashboard"));
    }
}
