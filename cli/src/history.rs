//! `prx-ci history`: the events of a repository (one branch, PR or commit) through the ops API;
//! also the ops-API options and the event rendering the other ops commands share.

use prx_ci_shared::domain::short_sha;
use std::io::Write as _;
use std::num::NonZeroUsize;

use prost::Message as _;
use prx_ci_ops::client::{self, Pages};
use prx_ci_proto::v1::{self, envelope::Payload, history_request};
use prx_ci_shared::bus::envelope::from_timestamp;
use prx_ci_shared::bus::subject::EventKind;
use prx_ci_shared::domain::{Architecture, OrderingKey};
use secrecy::SecretString;

/// How to reach the ops API (every ops subcommand takes these).
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// The ops API of a running system.
    #[arg(long, env = "PRX_CI_OPS_URL", default_value = "http://127.0.0.1:50051")]
    pub ops_url: String,
    /// Bearer token of the ops API (default: ./.prx-ci/ops-token, written by `prx-ci up`).
    #[arg(long, env = "PRX_CI_OPS_TOKEN", hide_env_values = true)]
    pub ops_token: Option<String>,
    /// With an `https://` ops URL: trust only these PEM CA certificates (default: the system's
    /// trust store, which verifies a load balancer's public certificate).
    #[arg(long, env = "PRX_CI_OPS_CA_FILE")]
    pub ops_ca_file: Option<std::path::PathBuf>,
}

/// Where `prx-ci up` writes the ops token it generated (default data directory).
const LOCAL_TOKEN_FILE: &str = ".prx-ci/ops-token";

impl OpsArgs {
    /// Connects with `--ops-token` / `PRX_CI_OPS_TOKEN`, else the token a local `prx-ci up`
    /// wrote to `./.prx-ci/ops-token`.
    pub async fn connect(&self) -> anyhow::Result<prx_ci_ops::client::Client> {
        let token = self
            .ops_token
            .clone()
            .or_else(|| {
                std::fs::read_to_string(LOCAL_TOKEN_FILE)
                    .ok()
                    .map(|t| t.trim().to_owned())
            })
            .map(SecretString::from);
        let ca =
            match &self.ops_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the CA file {}: {e}", path.display())
                })?),
                None => None,
            };
        prx_ci_ops::client::connect(&self.ops_url, token.as_ref(), ca.as_deref()).await
    }
}

/// A gRPC failure as an operator reads it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Arguments of `prx-ci history`.
///
/// Prints the newest page of the history (the server's `[ops] history_page`, 200 events by
/// default), oldest first, and says on stderr how many older events it left out; `--limit N`
/// prints the newest N, `--all` every event (both read as many pages as they need).
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// `owner/repo`.
    repository: String,
    /// Only this branch.
    #[arg(long, conflicts_with_all = ["pr", "commit"])]
    branch: Option<String>,
    /// Only this pull request.
    #[arg(long, conflicts_with = "commit")]
    pr: Option<u64>,
    /// Only this commit (full SHA or a prefix of at least 7 characters).
    #[arg(long)]
    commit: Option<String>,
    /// The newest N events (oldest first), however many pages that takes. Default: the
    /// server's page (`[ops] history_page`, 200 events unless configured).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    limit: Option<NonZeroUsize>,
    /// Every event of the history, oldest first (reads page after page).
    #[arg(long)]
    all: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let filter = match (args.branch, args.pr, args.commit) {
        (Some(b), _, _) => Some(history_request::Filter::Branch(b)),
        (_, Some(n), _) => Some(history_request::Filter::PullRequest(n)),
        (_, _, Some(c)) => Some(history_request::Filter::Commit(c)),
        _ => None,
    };
    let mut client = args.ops.connect().await?;
    let request = v1::HistoryRequest {
        repository: args.repository,
        filter,
        ..Default::default()
    };
    let history = if args.all || args.limit.is_some() {
        let up_to = if args.all { None } else { args.limit };
        client::history_pages(&mut client, request, up_to)
            .await
            .map_err(status_error)?
    } else {
        // The server's default page: one call.
        let response = client
            .history(request)
            .await
            .map_err(status_error)?
            .into_inner();
        Pages {
            events: response.events,
            older: response.older,
        }
    };
    let mut out = std::io::stdout().lock();
    for event in &history.events {
        writeln!(out, "{}", render_event(event, args.json))?;
    }
    out.flush()?;
    if let Some(note) = older_note(history.older) {
        eprintln!("{note}");
    }
    Ok(())
}

