//! Dashboard benchmark (issue 15: "every page renders in under 50 ms at p95 with 100,000 events
//! in the log"), against a real nats-server:
//! - stores 100,000 events in `PRX_WEBHOOKS` and `PRX_EVENTS` (pushes to many repositories and
//!   branches with their webhooks, dispatcher decisions, builds with four phases, publishes
//!   applied and skipped, superseded ones among them, notifications), in time order, with late
//!   webhook deliveries and older builds finishing after newer ones;
//! - starts the dashboard as the ops service does (`web::router` over a `Web` built like
//!   `OpsService::run` builds it, `web::live::run` reading the streams) and times its catch-up
//!   (the fold of every stored event) until the projection's positions reach the streams' ends;
//! - requests every page kind over HTTP (a bound listener, reqwest, body read to the end), several
//!   keys each, and prints p50 / p95 / max per page.
//!
//! `cargo bench -p prx-ci-ops --bench dashboard` (or `scripts/bench dashboard`); the service's
//! default config, or `PRX_BENCH_KEEP_FINISHED_BUILDS=<n>` to keep more finished builds.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use prometheus_client::registry::Registry;
use prost::Message as _;
use prx_ci_ops::OpsConfig;
use prx_ci_ops::api::OpsApi;
use prx_ci_ops::dashboard_projection::{DashboardProjection, PublishOutcome};
use prx_ci_ops::metrics::Metrics;
use prx_ci_ops::projection_runner::LiveProjection;
use prx_ci_ops::web;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, kind_of, subject_of};
use prx_ci_shared::bus::publish::EVENT_KIND_HEADER;
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::domain::push_position::PushPosition;
use prx_ci_shared::domain::{Branch, OrderingKey, RepoName};
use prx_ci_shared::testing::NatsServer;
use prx_ci_shared::testing::bench::{BenchRun, Row};
use prx_ci_shared::{CancellationToken, Runtime};

use common::{TOKEN, dashboard_caught_up, last_sequence, load_average, millis, quantile, rss};
use time::OffsetDateTime;

/// Events stored in `PRX_WEBHOOKS` + `PRX_EVENTS` together.
const EVENTS: usize = 100_000;
const REPOSITORIES: usize = 80;
/// Feature branches per repository (their pushes are not built: non-default branch).
const FEATURE_BRANCHES: usize = 2;
/// Seconds between two pushes (over all repositories).
const PUSH_INTERVAL_S: f64 = 7.0;
/// Parked messages in `PRX_PARKED` (the parked page reads them per request).
const PARKED: usize = 12;
/// Requests per page URL, after [`WARMUP`] unmeasured ones.
const RUNS: usize = 100;
const WARMUP: usize = 3;
/// Publishes awaiting JetStream's ack at once (sent in order on one connection).
const IN_FLIGHT_PUBLISHES: usize = 512;
const TARGET_P95_MS: f64 = 50.0;
/// Overrides `[ops] keep_finished_builds` (default 1000), to see how the pages grow with it.
const KEEP_FINISHED_VAR: &str = "PRX_BENCH_KEEP_FINISHED_BUILDS";

const PHASES: [&str; 4] = ["DOWNLOAD_SOURCE", "INSTALL", "BUILD", "POST_BUILD"];

/// A small deterministic generator (splitmix64): the same log every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (seconds, fractional).
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    fn chance(&mut self, p: f64) -> bool {
        self.between(0.0, 1.0) < p
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).unwrap_or(0)
    }
}

fn status_of(failed: bool) -> v1::BuildStatus {
    if failed {
        v1::BuildStatus::Failed
    } else {
        v1::BuildStatus::Succeeded
    }
}

fn repository(i: usize) -> String {
    const WORDS: [&str; 8] = [
        "billing", "search", "ingest", "portal", "auth", "media", "ledger", "notify",
    ];
    format!("PRX/{}-{}", WORDS[i % WORDS.len()], i / WORDS.len())
}

/// Repositories that build both architectures (x86_64 primary).
fn dual_arch(repo: usize) -> bool {
    repo.is_multiple_of(3)
}

/// The deploy parameters a branch's builds write.
fn parameters(repo: usize, branch: &str) -> Vec<String> {
    let env = match branch {
        "main" => "prod",
        "staging" => "stag",
        _ => return Vec::new(),
    };
    let name = repository(repo).replace('/', "-");
    let mut out = vec![format!("/prx/{env}/{name}/docker-image-tag")];
    if repo.is_multiple_of(4) {
        out.push(format!("/prx/{env}/{name}/lambda-zip"));
    }
    out
}

