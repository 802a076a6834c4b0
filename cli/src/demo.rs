//! `prx-ci demo`: against a running `prx-ci up`, creates a local git repository with a small
//! PRX-style buildspec, sends signed webhooks for two quick pushes to `main` whose builds
//! finish in reverse order (the older push builds slower), and follows the events: both builds
//! run, the parameter lands on the newest commit, and the older build's publish is skipped as
//! superseded — the out-of-order deploy the original CI could not prevent.

use prx_ci_shared::domain::short_sha;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::{Envelope, envelope::Payload};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, EventKind, repository_filter};
use prx_ci_shared::domain::push_position::PushPosition;

/// The demo repository's name as GitHub would report it.
pub const REPOSITORY: &str = "PRX/demo-app";
/// The parameter the demo's buildspec maps its image to.
pub const PARAMETER: &str = "/prx/stag/Spire/DemoApp/pkg/docker-image-tag";
/// How long the demo waits for both builds and their publishes.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    PRX_SPIRE_ECR_PKG_PARAMETERS: "DEMO_APP=/prx/stag/Spire/DemoApp/pkg/docker-image-tag"
  exported-variables:
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - DEMO_APP
phases:
  build:
    commands:
      - echo "building $PRX_REPO $PRX_BRANCH at $PRX_COMMIT for $PRX_TARGET_ARCHITECTURE"
      - sleep "$(cat build-seconds)"
  post_build:
    commands:
      # What ci/utility/post_build.sh exports after pushing an image labelled DEMO_APP.
      - export DEMO_APP="github/prx/demo-app:${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
"#;

/// Arguments of `prx-ci demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The running system's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/github")]
    pub url: String,
    /// Webhook secret (default: the one `prx-ci up` generated, from <data-dir>/webhook-secret).
    #[arg(long, env = "PRX_CI_WEBHOOK_SECRET")]
    pub secret: Option<String>,
    /// The data directory of `prx-ci up` (webhook secret, NATS credentials).
    #[arg(long, default_value = "./.prx-ci")]
    pub data_dir: PathBuf,
    /// NATS server of the running system.
    #[arg(
        long,
        env = prx_ci_shared::config::NATS_URL_ENV,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The older push's commit (slow build).
    pub first: String,
    /// The newer push's commit (fast build).
    pub second: String,
    /// The repository's build and publish events, in stream order.
    pub events: Vec<Envelope>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    run_scenario(&args).await.map(|_| ())
}