/// The line on stderr when the history holds events older than those printed, so a page is
/// never taken for the whole history.
fn older_note(older: u64) -> Option<String> {
    match older {
        0 => None,
        1 => Some("1 older event not shown; --all or --limit N shows more".to_owned()),
        n => Some(format!(
            "{n} older events not shown; --all or --limit N shows more"
        )),
    }
}

/// One stored event as a line: readable (`time kind key summary`) or a JSON object.
pub fn render_event(event: &v1::StoredEvent, json: bool) -> String {
    let envelope = event.envelope.clone().unwrap_or_default();
    let kind = envelope
        .payload
        .as_ref()
        .map_or("unknown", |p| EventKind::of(p).name());
    if json {
        let body = prx_ci_proto::json::envelope_to_json(&envelope.encode_to_vec())
            .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
        return serde_json::json!({
            "stream": event.stream,
            "sequence": event.sequence,
            "subject": event.subject,
            "stored_at": rfc3339(event.stored_at.as_ref()),
            "kind": kind,
            "event": body,
        })
        .to_string();
    }
    let time = rfc3339(envelope.time.as_ref().or(event.stored_at.as_ref()));
    let key = envelope
        .ordering_key
        .as_ref()
        .and_then(OrderingKey::from_proto)
        .map_or_else(|| "-".to_owned(), |k| k.to_string());
    let summary = envelope.payload.as_ref().map(summary).unwrap_or_default();
    format!("{time} {kind:<22} {key} {summary}")
        .trim_end()
        .to_owned()
}

/// RFC 3339 at second precision ("" when absent).
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    from_timestamp(ts)
        .map(|t| t.replace_nanosecond(0).unwrap_or(t))
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn arch(value: i32) -> &'static str {
    Architecture::from_proto(value).map_or("?", Architecture::as_str)
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn build_text(build: Option<&v1::BuildRef>) -> String {
    build.map_or_else(String::new, |b| {
        format!("{} {}", arch(b.architecture), short_sha(&b.commit))
    })
}