/// One stored event: when it happened (store order) and the envelope.
struct Timed {
    at: f64,
    envelope: v1::Envelope,
}

fn time_at(base: OffsetDateTime, at: f64) -> OffsetDateTime {
    base + Duration::from_secs_f64(at)
}

/// A push's webhook body, shaped like GitHub's (a few kB, most of it ignored by the fold).
fn push_body(
    repo: &str,
    branch: &str,
    before: &str,
    after: &str,
    n: usize,
    pushed_at: i64,
) -> Vec<u8> {
    let commits: Vec<serde_json::Value> = (0..1 + n % 3)
        .map(|c| {
            serde_json::json!({
                "id": format!("{:040x}", n * 4 + c),
                "message": format!("Change {n}.{c}: adjust the {branch} handler\n\nLonger description of change {n}, wrapped at seventy-two characters as people do."),
                "timestamp": "2026-11-30T12:00:00Z",
                "author": {"name": format!("dev{}", n % 17), "email": format!("dev{}@example.com", n % 17), "username": format!("dev{}", n % 17)},
                "added": [format!("src/new_{n}.rs")],
                "removed": [],
                "modified": ["src/lib.rs", "Cargo.toml", format!("src/module_{}.rs", n % 9)],
            })
        })
        .collect();
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "compare": format!("https://github.com/{repo}/compare/{}...{}", &before[..12], &after[..12]),
        "commits": commits,
        "head_commit": {"id": after, "message": format!("Change {n}: adjust the {branch} handler\n\nLonger description.")},
        "pusher": {"name": format!("dev{}", n % 17), "email": format!("dev{}@example.com", n % 17)},
        "repository": {
            "id": 1000 + n % REPOSITORIES,
            "full_name": repo,
            "private": true,
            "default_branch": "main",
            "pushed_at": pushed_at,
            "clone_url": format!("https://github.com/{repo}.git"),
        },
        "sender": {"login": format!("dev{}", n % 17), "type": "User"},
    })
    .to_string()
    .into_bytes()
}

/// Per-parameter publish state, to decide applied vs. superseded as the publisher's fence does.
#[derive(Default)]
struct Fence {
    newest: u64,
    newest_commit: String,
    version: i64,
}

