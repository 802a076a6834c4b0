//! The self-healing intake: a reconciler that reads the webhook's recent deliveries from
//! GitHub and recovers those that never reached the ingress (see
//! `docs/self-healing-intake.md`).
//!
//! One round: page `GET .../hook/deliveries` (newest first) back to the stored cursor;
//! [`select`] what to recover; for each, either fetch the delivery through the API and store
//! it as `WebhookReceived` with origin `ORIGIN_RECOVERED` and `Nats-Msg-Id` = its GUID (so a
//! delivery already stored, or redelivered later, is a duplicate, not a second build), or ask
//! GitHub to redeliver it; then move the cursor forward with compare-and-set. Rounds run at
//! start-up and every `interval` on a task of their own: the webhook path never waits for one,
//! and a failed round (GitHub or NATS down) is logged and retried next round.

pub mod select;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::github::GitHubClient;
use prx_ci_shared::kv::{Modify, Records};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use self::select::{Candidate, Delivery, next_cursor, reached_cursor, select};
use crate::config::{IngressConfig, RecoveryMode, SelfHealingConfig};
use crate::handler::storable_body_limit;
use crate::webhook::{Webhook, WebhookHeaders};

/// The KV bucket of cursors (`deploy/nats/kv/prx_ci_ingress_recovery.json`).
pub const CURSOR_BUCKET: &str = "prx_ci_ingress_recovery";

/// The record at a hook's key: every failed delivery up to `delivery_id` was recovered (or
/// reported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub delivery_id: u64,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub updated_at: Option<OffsetDateTime>,
}

/// What happened to a delivery the reconciler looked at (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The reconciler's metrics.
#[derive(Debug, Clone)]
pub struct RecoveryMetrics {
    deliveries: Family<OutcomeLabels, Counter>,
    rounds: Family<OutcomeLabels, Counter>,
    retention_gaps: Counter,
}

/// The `outcome` values of `prx_ci_ingress_recovery_deliveries_total`.
pub const OUTCOMES: [&str; 6] = [
    "recovered",
    "redelivery_requested",
    "already_present",
    "too_old",
    "malformed",
    "error",
];

impl RecoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        let rounds = Family::<OutcomeLabels, Counter>::default();
        for outcome in OUTCOMES {
            drop(deliveries.get_or_create(&OutcomeLabels { outcome }));
        }
        for outcome in ["complete", "incomplete", "failed"] {
            drop(rounds.get_or_create(&OutcomeLabels { outcome }));
        }
        let retention_gaps = Counter::default();
        registry.register(
            "prx_ci_ingress_recovery_deliveries",
            "Failed GitHub deliveries the reconciler handled, by outcome",
            deliveries.clone(),
        );
        registry.register(
            "prx_ci_ingress_recovery_rounds",
            "Reconciler rounds by outcome (complete: reached the cursor; incomplete: stopped at \
             max_pages or left deliveries to retry; failed: GitHub or NATS unavailable)",
            rounds.clone(),
        );
        registry.register(
            "prx_ci_ingress_recovery_retention_gaps",
            "Rounds whose listing ended before the stored cursor: deliveries in between are \
             beyond GitHub's retention and could not be checked",
            retention_gaps.clone(),
        );
        Self {
            deliveries,
            rounds,
            retention_gaps,
        }
    }

    fn count(&self, outcome: &'static str, n: usize) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n as u64);
    }

    fn round(&self, outcome: &'static str) {
        self.rounds.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// What one round did (also returned to tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub listed: usize,
    pub recovered: usize,
    pub redelivery_requested: usize,
    pub already_present: usize,
    pub too_old: usize,
    pub malformed: usize,
    pub errors: usize,
    /// Listing reached the cursor (or, without one, GitHub's oldest delivery).
    pub complete: bool,
    /// The cursor after the round.
    pub cursor: Option<u64>,
}

/// `GET .../hook/deliveries/{id}`, as far as the reconciler reads it.
#[derive(Debug, Deserialize)]
struct DeliveryDetail {
    guid: String,
    #[serde(default)]
    event: String,
    request: DeliveryRequest,
}

