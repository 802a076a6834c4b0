//! The load generator: GitHub's push and pull-request webhooks of the plan, signed like GitHub
//! signs them, sent in the plan's order (out of order, some twice under one delivery id)
//! alternating between the ingress replicas; a delivery answered anything but 2xx (or not at
//! all) is sent again a second later, like a person pressing "Redeliver", until it is accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::history::SentDelivery;
use crate::plan::{LaneKind, OWNER, Plan, PushPlan};
use crate::repos::Repos;

/// One webhook ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub delivery_id: String,
    /// `push` or `pull_request`.
    pub event: &'static str,
    pub body: String,
}

/// GitHub's webhook of `push` (`base` is the run's time origin, seconds since the epoch).
pub fn body(plan: &Plan, repos: &Repos, push: &PushPlan, base: i64) -> (&'static str, Value) {
    let repo = &plan.repos[push.repo];
    let commit = &repos.commits[push.id];
    let pushed_at = base + push.pushed_offset;
    let repository = json!({
        "name": repo.name.trim_start_matches(&format!("{OWNER}/")),
        "full_name": repo.name,
        "owner": {"login": OWNER},
        "default_branch": "main",
        "clone_url": repos.clone_urls[push.repo],
        "html_url": repos.clone_urls[push.repo],
        "pushed_at": pushed_at,
    });
    let before = repos.befores[push.id].clone();
    let iso = OffsetDateTime::from_unix_timestamp(pushed_at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    match &push.lane {
        LaneKind::PullRequest(number) => {
            let mut body = json!({
                "action": if before.is_some() { "synchronize" } else { "opened" },
                "number": number,
                "after": commit,
                "pull_request": {
                    "number": number,
                    "title": format!("chaos PR {number}"),
                    "draft": false,
                    "updated_at": iso,
                    "head": {"sha": commit, "ref": push.lane.branch(), "repo": {"full_name": repo.name}},
                    "base": {"ref": "main"},
                    "user": {"login": "chaos"},
                },
                "repository": repository,
                "sender": {"login": "chaos"},
            });
            if let Some(before) = before {
                body["before"] = json!(before);
            }
            ("pull_request", body)
        }
        lane => (
            "push",
            json!({
                "ref": format!("refs/heads/{}", lane.branch()),
                "before": before.clone().unwrap_or_else(|| "0".repeat(40)),
                "after": commit,
                "created": before.is_none(),
                "deleted": false,
                "forced": false,
                "head_commit": {
                    "id": commit,
                    "message": format!("push {}", push.id),
                    "timestamp": iso,
                    "author": {"name": "chaos", "username": "chaos"},
                },
                "repository": repository,
                "pusher": {"name": "chaos"},
                "sender": {"login": "chaos"},
            }),
        ),
    }
}

/// Every delivery of the plan, in send order.
pub fn webhooks(plan: &Plan, repos: &Repos, base: i64) -> Vec<Webhook> {
    plan.deliveries
        .iter()
        .map(|d| {
            let (event, body) = body(plan, repos, &plan.pushes[d.push], base);
            Webhook {
                delivery_id: d.delivery_id.clone(),
                event,
                body: body.to_string(),
            }
        })
        .collect()
}

/// Counts of what the ingress answered.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub sends: AtomicU64,
    pub accepted: AtomicU64,
    pub unavailable: AtomicU64,
    pub other_status: AtomicU64,
    pub no_answer: AtomicU64,
}

/// How the load is sent.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub ingress_urls: Vec<String>,
    pub secret: String,
    /// Time between two first sends.
    pub pace: Duration,
    /// Pause before a failed delivery is sent again.
    pub redeliver_after: Duration,
    /// A delivery not accepted after this long is given up (a violation).
    pub give_up_after: Duration,
}

