//! `prx-ci history` against an ops service over a real nats-server: the newest page by default
//! with a note of what it left out, `--limit N` and `--all` reading page after page, and
//! `--all` printing exactly what one call of the whole history prints.

use std::process::Output;

use prometheus_client::registry::Registry;
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;

const TOKEN: &str = "history-test-token-0123456789";
/// The paged service's page and cap: main's history below takes several of either.
const PAGE: usize = 3;
const MAX_LISTED: usize = 4;

/// Where a stored event is: (stream, sequence).
type Position = (String, u64);

struct Ops {
    _server: NatsServer,
    /// Pages of [`PAGE`] by default, at most [`MAX_LISTED`] a call.
    paged: String,
    /// The default configuration: main's whole history in one call.
    whole: String,
    /// Main's history as stored, in order.
    main: Vec<Position>,
    shutdown: CancellationToken,
}

impl Drop for Ops {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the ops API with `config` over `rt`; returns its URL.
async fn serve(rt: &Runtime, mut config: OpsConfig, shutdown: &CancellationToken) -> String {
    config.token = Some(SecretString::from(TOKEN));
    let service = OpsService::new(rt.clone(), config, &mut Registry::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(service.run(listener, shutdown.clone()));
    url
}

fn webhook(delivery: &str, branch: &str, after: &str) -> v1::Envelope {
    let payload = serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "after": after,
        "repository": {"full_name": "PRX/app", "default_branch": "main"},
    });
    Chain::starting(delivery).envelope(
        delivery.into(),
        Payload::WebhookReceived(v1::WebhookReceived {
            delivery_id: delivery.into(),
            event_name: "push".into(),
            payload: payload.to_string().into_bytes().into(),
            repository: "PRX/app".into(),
            origin: v1::Origin::Github as i32,
            ..Default::default()
        }),
    )
}

/// Five pushes to main (a webhook and the dispatcher's skip each: both streams), each followed
/// by a push to another branch, stored one at a time.
async fn start() -> Ops {
    let server = NatsServer::start().await;
    let rt = Runtime::from_client(server.connect().await, &mut Registry::default());
    rt.provision(1).await.unwrap();
    let mut main = Vec::new();
    for i in 0..5 {
        let push = webhook(&format!("main-{i}"), "main", &format!("{i:040x}"));
        let skip = Chain::caused_by(&push).envelope(
            new_event_id(),
            Payload::BuildSkipped(v1::BuildSkipped {
                repository: "PRX/app".into(),
                commit: format!("{i:040x}"),
                reason: v1::SkipReason::NonDefaultBranch as i32,
                ..Default::default()
            }),
        );
        let other = webhook(&format!("other-{i}"), "other", &format!("f{i:039x}"));
        for (envelope, stream, of_main) in [
            (&push, WEBHOOKS_STREAM, true),
            (&skip, EVENTS_STREAM, true),
            (&other, WEBHOOKS_STREAM, false),
        ] {
            let sequence = rt.publisher.publish(envelope).await.unwrap().sequence;
            if of_main {
                main.push((stream.to_owned(), sequence));
            }
        }
    }
    let shutdown = CancellationToken::new();
    let paged = OpsConfig {
        history_page: PAGE,
        max_listed_events: MAX_LISTED,
        ..OpsConfig::default()
    };
    let paged = serve(&rt, paged, &shutdown).await;
    let whole = serve(&rt, OpsConfig::default(), &shutdown).await;
    Ops {
        _server: server,
        paged,
        whole,
        main,
        shutdown,
    }
}

/// Runs `prx-ci history PRX/app --branch main ARGS` against the ops API at `url`.
async fn history(url: &str, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_prx-ci"))
        .args(["history", "PRX/app", "--branch", "main", "--ops-url", url])
        .args(args)
        .env("PRX_CI_OPS_TOKEN", TOKEN)
        .output()
        .await
        .expect("cannot run prx-ci history");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// The positions of `--json` output's events.
fn positions(output: &Output) -> Vec<Position> {
    stdout(output)
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                event["stream"].as_str().unwrap().to_owned(),
                event["sequence"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn all_prints_the_whole_history_oldest_first_as_one_call_would() {
    let ops = start().await;
    let paged = history(&ops.paged, &["--all", "--json"]).await;
    assert_eq!(positions(&paged), ops.main, "every page, oldest first");
    assert_eq!(stderr(&paged), "", "nothing left out");

    // What the whole history in one call prints (a server whose page holds it all), line for
    // line, readable and JSON.
    for format in [&[][..], &["--json"][..]] {
        let paged = history(&ops.paged, &[&["--all"][..], format].concat()).await;
        let one_call = history(&ops.whole, format).await;
        assert_eq!(stdout(&paged), stdout(&one_call), "{format:?}");
        assert_eq!(stdout(&paged).lines().count(), ops.main.len());
    }
}

#[tokio::test]
async fn by_default_the_newest_page_prints_with_a_note_of_the_older_events() {
    let ops = start().await;
    let output = history(&ops.paged, &["--json"]).await;
    assert_eq!(positions(&output), ops.main[ops.main.len() - PAGE..]);
    assert_eq!(
        stderr(&output),
        format!(
            "{} older events not shown; --all or --limit N shows more\n",
            ops.main.len() - PAGE
        )
    );
}

#[tokio::test]
async fn limit_prints_the_newest_n_however_many_pages_that_takes() {
    let ops = start().await;
    // More than one call may return (MAX_LISTED).
    let output = history(&ops.paged, &["--json", "--limit", "7"]).await;
    assert_eq!(positions(&output), ops.main[ops.main.len() - 7..]);
    assert_eq!(
        stderr(&output),
        "3 older events not shown; --all or --limit N shows more\n"
    );
    let output = history(&ops.paged, &["--json", "--limit", "100"]).await;
    assert_eq!(positions(&output), ops.main);
    assert_eq!(stderr(&output), "");
}