#[derive(Debug, Deserialize)]
struct DeliveryRequest {
    #[serde(default)]
    headers: std::collections::HashMap<String, serde_json::Value>,
    payload: serde_json::Value,
}

/// The reconciler of one hook. See the module docs.
#[derive(Debug, Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SelfHealingConfig,
    github: GitHubClient,
    publisher: EventPublisher,
    js: async_nats::jetstream::Context,
    allowed_events: HashSet<String>,
    max_body_bytes: usize,
    metrics: RecoveryMetrics,
}

impl Reconciler {
    /// A reconciler for `config.self_healing` (which must be enabled and valid; the caller
    /// checked the `[github]` credentials with [`SelfHealingConfig::check_credentials`]).
    /// Registers its metrics in `registry`.
    pub fn new(
        rt: &Runtime,
        config: &IngressConfig,
        github: GitHubClient,
        registry: &mut Registry,
    ) -> Self {
        let max_body_bytes =
            storable_body_limit(config.max_body_bytes, rt.client.server_info().max_payload);
        Self {
            inner: Arc::new(Inner {
                config: config.self_healing.clone(),
                github,
                publisher: rt.publisher.clone().with_ack_timeout(config.store_timeout),
                js: rt.js.clone(),
                allowed_events: config.allowed_events.iter().cloned().collect(),
                max_body_bytes,
                metrics: RecoveryMetrics::register(registry),
            }),
        }
    }