/// The log: every push's events, in time order, cut at [`EVENTS`] (the pushes of the last minutes
/// are still in flight).
fn generate(base: OffsetDateTime) -> Vec<Timed> {
    let mut rng = Rng(15);
    let mut out = Vec::new();
    // Completion-time publish decisions need every push's timing first: builds, then publishes.
    struct Finished {
        at: f64,
        chain: Chain,
        build: v1::BuildRef,
        parameters: Vec<String>,
        primary: bool,
        succeeded: bool,
    }
    let mut finished = Vec::new();
    let mut heads: HashMap<(usize, String), String> = HashMap::new();
    let mut n = 0;
    while out.len() < EVENTS + EVENTS / 5 {
        let repo_i = rng.below(REPOSITORIES);
        let repo = repository(repo_i);
        let roll = rng.between(0.0, 1.0);
        let branch = if roll < 0.5 {
            "main".to_owned()
        } else if roll < 0.75 {
            "staging".to_owned()
        } else {
            format!("feature/change-{}", rng.below(FEATURE_BRANCHES))
        };
        let pushed = n as f64 * PUSH_INTERVAL_S + rng.between(0.0, 3.0);
        let pushed_at = time_at(base, pushed).unix_timestamp();
        let after = format!("{:040x}", 0xC0FF_EE00_0000_u64 + n as u64);
        let before = heads
            .insert((repo_i, branch.clone()), after.clone())
            .unwrap_or_else(|| "0".repeat(40));
        // 3 % of deliveries arrive late (a redelivery): after newer pushes of other repositories.
        let arrived = pushed
            + if rng.chance(0.03) {
                rng.between(20.0, 120.0)
            } else {
                rng.between(0.2, 1.0)
            };
        let delivery = format!("d{n:06}-{}", rng.next_u64() % 1_000_000);
        let webhook = Chain::starting(&delivery).envelope_at(
            format!("webhook-{delivery}"),
            time_at(base, arrived),
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery.clone(),
                event_name: "push".into(),
                repository: repo.clone(),
                payload: push_body(&repo, &branch, &before, &after, n, pushed_at).into(),
                hook_id: "4242".into(),
                origin: v1::Origin::Github as i32,
                ..Default::default()
            }),
        );
        out.push(Timed {
            at: arrived,
            envelope: webhook.clone(),
        });
        let key = OrderingKey::branch(
            RepoName::parse(&repo).unwrap(),
            Branch::new(&branch).unwrap(),
        );
        let position = PushPosition::new(pushed_at, PushPosition::CHAIN_MIDDLE, n as u64 + 1);
        let chain = Chain::caused_by(&webhook).with_ordering(&key, position.wire());
        let decided = arrived + rng.between(0.02, 0.2);
        let params = parameters(repo_i, &branch);
        if params.is_empty() {
            out.push(Timed {
                at: decided,
                envelope: chain.envelope_at(
                    chain.derive_id(&["skip"]),
                    time_at(base, decided),
                    Payload::BuildSkipped(v1::BuildSkipped {
                        repository: repo.clone(),
                        commit: after.clone(),
                        reason: v1::SkipReason::NonDefaultBranch as i32,
                        detail: format!("{branch} is not a deploy branch"),
                        event_name: "push".into(),
                        r#ref: format!("refs/heads/{branch}"),
                        ..Default::default()
                    }),
                ),
            });
            n += 1;
            continue;
        }
        let architectures: &[(v1::Architecture, &str)] = if dual_arch(repo_i) {
            &[
                (v1::Architecture::X8664, "x86_64"),
                (v1::Architecture::Aarch64, "aarch64"),
            ]
        } else {
            &[(v1::Architecture::X8664, "x86_64")]
        };
        for (arch, arch_name) in architectures {
            let request = chain.derive_id(&["build", arch_name]);
            let project = format!("prx-{}", repo.replace('/', "-").to_lowercase());
            let build = v1::BuildRef {
                build_request_id: request.clone(),
                build_id: format!("{project}:{request}"),
                repository: repo.clone(),
                commit: after.clone(),
                architecture: *arch as i32,
                backend: "codebuild".into(),
                project: project.clone(),
                region: "eu-west-1".into(),
                log_url: format!(
                    "https://eu-west-1.console.aws.amazon.com/codesuite/codebuild/projects/{project}/build/{project}%3A{request}/log"
                ),
                ..Default::default()
            };
            let environment: BTreeMap<String, String> = [
                ("PRX_REPOSITORY", repo.as_str()),
                ("PRX_BRANCH", branch.as_str()),
                ("PRX_COMMIT", after.as_str()),
                ("PRX_ARCHITECTURE", arch_name),
                ("PRX_DELIVERY", delivery.as_str()),
                ("PRX_EVENT", "push"),
                (
                    "PRX_ENVIRONMENT",
                    if branch == "main" { "prod" } else { "stag" },
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            let requested = v1::BuildRequested {
                build: Some(build.clone()),
                environment: environment.into_iter().collect(),
                buildspec: "version: 0.2\nphases:\n  build:\n    commands:\n      - make image\n"
                    .into(),
                clone_url: format!("https://github.com/{repo}.git"),
                source_version: after.clone(),
                event_name: "push".into(),
                branch: branch.clone(),
                primary_architecture: v1::Architecture::X8664 as i32,
                ..Default::default()
            };
            let mut at = decided + 0.01;
            let event = |at: f64, part: &str, payload: Payload| Timed {
                at,
                envelope: chain.envelope_at(
                    chain.derive_id(&["build", arch_name, part]),
                    time_at(base, at),
                    payload,
                ),
            };
            out.push(event(
                at,
                "requested",
                Payload::BuildRequested(requested.clone()),
            ));
            at += rng.between(5.0, 30.0);
            let started_at = at;
            out.push(event(
                at,
                "started",
                Payload::BuildStarted(v1::BuildStarted {
                    build: Some(build.clone()),
                    started_at: Some(prx_ci_shared::bus::envelope::timestamp(time_at(base, at))),
                    ..Default::default()
                }),
            ));
            out.push(event(
                at + 0.5,
                "slack-posted",
                Payload::NotificationDelivered(v1::NotificationDelivered {
                    channel: v1::NotificationChannel::Slack as i32,
                    build: Some(build.clone()),
                    reference: format!("C0DEPLOY/{}.{:06}", pushed_at, n),
                    action: "posted".into(),
                    shadow: false,
                }),
            ));
            out.push(event(
                at + 0.6,
                "status-pending",
                Payload::NotificationDelivered(v1::NotificationDelivered {
                    channel: v1::NotificationChannel::GithubStatus as i32,
                    build: Some(build.clone()),
                    reference: format!("prx-ci/{arch_name}"),
                    action: "pending".into(),
                    shadow: false,
                }),
            ));
            // One build in ten is slow, so an older push often finishes after a newer one.
            let slow = rng.chance(0.1);
            let failed = rng.chance(0.06);
            let mut records = Vec::new();
            for (i, phase) in PHASES.iter().enumerate() {
                let took = match *phase {
                    "DOWNLOAD_SOURCE" => rng.between(3.0, 10.0),
                    "INSTALL" => rng.between(10.0, 40.0),
                    "BUILD" if slow => rng.between(600.0, 1200.0),
                    "BUILD" => rng.between(60.0, 300.0),
                    _ => rng.between(5.0, 20.0),
                };
                at += took;
                let status = if failed && *phase == "BUILD" {
                    "FAILED"
                } else {
                    "SUCCEEDED"
                };
                let duration_ms = (took * 1000.0) as u64;
                out.push(event(
                    at,
                    &format!("phase-{i}"),
                    Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
                        build: Some(build.clone()),
                        completed_phase: (*phase).into(),
                        completed_phase_status: status.into(),
                        current_phase: PHASES.get(i + 1).copied().unwrap_or("COMPLETED").into(),
                        at: Some(prx_ci_shared::bus::envelope::timestamp(time_at(base, at))),
                        message: if status == "FAILED" {
                            "COMMAND_EXECUTION_ERROR: make image exited 2".into()
                        } else {
                            String::new()
                        },
                        duration_ms,
                    }),
                ));
                records.push(v1::PhaseRecord {
                    name: (*phase).into(),
                    status: status.into(),
                    duration_ms,
                    message: String::new(),
                });
            }
            at += 1.0;
            let exported: HashMap<String, String> = [
                ("IMAGE_TAG".to_owned(), format!("{repo}:{after}")),
                (
                    "LAMBDA_ZIP".to_owned(),
                    format!("s3://prx-artifacts/{repo}/{after}.zip"),
                ),
            ]
            .into_iter()
            .collect();
            out.push(event(
                at,
                "completed",
                Payload::BuildCompleted(v1::BuildCompleted {
                    build: Some(build.clone()),
                    status: status_of(failed) as i32,
                    failed_phase: if failed {
                        "BUILD".into()
                    } else {
                        String::new()
                    },
                    failure_message: if failed {
                        "COMMAND_EXECUTION_ERROR: make image exited 2".into()
                    } else {
                        String::new()
                    },
                    duration_ms: ((at - started_at) * 1000.0) as u64,
                    phases: records,
                    finished_at: Some(prx_ci_shared::bus::envelope::timestamp(time_at(base, at))),
                    exported_variables: exported,
                    ..Default::default()
                }),
            ));
            for (part, channel, action, offset) in [
                (
                    "slack-updated",
                    v1::NotificationChannel::Slack,
                    "updated",
                    0.5,
                ),
                (
                    "status-final",
                    v1::NotificationChannel::GithubStatus,
                    if failed { "failure" } else { "success" },
                    0.6,
                ),
            ] {
                out.push(event(
                    at + offset,
                    part,
                    Payload::NotificationDelivered(v1::NotificationDelivered {
                        channel: channel as i32,
                        build: Some(build.clone()),
                        reference: if channel == v1::NotificationChannel::Slack {
                            format!("C0DEPLOY/{}.{:06}", pushed_at, n)
                        } else {
                            format!("prx-ci/{arch_name}")
                        },
                        action: action.into(),
                        shadow: false,
                    }),
                ));
            }
            finished.push(Finished {
                at: at + 1.0,
                chain: chain.clone(),
                build,
                parameters: params.clone(),
                primary: *arch == v1::Architecture::X8664,
                succeeded: !failed,
            });
        }
        n += 1;
    }
    // The publisher, in completion order: the newest push in GitHub's order wins each
    // parameter; an older build finishing later is skipped as superseded.
    finished.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut fences: HashMap<String, Fence> = HashMap::new();
    for f in finished.into_iter().filter(|f| f.succeeded) {
        let event = |part: &str, payload: Payload| Timed {
            at: f.at,
            envelope: f.chain.envelope_at(
                f.chain
                    .derive_id(&["publish", &f.build.build_request_id, part]),
                time_at(base, f.at),
                payload,
            ),
        };
        if !f.primary {
            out.push(event(
                "not-primary",
                Payload::PublishSkipped(v1::PublishSkipped {
                    build: Some(f.build.clone()),
                    reason: v1::PublishSkipReason::NotPrimaryArchitecture as i32,
                    detail: "only the primary architecture (x86_64) publishes".into(),
                    ..Default::default()
                }),
            ));
            continue;
        }
        for parameter in &f.parameters {
            let (value, kind, label) = if parameter.ends_with("lambda-zip") {
                (
                    format!(
                        "s3://prx-artifacts/{}/{}.zip",
                        f.build.repository, f.build.commit
                    ),
                    v1::ArtifactKind::S3Object,
                    "LAMBDA_ZIP",
                )
            } else {
                (
                    format!("{}:{}", f.build.repository.to_lowercase(), f.build.commit),
                    v1::ArtifactKind::EcrImage,
                    "IMAGE_TAG",
                )
            };
            let fence = fences.entry(parameter.clone()).or_default();
            if fence.version == 0 {
                out.push(event(
                    &format!("owner-{parameter}"),
                    Payload::ParameterOwnerChanged(v1::ParameterOwnerChanged {
                        parameter: parameter.clone(),
                        repository: f.build.repository.clone(),
                        action: "claimed".into(),
                        ..Default::default()
                    }),
                ));
            }
            if f.chain.push_sequence > fence.newest {
                fence.newest = f.chain.push_sequence;
                fence.newest_commit.clone_from(&f.build.commit);
                fence.version += 1;
                out.push(event(
                    parameter,
                    Payload::PublishApplied(v1::PublishApplied {
                        parameter: parameter.clone(),
                        value,
                        kind: kind as i32,
                        label: label.into(),
                        build: Some(f.build.clone()),
                        version: fence.version,
                        shadow: false,
                    }),
                ));
            } else {
                out.push(event(
                    parameter,
                    Payload::PublishSkipped(v1::PublishSkipped {
                        parameter: parameter.clone(),
                        value,
                        kind: kind as i32,
                        label: label.into(),
                        build: Some(f.build.clone()),
                        reason: v1::PublishSkipReason::Superseded as i32,
                        detail: "a newer push already wrote this parameter".into(),
                        superseded_by_sequence: fence.newest,
                        superseded_by_commit: fence.newest_commit.clone(),
                        ..Default::default()
                    }),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out.truncate(EVENTS);
    out
}

fn parked_events(base: OffsetDateTime) -> Vec<v1::Envelope> {
    (0..PARKED)
        .map(|i| {
            let original = Chain::starting(&format!("parked-{i}")).envelope_at(
                format!("parked-original-{i}"),
                base,
                Payload::NotificationDelivered(v1::NotificationDelivered::default()),
            );
            Chain::starting(&format!("parked-{i}")).envelope_at(
                format!("parked-{i}"),
                base,
                Payload::MessageParked(v1::MessageParked {
                    consumer: ["notifier", "publisher"][i % 2].into(),
                    stream: EVENTS_STREAM.into(),
                    stream_sequence: 1000 + i as u64,
                    subject: "prx.build.completed.PRX~2Fbilling-0".into(),
                    data: original.encode_to_vec(),
                    error: "Slack answered 503 Service Unavailable after 5 attempts".into(),
                    deliveries: 5,
                    ..Default::default()
                }),
            )
        })
        .collect()
}

/// Stores `events` in order: sent one after another on one connection (so each stream keeps
/// their order), with up to [`IN_FLIGHT_PUBLISHES`] acks outstanding. Headers and message ids
/// as `EventPublisher::publish` sets them.
async fn store(js: &async_nats::jetstream::Context, events: &[v1::Envelope]) {
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::new();
    for envelope in events {
        let subject = subject_of(envelope).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(EVENT_KIND_HEADER, kind_of(envelope).unwrap().name());
        let message = async_nats::jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(&envelope.event_id)
            .payload(envelope.encode_to_vec().into());
        acks.push_back(js.send_publish(subject, message).await.unwrap());
        if acks.len() >= IN_FLIGHT_PUBLISHES {
            acks.pop_front().unwrap().await.unwrap();
        }
    }
    while let Some(ack) = acks.pop_front() {
        ack.await.unwrap();
    }
}

fn mib(bytes: u64) -> f64 {
    let b = bytes as f64;
    b / (1024.0 * 1024.0)
}

fn encode(s: &str) -> String {
    web::pages::builds::urlencoding(s)
}

/// One page to measure: its kind (the row the target applies to), a label and its path.
struct Page {
    kind: &'static str,
    label: String,
    path: String,
    /// A marker the body must hold exactly this many times (checked on the first response), so
    /// the figure is that of the page the label names, not of an error or an empty page.
    rows: Option<(&'static str, usize)>,
}

fn page<'a>(
    out: &'a mut Vec<Page>,
    kind: &'static str,
    label: String,
    path: String,
) -> &'a mut Page {
    out.push(Page {
        kind,
        label,
        path,
        rows: None,
    });
    out.last_mut().unwrap()
}

/// The pages to request, with keys picked from the caught-up projection: builds in flight,
/// succeeded with a publish, failed, superseded and non-primary; the busiest branches, a feature
/// branch, parameters with superseded skips.
fn pages(projection: &DashboardProjection, recent_builds: usize) -> Vec<Page> {
    let mut out = Vec::new();
    let builds = projection.builds();
    let busiest = {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (repository, branch) in projection.branches() {
            *counts.entry(repository).or_default() += projection.timeline(repository, branch).len();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(r, _)| r.to_owned())
            .unwrap()
    };
    let shown = builds.in_flight("").len() + recent_builds.min(builds.recent(usize::MAX, "").len());
    page(&mut out, "builds", "no filter".into(), "/".into()).rows =
        Some(("<tr data-build=", shown));
    page(
        &mut out,
        "builds",
        format!("repository={busiest}"),
        format!("/?repository={}", encode(&busiest)),
    );
    page(
        &mut out,
        "builds",
        "status=failed".into(),
        "/?status=failed".into(),
    );
    page(
        &mut out,
        "builds",
        "architecture=aarch64".into(),
        "/?architecture=aarch64".into(),
    );
    page(
        &mut out,
        "builds",
        "all four filters".into(),
        format!(
            "/?repository={}&branch=main&status=succeeded&architecture=x86_64",
            encode(&busiest)
        ),
    );
    page(
        &mut out,
        "builds",
        "branch=no-such (nothing matches)".into(),
        "/?branch=no-such".into(),
    )
    .rows = Some(("<tr data-build=", 0));

    let in_flight = builds.in_flight("");
    let recent = builds.recent(1000, "");
    let with = |pred: &dyn Fn(&prx_ci_ops::dashboard_projection::BuildDetail) -> bool| {
        recent
            .iter()
            .find(|v| projection.build(&v.key).is_some_and(|(_, d)| pred(d)))
            .map(|v| v.key.clone())
    };
    let picks = [
        ("in flight", in_flight.last().map(|v| v.key.clone())),
        (
            "published",
            with(&|d| {
                d.publishes
                    .iter()
                    .any(|(_, p)| matches!(p, PublishOutcome::Applied(_)))
            }),
        ),
        (
            "superseded",
            with(&|d| {
                d.publishes.iter().any(|(_, p)| {
                    matches!(p, PublishOutcome::Skipped(s)
                        if s.reason() == v1::PublishSkipReason::Superseded)
                })
            }),
        ),
        (
            "failed",
            with(&|d| {
                d.completed
                    .as_ref()
                    .is_some_and(|c| !c.failed_phase.is_empty())
            }),
        ),
        (
            "aarch64",
            with(&|d| {
                d.requested
                    .as_ref()
                    .and_then(|r| r.build.as_ref())
                    .is_some_and(|b| b.architecture() == v1::Architecture::Aarch64)
            }),
        ),
    ];
    for (what, key) in picks {
        let key = key.unwrap_or_else(|| panic!("no {what} build in the projection"));
        let phases = projection.build(&key).map_or(0, |(_, d)| d.phases.len());
        page(
            &mut out,
            "build",
            what.into(),
            format!("/builds/{}", encode(&key)),
        )
        .rows = Some(("data-phase=", phases));
    }

    page(
        &mut out,
        "branches",
        "all branches".into(),
        "/branches".into(),
    )
    .rows = Some(("href=\"/branches/", projection.branches().count()));
    let mut branches: Vec<(usize, &(String, String))> = projection
        .branches()
        .map(|b| (projection.timeline(&b.0, &b.1).len(), b))
        .collect();
    branches.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let feature = branches
        .iter()
        .find(|(_, (_, b))| b.starts_with("feature/"))
        .map(|(n, b)| (*n, *b))
        .unwrap();
    let staging = branches
        .iter()
        .find(|(_, (_, b))| b == "staging")
        .map(|(n, b)| (*n, *b))
        .unwrap();
    for (pushes, (repository, branch)) in [branches[0], branches[1], staging, feature] {
        page(
            &mut out,
            "branch",
            format!("{repository} {branch} ({pushes} pushes)"),
            web::pages::branch::timeline_href(repository, branch),
        )
        .rows = Some(("data-commit=", pushes));
    }

    page(
        &mut out,
        "parameters",
        "all parameters".into(),
        "/parameters".into(),
    )
    .rows = Some(("<tr data-parameter=", projection.parameters().len()));
    let mut parameters: Vec<(usize, &String)> = projection
        .parameters()
        .iter()
        .map(|(name, p)| {
            let skips = p
                .history
                .iter()
                .filter(|e| matches!(e.outcome, PublishOutcome::Skipped(_)))
                .count();
            (skips, name)
        })
        .collect();
    parameters.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (skips, name) in [
        parameters[0],
        parameters[1],
        parameters[parameters.len() - 1],
    ] {
        let history = projection.parameters()[name].history.len();
        page(
            &mut out,
            "parameter",
            format!("{name} ({history} entries, {skips} skips)"),
            format!("/parameter?name={}", encode(name)),
        )
        .rows = Some(("<tr data-outcome=", history));
    }
    page(
        &mut out,
        "parked",
        format!("{PARKED} parked (reads PRX_PARKED + KV per request)"),
        "/parked".into(),
    )
    .rows = Some(("<tr data-parked=", PARKED));
    out
}

#[tokio::main]
async fn main() {
    let mut record = BenchRun::start("dashboard");
    println!("load average at start: {}", load_average());
    let server = NatsServer::start().await;
    let mut registry = Registry::default();
    let rt = Runtime::from_client(server.connect().await, &mut registry);
    rt.provision(1).await.unwrap();

    // The log: 100,000 events over the last hours, in time order.
    let started = Instant::now();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(20 * 3600);
    let timed = generate(base);
    let events: Vec<v1::Envelope> = timed.into_iter().map(|t| t.envelope).collect();
    let generated = started.elapsed();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bytes = 0;
    for e in &events {
        *counts.entry(kind_of(e).unwrap().name()).or_default() += 1;
        bytes += e.encoded_len();
    }
    let started = Instant::now();
    store(&rt.js, &events).await;
    store(&rt.js, &parked_events(base)).await;
    let webhooks_end = last_sequence(&rt.js, WEBHOOKS_STREAM).await;
    let events_end = last_sequence(&rt.js, EVENTS_STREAM).await;
    let total = (webhooks_end + events_end) as usize;
    assert_eq!(total, EVENTS, "every event stored once");
    println!(
        "stored {EVENTS} events ({:.1} MB encoded; {webhooks_end} in {WEBHOOKS_STREAM}, {events_end} in {EVENTS_STREAM}): {webhooks_end} pushes to {REPOSITORIES} repositories, plus {PARKED} parked messages; generated in {:.1} s, stored in {:.1} s",
        bytes as f64 / 1e6,
        generated.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  by kind: {}",
        counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(events);

    // The dashboard, as OpsService::run builds it.
    let mut config = OpsConfig::default();
    if let Ok(keep) = std::env::var(KEEP_FINISHED_VAR) {
        config.keep_finished_builds = keep.parse().expect("a number of builds");
    }
    println!(
        "dashboard config: keep_finished_builds {}, recent_builds {}",
        config.keep_finished_builds, config.recent_builds
    );
    let config = Arc::new(config);
    let api = OpsApi::new(
        rt.clone(),
        config.clone(),
        LiveProjection::new(config.keep_finished_builds),
        Metrics::register(&mut registry),
    );
    let rss_before = rss();
    let shutdown = CancellationToken::new();
    let (web, live, catch_up) = dashboard_caught_up(
        &rt,
        &config,
        api,
        &shutdown,
        (events_end, webhooks_end),
        Duration::from_secs(600),
    )
    .await;
    let projection = web.projection.clone();
    let rss_after = rss();
    let rate = EVENTS as f64 / catch_up.as_secs_f64();
    println!(
        "catch-up: {EVENTS} events folded from the streams in {:.2} s ({rate:.0} events/s); load average {}",
        catch_up.as_secs_f64(),
        load_average()
    );
    {
        let p = projection.read().await;
        println!(
            "  projection: {} builds kept ({} in flight), {} branches, {} parameters",
            p.builds().len(),
            p.builds().in_flight("").len(),
            p.branches().count(),
            p.parameters().len()
        );
    }
    println!(
        "  process RSS {:.1} MiB before the catch-up, {:.1} MiB after (+{:.1} MiB: the projection plus the live readers' buffers; an upper bound, allocator slack included)",
        mib(rss_before),
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before))
    );

    record.row(
        Row::new(
            format!("dashboard catch-up: fold of {EVENTS} stored events from empty (both streams)"),
            "-",
        )
        .measured(format!(
            "{:.2} s ({rate:.0} events/s)",
            catch_up.as_secs_f64()
        ))
        .details("benchmarks/dashboard.md"),
    );
    record.row(
        Row::new(
            format!("dashboard process RSS after the catch-up of {EVENTS} events"),
            "-",
        )
        .measured(format!(
            "{:.1} MiB (+{:.1} MiB over the catch-up)",
            mib(rss_after),
            mib(rss_after.saturating_sub(rss_before))
        ))
        .details("benchmarks/dashboard.md"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = tokio::spawn(web::serve(listener, web, shutdown.clone()));
    let client = reqwest::Client::builder().build().unwrap();
    let pages = pages(&*projection.read().await, config.recent_builds);

    println!(
        "pages: {RUNS} sequential requests each over HTTP/1.1 keep-alive (after {WARMUP} unmeasured), time to the last body byte; load average {}",
        load_average()
    );
    println!(
        "  {:<10} {:<62} {:>8} {:>8} {:>8} {:>8}",
        "page", "which", "KiB", "p50 ms", "p95 ms", "max ms"
    );
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for page in &pages {
        let url = format!("http://{address}{}", page.path);
        let mut samples = Vec::with_capacity(RUNS);
        let mut size = 0;
        for run in 0..WARMUP + RUNS {
            let started = Instant::now();
            let response = client
                .get(&url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            let took = started.elapsed();
            assert!(status.is_success(), "{url}: {status}");
            size = body.len();
            if run == 0
                && let Some((marker, n)) = page.rows
            {
                let found = String::from_utf8_lossy(&body).matches(marker).count();
                assert_eq!(found, n, "{url}: {marker} {found} times, expected {n}");
            }
            if run >= WARMUP {
                samples.push(took);
            }
        }
        samples.sort();
        println!(
            "  {:<10} {:<62} {:>8.1} {:>8.2} {:>8.2} {:>8.2}",
            page.kind,
            page.label,
            size as f64 / 1024.0,
            quantile(&samples, 0.5),
            quantile(&samples, 0.95),
            millis(samples[samples.len() - 1])
        );
        by_kind.entry(page.kind).or_default().extend(samples);
    }
    println!(
        "per page kind (all its URLs together), target p95 < {TARGET_P95_MS} ms; load average {}",
        load_average()
    );
    let mut missed = Vec::new();
    for (kind, samples) in &mut by_kind {
        samples.sort();
        let p95 = quantile(samples, 0.95);
        let met = p95 < TARGET_P95_MS;
        if !met {
            missed.push(*kind);
        }
        let urls = pages.iter().filter(|p| p.kind == *kind).count();
        record.row(
            Row::new(
                format!(
                    "dashboard {kind} page over HTTP, {} sequential requests ({urls} URLs), {EVENTS} events: p50 / p95 / max",
                    samples.len()
                ),
                format!("p95 < {TARGET_P95_MS} ms"),
            )
            .measured(format!(
                "{:.2} / {p95:.2} / {:.2} ms",
                quantile(samples, 0.5),
                millis(samples[samples.len() - 1])
            ))
            .met(met)
            .details("benchmarks/dashboard.md"),
        );
        println!(
            "  {kind:<10} p50 {:>7.2} ms  p95 {p95:>7.2} ms  max {:>7.2} ms  ({} requests) {}",
            quantile(samples, 0.5),
            millis(samples[samples.len() - 1]),
            samples.len(),
            if met { "met" } else { "MISSED" }
        );
    }
    shutdown.cancel();
    live.await.unwrap();
    served.await.unwrap().unwrap();
    record.finish().unwrap();
    assert!(missed.is_empty(), "p95 target missed by: {missed:?}");
}