/// Sends every webhook (each in its own task, started `pace` apart) and returns, per delivery
/// id, whether some send of it was answered 2xx.
pub async fn send_all(
    webhooks: Vec<Webhook>,
    settings: &LoadSettings,
    stats: Arc<LoadStats>,
) -> anyhow::Result<Vec<SentDelivery>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, webhook) in webhooks.into_iter().enumerate() {
        let http = http.clone();
        let settings = settings.clone();
        let stats = stats.clone();
        let at = start + settings.pace * u32::try_from(i).unwrap_or(u32::MAX);
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let accepted = deliver(&http, &webhook, i, &settings, &stats).await;
            (webhook.delivery_id, accepted)
        });
    }
    let mut accepted: BTreeMap<String, bool> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (id, ok) = done?;
        *accepted.entry(id).or_default() |= ok;
    }
    Ok(accepted
        .into_iter()
        .map(|(delivery_id, accepted)| SentDelivery {
            delivery_id,
            accepted,
        })
        .collect())
}

async fn deliver(
    http: &reqwest::Client,
    webhook: &Webhook,
    index: usize,
    settings: &LoadSettings,
    stats: &LoadStats,
) -> bool {
    let signature = prx_ci_ingress::signature_256(&settings.secret, webhook.body.as_bytes());
    let deadline = tokio::time::Instant::now() + settings.give_up_after;
    for attempt in 0.. {
        let url = &settings.ingress_urls[(index + attempt) % settings.ingress_urls.len()];
        stats.sends.fetch_add(1, Ordering::Relaxed);
        let answer = http
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", webhook.event)
            .header("X-GitHub-Delivery", &webhook.delivery_id)
            .header("X-Hub-Signature-256", &signature)
            .body(webhook.body.clone())
            .send()
            .await;
        match answer.map(|r| r.status()) {
            Ok(status) if status.is_success() => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok(status) if status.as_u16() == 503 => {
                stats.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => {
                stats.other_status.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(delivery = %webhook.delivery_id, %status, "webhook refused");
            }
            Err(_) => {
                stats.no_answer.fetch_add(1, Ordering::Relaxed);
            }
        }
        if tokio::time::Instant::now() + settings.redeliver_after > deadline {
            break;
        }
        tokio::time::sleep(settings.redeliver_after).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanConfig;

    fn repos(plan: &Plan) -> Repos {
        Repos {
            commits: (0..plan.pushes.len())
                .map(|i| format!("{i:040x}"))
                .collect(),
            befores: plan
                .pushes
                .iter()
                .map(|p| {
                    (p.index_in_lane > 0).then(|| {
                        format!(
                            "{:040x}",
                            plan.lane(p.repo, &p.lane)[p.index_in_lane - 1].id
                        )
                    })
                })
                .collect(),
            clone_urls: plan
                .repos
                .iter()
                .map(|r| format!("file:///{}", r.name))
                .collect(),
        }
    }

    #[test]
    fn bodies_carry_github_push_order() {
        let plan = Plan::new(PlanConfig::new(4, 60));
        let repos = repos(&plan);
        let main = plan.lane(0, &LaneKind::Main);
        let (event, first) = body(&plan, &repos, main[0], 1_000);
        assert_eq!(event, "push");
        assert_eq!(first["before"], "0".repeat(40));
        assert_eq!(first["ref"], "refs/heads/main");
        let (_, second) = body(&plan, &repos, main[1], 1_000);
        assert_eq!(second["before"], first["after"]);
        assert!(
            second["repository"]["pushed_at"].as_i64() > first["repository"]["pushed_at"].as_i64()
        );
        let pr = plan
            .pushes
            .iter()
            .find(|p| matches!(p.lane, LaneKind::PullRequest(_)) && p.index_in_lane > 0)
            .unwrap();
        let (event, body) = body(&plan, &repos, pr, 1_000);
        assert_eq!(event, "pull_request");
        assert_eq!(body["action"], "synchronize");
        assert_eq!(body["pull_request"]["head"]["sha"], repos.commits[pr.id]);
        assert!(
            body["pull_request"]["updated_at"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T")
        );
    }

    #[test]
    fn one_webhook_per_delivery_copies_share_the_id_and_body() {
        let plan = Plan::new(PlanConfig::new(9, 80));
        let hooks = webhooks(&plan, &repos(&plan), 0);
        assert_eq!(hooks.len(), plan.deliveries.len());
        let copy = plan.deliveries.iter().position(|d| d.duplicate).unwrap();
        let original = plan
            .deliveries
            .iter()
            .position(|d| !d.duplicate && d.delivery_id == plan.deliveries[copy].delivery_id)
            .unwrap();
        assert_eq!(hooks[copy], hooks[original]);
    }
}