    /// Runs a round now, then one every `interval`, until `shutdown`. Never fails: a round's
    /// error is logged and the next round tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = self.inner.config.interval;
        tracing::info!(
            hook = %self.inner.config.deliveries_path(),
            mode = ?self.inner.config.mode,
            ?interval,
            "webhook reconciler started"
        );
        loop {
            let round = tokio::select! {
                () = shutdown.cancelled() => return,
                round = self.round() => round,
            };
            if let Err(err) = round {
                self.inner.metrics.round("failed");
                tracing::warn!(
                    error = format!("{err:#}"),
                    "reconciler round failed; retrying next round"
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One round (see the module docs).
    pub async fn round(&self) -> anyhow::Result<RoundReport> {
        let inner = &self.inner;
        let config = &inner.config;
        let cursors: Records<Cursor> = Records::open(&inner.js, CURSOR_BUCKET).await?;
        let key = config.cursor_key();
        let cursor = cursors.get(&key).await?.record.map(|c| c.delivery_id);

        // Page back to the cursor.
        let mut listed: Vec<Delivery> = Vec::new();
        let mut path = Some(format!(
            "{}?per_page={}",
            config.deliveries_path(),
            config.per_page
        ));
        let mut pages = 0;
        let mut reached = false;
        let mut ended = false;
        while let Some(page_path) = path.take() {
            let (page, next): (Vec<Delivery>, Option<String>) =
                inner.github.get_json_page(&page_path).await?;
            pages += 1;
            let oldest = page.iter().map(|d| d.id).min();
            listed.extend(page);
            if reached_cursor(oldest, cursor) {
                reached = true;
                break;
            }
            match next {
                None => ended = true,
                Some(_) if pages >= config.max_pages => {
                    tracing::warn!(
                        pages,
                        "reconciler: stopped at max_pages before reaching the cursor; the \
                         cursor stays and the next round reads them again"
                    );
                }
                Some(next) => path = Some(next),
            }
        }
        if ended
            && !reached
            && let Some(cursor) = cursor
        {
            // GitHub's list ended above the cursor: what lay in between is gone.
            inner.metrics.retention_gaps.inc();
            tracing::warn!(
                cursor,
                oldest_listed = listed.iter().map(|d| d.id).min(),
                "reconciler: GitHub no longer lists deliveries back to the stored cursor; failed \
                 deliveries in between (beyond GitHub's retention) cannot be checked or recovered"
            );
        }
        let complete = reached || ended;

        let now = OffsetDateTime::now_utc();
        let selection = select(&listed, cursor, now, config.max_age, &inner.allowed_events);
        let mut report = RoundReport {
            listed: listed.len(),
            too_old: selection.too_old.len(),
            malformed: selection.malformed,
            complete,
            ..RoundReport::default()
        };
        for old in &selection.too_old {
            tracing::warn!(
                delivery = %old.guid,
                attempt = old.id,
                event = %old.event,
                delivered_at = %old.delivered_at,
                max_age = ?config.max_age,
                "failed delivery older than max_age: not recovered (beyond the duplicate window \
                 it could build twice); redeliver it by hand if it still matters"
            );
        }
        if selection.malformed > 0 {
            tracing::warn!(
                count = selection.malformed,
                "reconciler: deliveries listed with an invalid guid or event name were skipped"
            );
        }
        let mut failed_ids = Vec::new();
        for candidate in &selection.recover {
            match self.recover(candidate).await {
                Ok(Recovered::Stored) => report.recovered += 1,
                Ok(Recovered::AlreadyPresent) => report.already_present += 1,
                Ok(Recovered::RedeliveryRequested) => report.redelivery_requested += 1,
                Err(err) => {
                    report.errors += 1;
                    failed_ids.push(candidate.id);
                    tracing::warn!(
                        delivery = %candidate.guid,
                        attempt = candidate.id,
                        error = format!("{err:#}"),
                        "reconciler: delivery not recovered; retried next round"
                    );
                }
            }
        }
        let metrics = &inner.metrics;
        metrics.count("recovered", report.recovered);
        metrics.count("redelivery_requested", report.redelivery_requested);
        metrics.count("already_present", report.already_present);
        metrics.count("too_old", report.too_old);
        metrics.count("malformed", report.malformed);
        metrics.count("error", report.errors);

        let proposed = next_cursor(cursor, &selection, &failed_ids, complete);
        report.cursor = match proposed {
            Some(id) if Some(id) != cursor => Some(advance(&cursors, &key, id).await?),
            _ => cursor,
        };
        metrics.round(if complete && failed_ids.is_empty() {
            "complete"
        } else {
            "incomplete"
        });
        if report.recovered + report.redelivery_requested + report.too_old + report.errors > 0 {
            tracing::info!(?report, "reconciler round");
        } else {
            tracing::debug!(?report, "reconciler round");
        }
        Ok(report)
    }

    async fn recover(&self, candidate: &Candidate) -> anyhow::Result<Recovered> {
        let inner = &self.inner;
        let base = inner.config.deliveries_path();
        match inner.config.mode {
            RecoveryMode::Redeliver => {
                let _: serde_json::Value = inner
                    .github
                    .post_json(
                        &format!("{base}/{}/attempts", candidate.id),
                        &serde_json::json!({}),
                    )
                    .await?;
                Ok(Recovered::RedeliveryRequested)
            }
            RecoveryMode::Store => {
                let detail: DeliveryDetail = inner
                    .github
                    .get_json(&format!("{base}/{}", candidate.id))
                    .await?;
                let webhook = recovered_webhook(candidate, detail, inner.max_body_bytes)?;
                // Dated by GitHub's first attempt, not by now: the dispatcher falls back to
                // the envelope's time for a push without GitHub's `pushed_at`, and a push
                // recovered late must not be taken for the newest.
                let envelope = webhook.into_envelope(candidate.delivered_at);
                let stored = inner.publisher.publish(&envelope).await?;
                Ok(if stored.duplicate {
                    Recovered::AlreadyPresent
                } else {
                    tracing::info!(
                        delivery = %candidate.guid,
                        event = %candidate.event,
                        sequence = stored.sequence,
                        "recovered a delivery GitHub could not make"
                    );
                    Recovered::Stored
                })
            }
        }
    }
}

enum Recovered {
    Stored,
    AlreadyPresent,
    RedeliveryRequested,
}

/// The webhook of a fetched delivery, checked as the handler checks a request: the GUID is
/// the listed one, the event and hook id are header tokens, the payload one JSON object of at
/// most `max_body_bytes`.
fn recovered_webhook(
    candidate: &Candidate,
    detail: DeliveryDetail,
    max_body_bytes: usize,
) -> anyhow::Result<Webhook> {
    anyhow::ensure!(
        detail.guid == candidate.guid,
        "GitHub answered delivery {} with another guid",
        candidate.id
    );
    let header = |name: &str| {
        detail
            .request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .and_then(|v| axum::http::HeaderValue::from_str(v).ok())
    };
    let mut headers = axum::http::HeaderMap::new();
    let delivery = axum::http::HeaderValue::from_str(&candidate.guid)?;
    headers.insert(crate::webhook::DELIVERY_HEADER, delivery);
    let event = header(crate::webhook::EVENT_HEADER)
        .or_else(|| axum::http::HeaderValue::from_str(&detail.event).ok());
    if let Some(event) = event {
        headers.insert(crate::webhook::EVENT_HEADER, event);
    }
    if let Some(hook_id) = header(crate::webhook::HOOK_ID_HEADER) {
        headers.insert(crate::webhook::HOOK_ID_HEADER, hook_id);
    }
    let headers = WebhookHeaders::parse(&headers)?;
    anyhow::ensure!(
        headers.event_name == candidate.event,
        "delivery {}: the event is {:?} in its detail but {:?} in the list",
        candidate.id,
        headers.event_name,
        candidate.event
    );
    let payload = Bytes::from(serde_json::to_vec(&detail.request.payload)?);
    anyhow::ensure!(
        payload.len() <= max_body_bytes,
        "delivery {}: payload of {} bytes is over the limit of {max_body_bytes}",
        candidate.id,
        payload.len()
    );
    Ok(Webhook::recovered(headers, &payload)?)
}

/// Moves the cursor at `key` forward to `id` (compare-and-set; a replica that got further
/// first wins). Returns the cursor as stored.
async fn advance(cursors: &Records<Cursor>, key: &str, id: u64) -> anyhow::Result<u64> {
    let now = OffsetDateTime::now_utc();
    let (_, stored) = cursors
        .modify(key, |cursor| {
            if cursor.delivery_id >= id {
                Modify::Keep(())
            } else {
                cursor.delivery_id = id;
                cursor.updated_at = Some(now);
                Modify::Write(())
            }
        })
        .await?;
    Ok(stored.delivery_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate() -> Candidate {
        Candidate {
            id: 7,
            guid: "g-1".into(),
            event: "push".into(),
            delivered_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn detail(json: serde_json::Value) -> DeliveryDetail {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_fetched_delivery_becomes_a_recovered_webhook() {
        let webhook = recovered_webhook(
            &candidate(),
            detail(serde_json::json!({
                "guid": "g-1", "event": "push",
                "request": {"headers": {"X-GitHub-Event": "push", "X-GitHub-Hook-ID": "5", "X-Hub-Signature-256": "sha256=x"},
                            "payload": {"ref": "refs/heads/main", "repository": {"full_name": "PRX/app"}}}
            })),
            1 << 20,
        )
        .unwrap();
        assert_eq!(webhook.delivery_id(), "g-1");
        assert_eq!(webhook.event_name(), "push");
        assert_eq!(webhook.repository(), Some("PRX/app"));
    }

    #[test]
    fn fetched_deliveries_are_checked_like_requests() {
        let ok_request = serde_json::json!({"headers": {}, "payload": {"a": 1}});
        for (json, limit, expected) in [
            (
                serde_json::json!({"guid": "other", "event": "push", "request": ok_request}),
                1 << 20,
                "another guid",
            ),
            (
                serde_json::json!({"guid": "g-1", "event": "push", "request": {"headers": {}, "payload": [1]}}),
                1 << 20,
                "not a JSON object",
            ),
            (
                serde_json::json!({"guid": "g-1", "event": "push", "request": ok_request}),
                3,
                "over the limit",
            ),
            (
                serde_json::json!({"guid": "g-1", "event": "issues", "request": ok_request}),
                1 << 20,
                "in the list",
            ),
        ] {
            let err = recovered_webhook(&candidate(), detail(json), limit)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