/// A short, human summary of a payload.
pub fn summary(payload: &Payload) -> String {
    match payload {
        Payload::WebhookReceived(w) => {
            let body: serde_json::Value =
                serde_json::from_slice(&w.payload).unwrap_or(serde_json::Value::Null);
            let what = match w.event_name.as_str() {
                "push" => format!(
                    "push {} {}",
                    body["ref"].as_str().unwrap_or("?"),
                    short_sha(body["after"].as_str().unwrap_or("?"))
                ),
                "pull_request" => format!(
                    "pull_request #{} {} {}",
                    body["number"].as_u64().unwrap_or(0),
                    body["action"].as_str().unwrap_or("?"),
                    short_sha(body["pull_request"]["head"]["sha"].as_str().unwrap_or("?"))
                ),
                other => other.to_owned(),
            };
            if w.origin() == v1::Origin::Operator {
                format!("{what} (rebuild by {})", w.requested_by)
            } else {
                format!("{what} delivery={}", w.delivery_id)
            }
        }
        Payload::BuildRequested(p) => build_text(p.build.as_ref()),
        Payload::BuildSkipped(p) => format!(
            "{} {}",
            enum_name(p.reason().as_str_name(), "SKIP_REASON_"),
            p.detail
        ),
        Payload::BuildStarted(p) => format!(
            "{} log={}",
            build_text(p.build.as_ref()),
            p.build.as_ref().map_or("", |b| b.log_url.as_str())
        ),
        Payload::BuildPhaseChanged(p) => format!(
            "{} {} {} -> {}",
            build_text(p.build.as_ref()),
            p.completed_phase,
            p.completed_phase_status,
            p.current_phase
        ),
        Payload::BuildCompleted(p) => {
            let mut s = format!(
                "{} {}",
                build_text(p.build.as_ref()),
                enum_name(p.status().as_str_name(), "BUILD_STATUS_")
            );
            if !p.failed_phase.is_empty() {
                s.push_str(&format!(" in {}", p.failed_phase));
            }
            s
        }
        Payload::BuildCancelled(p) => format!(
            "{} superseded by {}",
            build_text(p.build.as_ref()),
            short_sha(&p.superseded_by_commit)
        ),
        Payload::PublishApplied(p) => format!("{} = {}", p.parameter, p.value),
        Payload::PublishSkipped(p) => format!(
            "{} {} {}",
            if p.parameter.is_empty() {
                "-"
            } else {
                &p.parameter
            },
            enum_name(p.reason().as_str_name(), "PUBLISH_SKIP_REASON_"),
            p.detail
        ),
        Payload::MessageParked(p) => format!("{} {}: {}", p.consumer, p.subject, p.error),
        Payload::NotificationDelivered(p) => format!(
            "{} {} {}",
            enum_name(p.channel().as_str_name(), "NOTIFICATION_CHANNEL_"),
            p.action,
            p.reference
        ),
        Payload::BuildReportReceived(p) => format!("{} {}", p.source, p.build_id),
        Payload::ParameterOwnerChanged(p) => {
            let mut s = format!(
                "{} {} -> {} ({})",
                p.parameter,
                if p.previous.is_empty() {
                    "unowned"
                } else {
                    &p.previous
                },
                p.repository,
                p.action
            );
            if !p.requested_by.is_empty() {
                s.push_str(&format!(" by {}: {}", p.requested_by, p.reason));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(payload: Payload, key: Option<v1::OrderingKey>) -> v1::StoredEvent {
        v1::StoredEvent {
            stream: "PRX_EVENTS".into(),
            sequence: 3,
            subject: "prx.build.completed.PRX.app".into(),
            envelope: Some(v1::Envelope {
                event_id: "e1".into(),
                time: Some(prost_types::Timestamp {
                    seconds: 1_767_225_600,
                    nanos: 5,
                }),
                ordering_key: key,
                payload: Some(payload),
                ..Default::default()
            }),
            stored_at: None,
        }
    }

    #[test]
    fn a_page_that_leaves_older_events_out_says_so() {
        assert_eq!(older_note(0), None);
        assert_eq!(
            older_note(1).unwrap(),
            "1 older event not shown; --all or --limit N shows more"
        );
        assert_eq!(
            older_note(750).unwrap(),
            "750 older events not shown; --all or --limit N shows more"
        );
    }

    #[test]
    fn events_render_as_one_readable_line() {
        let key = v1::OrderingKey {
            repository: "PRX/app".into(),
            lane: Some(v1::ordering_key::Lane::Branch("main".into())),
        };
        let completed = stored(
            Payload::BuildCompleted(v1::BuildCompleted {
                build: Some(v1::BuildRef {
                    commit: "abcdef0123456789".into(),
                    architecture: v1::Architecture::Aarch64 as i32,
                    ..Default::default()
                }),
                status: v1::BuildStatus::Failed as i32,
                failed_phase: "BUILD".into(),
                ..Default::default()
            }),
            Some(key),
        );
        assert_eq!(
            render_event(&completed, false),
            "2026-01-01T00:00:00Z build.completed        PRX/app@main aarch64 abcdef0 failed in BUILD"
        );
        let webhook = stored(
            Payload::WebhookReceived(v1::WebhookReceived {
                event_name: "push".into(),
                payload: br#"{"ref":"refs/heads/main","after":"1234567890"}"#.to_vec().into(),
                origin: v1::Origin::Operator as i32,
                requested_by: "alice".into(),
                ..Default::default()
            }),
            None,
        );
        assert_eq!(
            render_event(&webhook, false),
            "2026-01-01T00:00:00Z webhook.received       - push refs/heads/main 1234567 (rebuild by alice)"
        );
        let json: serde_json::Value = serde_json::from_str(&render_event(&webhook, true)).unwrap();
        assert_eq!(json["kind"], "webhook.received");
        assert_eq!(json["sequence"], 3);
        assert_eq!(
            json["event"]["webhookReceived"]["payload"]["ref"],
            "refs/heads/main"
        );
    }
}