/// Runs the scenario and prints what happens; returns what it saw.
pub async fn run_scenario(args: &DemoArgs) -> anyhow::Result<DemoOutcome> {
    let secret = match &args.secret {
        Some(s) => s.split(',').next().unwrap_or_default().trim().to_owned(),
        None => std::fs::read_to_string(args.data_dir.join("webhook-secret"))
            .context(
                "no webhook secret: pass --secret or PRX_CI_WEBHOOK_SECRET (prx-ci up prints it)",
            )?
            .trim()
            .to_owned(),
    };
    let nats = crate::local_nats::client_config(None, &args.nats_url, &args.data_dir)?;
    let client = prx_ci_shared::bus::nats::connect(&nats, "demo")
        .await
        .context("is `prx-ci up` running?")?;
    let js = jetstream::new(client);

    let repo = args
        .data_dir
        .join("demo")
        .join(format!("repo-{}", std::process::id()));
    std::fs::create_dir_all(&repo)?;
    let repo = repo.canonicalize()?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("buildspec.yml"), BUILDSPEC)?;
    std::fs::write(repo.join("build-seconds"), "4\n")?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "-q", "-m", "First change (slow build)"])?;
    let first = git(&repo, &["rev-parse", "HEAD"])?;
    std::fs::write(repo.join("build-seconds"), "0\n")?;
    git(
        &repo,
        &["commit", "-q", "-am", "Second change (fast build)"],
    )?;
    let second = git(&repo, &["rev-parse", "HEAD"])?;
    println!(
        "demo: repository {} with commits {} (slow) and {} (fast)",
        repo.display(),
        &first[..7],
        &second[..7]
    );

    // Follow the repository's events from now on.
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .context("no PRX_EVENTS stream: is `prx-ci up` running?")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            filter_subjects: [
                EventKind::BuildRequested,
                EventKind::BuildSkipped,
                EventKind::BuildStarted,
                EventKind::BuildCompleted,
                EventKind::PublishApplied,
                EventKind::PublishSkipped,
            ]
            .iter()
            .map(|k| repository_filter(*k, REPOSITORY))
            .collect(),
            ..Default::default()
        })
        .await?;
    let mut events = consumer.messages().await?;

    let http = reqwest::Client::new();
    let zero = "0".repeat(40);
    for (before, after, message) in [
        (&zero, &first, "First change (slow build)"),
        (&first, &second, "Second change (fast build)"),
    ] {
        let delivery = uuid::Uuid::new_v4().to_string();
        let body = push_payload(&repo, before, after, message);
        let signature = prx_ci_ingress::signature_256(&secret, body.as_bytes());
        let response = http
            .post(&args.url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", &delivery)
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {} (is `prx-ci up` running?)", args.url))?;
        if !response.status().is_success() {
            bail!(
                "webhook answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        println!(
            "demo: pushed {} -> webhook {delivery} answered {}",
            &after[..7],
            response.status()
        );
    }

    let mut seen = Vec::new();
    let mut completed = BTreeSet::new();
    let mut publishes = 0;
    // The value the newest push published, if it did (an owner, a skip... may stop it).
    let mut newest_published = false;
    let deadline = tokio::time::Instant::now() + DEMO_TIMEOUT;
    while completed.len() < 2 || publishes < 2 {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("the demo timed out waiting for both builds and their publishes; see the `prx-ci up` log")?;
        let Some(message) = next else {
            bail!("the event stream ended")
        };
        let message = message?;
        let Ok(envelope) = Envelope::decode(message.payload.clone()) else {
            continue;
        };
        seen.push(envelope.clone());
        match envelope.payload {
            Some(Payload::BuildRequested(p)) => {
                let b = p.build.unwrap_or_default();
                let position = PushPosition::from_wire(envelope.push_sequence)
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                println!(
                    "  build requested  {} push {position} ({})",
                    short_sha(&b.commit),
                    b.build_id
                );
            }
            Some(Payload::BuildSkipped(p)) => {
                println!("  build skipped    {} {}", short_sha(&p.commit), p.detail)
            }
            Some(Payload::BuildStarted(p)) => println!(
                "  build started    {}",
                short_sha(&p.build.unwrap_or_default().commit)
            ),
            Some(Payload::BuildCompleted(p)) => {
                let status = p.status();
                let b = p.build.unwrap_or_default();
                println!(
                    "  build completed  {} status {status:?}",
                    short_sha(&b.commit)
                );
                completed.insert(b.build_id);
            }
            Some(Payload::PublishApplied(p)) => {
                publishes += 1;
                newest_published |= p.build.as_ref().is_some_and(|b| b.commit == second);
                println!("  PUBLISHED        {} = {}", p.parameter, p.value);
            }
            Some(Payload::PublishSkipped(p)) => {
                publishes += 1;
                let reason = p.reason();
                let commit = p.build.map(|b| b.commit).unwrap_or_default();
                println!(
                    "  publish skipped  {} {reason:?}: {}",
                    short_sha(&commit),
                    p.detail
                );
            }
            _ => {}
        }
    }
    println!();
    if newest_published {
        println!(
            "demo: {PARAMETER} now points at the newest push ({}), though its build finished first.",
            &second[..7]
        );
        println!(
            "      The original CI would have deployed {} (the older commit finished last).",
            &first[..7]
        );
    } else {
        println!(
            "demo: the newest push ({}) did not publish {PARAMETER}; the skips above say why.",
            &second[..7]
        );
    }
    println!(
        "      See `prx-ci params`, `prx-ci history {REPOSITORY} --branch main`, `prx-ci events`."
    );
    Ok(DemoOutcome {
        first,
        second,
        events: seen,
    })
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=PRX Demo",
            "-c",
            "user.email=demo@prx.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A GitHub push webhook body for `REPOSITORY` (cloned from `repo`) on `main`.
pub fn push_payload(repo: &Path, before: &str, after: &str, message: &str) -> String {
    let url = format!("file://{}", repo.display());
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "created": before.bytes().all(|b| b == b'0'),
        "deleted": false,
        "forced": false,
        "compare": "",
        "commits": [{"id": after, "message": message, "author": {"name": "PRX Demo", "username": "prx-demo"}}],
        "head_commit": {"id": after, "message": message, "author": {"name": "PRX Demo", "username": "prx-demo"}},
        "repository": {
            "name": "demo-app",
            "full_name": REPOSITORY,
            "private": false,
            "owner": {"login": "PRX", "name": "PRX"},
            "default_branch": "main",
            "clone_url": url,
            "html_url": url,
            // GitHub's time of the push: what orders pushes (with the before/after chain).
            "pushed_at": time::OffsetDateTime::now_utc().unix_timestamp(),
        },
        "pusher": {"name": "prx-demo"},
        "sender": {"login": "prx-demo"},
    })
    .to_string()
}
