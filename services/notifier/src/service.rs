//! The notifier service: folds build events into per-build records (KV), then delivers the
//! newest rendering of each build to chat (one message, posted once, updated in place) and
//! the newest commit status, each through a paced, coalescing queue.
//!
//! The KV record is the outbox: an event is acknowledged once it is folded into the record,
//! and a record whose message or status lags behind its view is "dirty" until delivered. At
//! start every dirty record is queued again, so a crash between ack and delivery loses nothing.
//!
//! # Ordering
//! Events of one build are folded with compare-and-set on the record's KV revision, so any
//! consumer concurrency and any number of replicas apply them one at a time; the fold itself
//! ([`crate::view`]) is idempotent and monotonic, so redeliveries and late events are harmless.
//!
//! # Pace and coalescing
//! Each channel has one lane: a FIFO of build keys in which a key already waiting is not queued
//! again. The lane waits for the pace (`[notifier.slack] min_interval`, Slack's ~1 message per
//! second per channel) *before* it takes the next build, loads the newest record and renders
//! it, so every event that arrived meanwhile goes out in one call. A rendering identical to
//! the last one sent is not sent. 100 builds finishing in the same second are 100 calls, one
//! per build, drained at the pace, however many events each build had.
//! Commit statuses go through one queue keyed by (repository, commit, context) where a newer
//! state replaces a waiting older one, and the GitHub sink spends a token bucket sized to
//! GitHub's content-creation limits (80/minute, 500/hour by default).
//!
//! # Never posting twice
//! Replicas take a per-build lease in the record before delivering (a second replica waits).
//! Before the first `chat.postMessage` the record gets a post marker (`post_started_at`),
//! stored *before* the call; the message `ts` is stored right after it and the marker
//! cleared. A record found with a marker and no `ts` (the post may have happened but storing
//! its `ts` failed, or the process died in between) is never posted blindly: the notifier first
//! reads the channel's recent history (`conversations.history`, `include_all_metadata`) for the
//! message carrying the build's key in its metadata (every post has
//! `metadata.event_type = prx_ci_build`, `event_payload.build = <key>`) and adopts it.
//! Residual risk: when that lookup is impossible (no `channels:history`/`groups:history`
//! scope, a channel configured by name instead of id, Slack down) the notifier posts again
//! rather than stay silent, so a lost `ts` *and* a failed lookup give a second message; and a
//! lease that expires while its holder is still blocked in Slack's retries (longer than
//! `[notifier] lease`) can let a second replica post concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::retry::{self, Backoff, Retry};
use prx_ci_shared::{CancellationToken, Delivery, EventPublisher, Handler, HandlerError, Runtime};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::chat::{ChatError, ChatSink, MessageRef, OutgoingMessage};
use crate::commits::{CommitSource, CommitsCache};
use crate::config::NotifierConfig;
use crate::queue::CoalescingQueue;
use crate::render::{self, SlackMessage};
use crate::commit_status::{CommitStatus, desired_status};
use crate::github_status::{StatusError, StatusSink};
use crate::notification_store::{BuildRecord, Lease, Store, StoreError};
use crate::view::{self, Relevance};

/// The durable consumer (`deploy/nats/consumers/notifier.json`).
pub const CONSUMER: &str = "notifier";

/// How far before a post marker the recovery looks for the message.
const FIND_MARGIN: Duration = Duration::from_secs(60);
/// How often a build leased by another replica is looked at again.
const LEASE_POLL: Duration = Duration::from_secs(5);
/// Statuses remembered as in flight or written (a cache; cleared when full).
const MAX_RECENT_STATUSES: usize = 10_000;
/// Longest wait before a failed delivery is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The notifier's own metrics.
#[derive(Debug, Clone)]
struct Metrics {
    slack: Family<OutcomeLabels, Counter>,
    statuses: Family<OutcomeLabels, Counter>,
    chat_queue: Gauge,
    status_queue: Gauge,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            slack: Family::default(),
            statuses: Family::default(),
            chat_queue: Gauge::default(),
            status_queue: Gauge::default(),
        };
        registry.register(
            "prx_ci_notifier_chat",
            "Chat deliveries by outcome (posted, updated, unchanged, coalesced, failed, ...)",
            metrics.slack.clone(),
        );
        registry.register(
            "prx_ci_notifier_statuses",
            "Commit status writes by outcome (written, coalesced, failed, ...)",
            metrics.statuses.clone(),
        );
        registry.register(
            "prx_ci_notifier_chat_queue",
            "Builds waiting for their message to be delivered",
            metrics.chat_queue.clone(),
        );
        registry.register(
            "prx_ci_notifier_status_queue",
            "Commit statuses waiting to be written",
            metrics.status_queue.clone(),
        );
        metrics
    }

    fn chat(&self, outcome: &str) {
        self.slack
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn status(&self, outcome: &str) {
        self.statuses
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Counters a caller (benchmark, `prx-ci up`) can read.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStats {
    pub events_applied: Arc<std::sync::atomic::AtomicU64>,
    pub chat_requested: Arc<std::sync::atomic::AtomicU64>,
    pub chat_sent: Arc<std::sync::atomic::AtomicU64>,
    pub statuses_requested: Arc<std::sync::atomic::AtomicU64>,
    pub statuses_written: Arc<std::sync::atomic::AtomicU64>,
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The notifier service.
pub struct Notifier {
    rt: Runtime,
    config: NotifierConfig,
    chat: Arc<dyn ChatSink>,
    statuses: Arc<dyn StatusSink>,
    commits: Option<Arc<dyn CommitSource>>,
    metrics: Metrics,
    stats: DeliveryStats,
    instance: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("config", &self.config)
            .field("chat", &self.chat)
            .field("statuses", &self.statuses)
            .field("commits", &self.commits)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier delivering to `chat` and `statuses`, listing push commits from `commits`
    /// (`None`: messages carry no commit list). Nothing runs until [`Notifier::run`].
    pub fn new(
        rt: Runtime,
        config: NotifierConfig,
        chat: Arc<dyn ChatSink>,
        statuses: Arc<dyn StatusSink>,
        commits: Option<Arc<dyn CommitSource>>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        use prx_ci_shared::config::Validate as _;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid [notifier] configuration: {reason}"))?;
        Ok(Self {
            rt,
            config,
            chat,
            statuses,
            commits,
            metrics: Metrics::register(registry),
            stats: DeliveryStats::default(),
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Counters of what this instance did (shared; read them while it runs).
    pub fn stats(&self) -> DeliveryStats {
        self.stats.clone()
    }

    /// Consumes build events until `shutdown` is cancelled, delivering messages and statuses.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = Store::open(&self.rt.js, &self.config.bucket).await?;
        let definitions = prx_ci_shared::bus::nats::Definitions::embedded()?;
        let settings = ConsumerSettings::from_definition(definitions.consumer(CONSUMER)?)
            .with_concurrency(self.config.concurrency);
        let workers = shutdown.child_token();
        let core = Arc::new(Core {
            store,
            chat: self.chat,
            statuses: self.statuses,
            commits: self.commits,
            publisher: self.rt.publisher.clone(),
            metrics: self.metrics,
            stats: self.stats,
            instance: self.instance,
            lanes: Mutex::new(HashMap::new()),
            status_queue: CoalescingQueue::default(),
            recent_statuses: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            shutdown: workers.clone(),
            config: self.config,
        });
        core.spawn({
            let core = core.clone();
            async move { core.status_worker().await }
        });
        core.spawn({
            let core = core.clone();
            async move { core.requeue_dirty().await }
        });
        let handler = Arc::new(EventHandler { core: core.clone() });
        let result = prx_ci_shared::run_consumer(
            self.rt.js.clone(),
            self.rt.publisher.clone(),
            settings,
            handler,
            self.rt.consumer_metrics.clone(),
            shutdown,
        )
        .await;
        workers.cancel();
        let mut tasks = std::mem::take(&mut *core.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
        result.context("notifier consumer failed")
    }
}

/// One channel's queue of builds whose message needs delivering.
#[derive(Debug, Default)]
struct Lane {
    queue: CoalescingQueue<String, ()>,
}

/// A status waiting to be written, with every build whose state it carries.
#[derive(Debug, Clone)]
struct PendingStatus {
    status: CommitStatus,
    /// The build whose state is `status`.
    build_key: String,
    /// Builds whose older states were superseded by `status` while waiting.
    superseded: Vec<String>,
    attempts: u32,
}

type StatusKey = (String, String, String);

/// What every task shares.
struct Core {
    config: NotifierConfig,
    store: Store,
    chat: Arc<dyn ChatSink>,
    statuses: Arc<dyn StatusSink>,
    commits: Option<Arc<dyn CommitSource>>,
    publisher: EventPublisher,
    metrics: Metrics,
    stats: DeliveryStats,
    instance: String,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    status_queue: CoalescingQueue<StatusKey, PendingStatus>,
    /// The status last handed to GitHub per (commit, context), so an event arriving while a
    /// write is in flight does not queue the same state again.
    recent_statuses: Mutex<HashMap<StatusKey, CommitStatus>>,
    tasks: Mutex<JoinSet<()>>,
    shutdown: CancellationToken,
}

/// What one delivery attempt ended with.
#[derive(Debug)]
enum Outcome {
    /// Delivered (or nothing to deliver).
    Done,
    /// Delivered, but the view moved on meanwhile: deliver again.
    Again,
    /// Try again later.
    RetryAfter(Duration),
}

struct EventHandler {
    core: Arc<Core>,
}

impl Handler for EventHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        self.core.handle_event(&delivery.envelope).await
    }
}

impl Core {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(task);
    }

    fn channel_for(&self, record: &BuildRecord) -> String {
        self.config.channel_for(&record.view.repository).to_owned()
    }

    /// Folds one event into its build's record and queues what it changed.
    async fn handle_event(self: &Arc<Self>, envelope: &v1::Envelope) -> Result<(), HandlerError> {
        let Some(payload) = envelope.payload.as_ref() else {
            return Ok(());
        };
        let key = match view::relevance(payload).map_err(HandlerError::permanent)? {
            Relevance::Ignore => return Ok(()),
            Relevance::Build(key) => key,
        };
        let quiet = prx_ci_shared::bus::envelope::from_timestamp(envelope.time.as_ref())
            .is_some_and(|at| OffsetDateTime::now_utc() - at > self.config.quiet_after);
        let statuses = &self.config.statuses;
        let (applied, record) = self
            .store
            .modify(&key, |record| match record.view.apply(envelope) {
                Ok(true) => {
                    if quiet {
                        // Old history: remember it, announce nothing.
                        record.slack.delivered_version = record.view.version;
                        record.status.written = desired_status(statuses, &record.view);
                    }
                    (true, Ok(true))
                }
                Ok(false) => (false, Ok(false)),
                Err(err) => (false, Err(err)),
            })
            .await
            .map_err(|err| match err {
                StoreError::Corrupt { .. } => HandlerError::permanent(err),
                other => HandlerError::transient(other),
            })?;
        let applied = applied.map_err(HandlerError::permanent)?;
        if applied {
            bump(&self.stats.events_applied);
        }
        tracing::debug!(build = %key, applied, version = record.view.version, "event folded");
        // A redelivery of an applied event queues only what is still undelivered (a crash
        // between ack and delivery); a delivered build stays quiet.
        if record.chat_dirty() {
            self.enqueue_chat(&self.channel_for(&record), &key);
        }
        self.enqueue_status(&key, &record);
        Ok(())
    }

    fn lane(self: &Arc<Self>, channel: &str) -> Arc<Lane> {
        let mut lanes = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lane) = lanes.get(channel) {
            return lane.clone();
        }
        let lane = Arc::new(Lane::default());
        lanes.insert(channel.to_owned(), lane.clone());
        drop(lanes);
        let core = self.clone();
        let worker_lane = lane.clone();
        let channel = channel.to_owned();
        self.spawn(async move { core.lane_worker(channel, worker_lane).await });
        lane
    }

    fn enqueue_chat(self: &Arc<Self>, channel: &str, key: &str) {
        bump(&self.stats.chat_requested);
        let fresh = self
            .lane(channel)
            .queue
            .push(key.to_owned(), (), |_, ()| {});
        if fresh {
            self.metrics.chat_queue.inc();
        } else {
            self.metrics.chat("coalesced");
        }
    }

    fn enqueue_status(&self, key: &str, record: &BuildRecord) {
        if !self.config.statuses.enabled {
            return;
        }
        let Some(status) = desired_status(&self.config.statuses, &record.view) else {
            return;
        };
        if record.status.written.as_ref() == Some(&status) {
            return;
        }
        if self
            .recent_statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&status.key())
            == Some(&status)
        {
            return;
        }
        bump(&self.stats.statuses_requested);
        let pending = PendingStatus {
            status: status.clone(),
            build_key: key.to_owned(),
            superseded: vec![],
            attempts: 0,
        };
        let fresh = self
            .status_queue
            .push(status.key(), pending, |waiting, newer| {
                if waiting.build_key != newer.build_key {
                    waiting.superseded.push(waiting.build_key.clone());
                }
                waiting.status = newer.status;
                waiting.build_key = newer.build_key;
            });
        if fresh {
            self.metrics.status_queue.inc();
        } else {
            self.metrics.status("coalesced");
        }
    }

    /// Queues every record whose message or status lags behind its view (after a restart).
    async fn requeue_dirty(self: Arc<Self>) {
        let keys = match self.store.build_keys().await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot scan for undelivered notifications"
                );
                return;
            }
        };
        let mut queued = 0usize;
        for key in keys {
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Ok(Some((record, _))) = self.store.load(&key).await {
                if record.chat_dirty() {
                    self.enqueue_chat(&self.channel_for(&record), &key);
                    queued += 1;
                }
                self.enqueue_status(&key, &record);
            }
        }
        if queued > 0 {
            tracing::info!(queued, "requeued undelivered build messages");
        }
    }

    /// Delivers one channel's builds, at most one chat call per `min_interval`.
    async fn lane_worker(self: Arc<Self>, channel: String, lane: Arc<Lane>) {
        let interval = if self.chat.paced() {
            self.config.slack.min_interval
        } else {
            Duration::ZERO
        };
        let mut next_send = Instant::now();
        let mut attempts: HashMap<String, u32> = HashMap::new();
        loop {
            // Wait for the pace first: whatever arrives meanwhile coalesces into one send.
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_send) => {}
            }
            let Some((key, ())) = lane.queue.pop(&self.shutdown).await else {
                return;
            };
            self.metrics.chat_queue.dec();
            let (outcome, sent) = self.deliver(&channel, &key).await;
            if sent {
                next_send = Instant::now() + interval;
            }
            match outcome {
                Outcome::Done => {
                    attempts.remove(&key);
                }
                Outcome::Again => {
                    attempts.remove(&key);
                    self.enqueue_chat(&channel, &key);
                }
                Outcome::RetryAfter(delay) => {
                    let n = attempts.entry(key.clone()).or_insert(0);
                    *n += 1;
                    let delay = delay.max(
                        Backoff {
                            initial: Duration::from_millis(500),
                            max: MAX_RETRY_DELAY,
                            max_attempts: u32::MAX,
                        }
                        .delay(*n),
                    );
                    tracing::warn!(build = %key, ?delay, "message delivery will be retried");
                    let core = self.clone();
                    let channel = channel.clone();
                    self.spawn(async move {
                        tokio::select! {
                            () = core.shutdown.cancelled() => {}
                            () = tokio::time::sleep(delay) => core.enqueue_chat(&channel, &key),
                        }
                    });
                }
            }
        }
    }

    fn outgoing(&self, channel: &str, key: &str, message: SlackMessage) -> OutgoingMessage {
        OutgoingMessage {
            channel: channel.to_owned(),
            username: self.config.username.clone(),
            icon_emoji: self.config.icon_emoji.clone(),
            build_key: key.to_owned(),
            message,
        }
    }

    /// One delivery attempt of build `key`'s newest rendering. Returns the outcome and whether
    /// a chat call was made (for the pace).
    async fn deliver(&self, channel: &str, key: &str) -> (Outcome, bool) {
        let now = OffsetDateTime::now_utc();
        let lease_until = now + self.config.lease;
        let me = self.instance.clone();
        // 1. Take the build's lease and, before a first post, leave the post marker.
        let taken = self
            .store
            .modify(key, |record| {
                if !record.chat_dirty() {
                    return (false, Err(None));
                }
                if let Some(lease) = &record.slack.lease
                    && lease.owner != me
                    && lease.until > now
                {
                    return (false, Err(Some(lease.until - now)));
                }
                record.slack.lease = Some(Lease {
                    owner: me.clone(),
                    until: lease_until,
                });
                let earlier_post = record.slack.post_started_at;
                if record.slack.reference.is_none() && earlier_post.is_none() {
                    record.slack.post_started_at = Some(now);
                }
                (true, Ok(earlier_post))
            })
            .await;
        let (earlier_post, record) = match taken {
            Ok((Ok(earlier), record)) => (earlier, record),
            Ok((Err(None), _)) => return (Outcome::Done, false),
            Ok((Err(Some(busy)), _)) => {
                // Another replica delivers it; it also picks up what changed meanwhile. Look
                // again soon in case it died.
                let wait = Duration::try_from(busy)
                    .unwrap_or(LEASE_POLL)
                    .min(LEASE_POLL);
                return (Outcome::RetryAfter(wait), false);
            }
            Err(err) => {
                tracing::warn!(build = %key, error = format!("{err:#}"), "cannot take delivery lease");
                return (Outcome::RetryAfter(Duration::from_secs(1)), false);
            }
        };
        let version = record.view.version;

        // 2. The push's commits, once (cached in the record).
        let mut fetched: Option<CommitsCache> = None;
        if record.commits.is_none()
            && let (Some(source), Some((before, after))) =
                (&self.commits, render::push_range(&record.view))
        {
            let repo = record
                .view
                .var("PRX_REPO")
                .unwrap_or(&record.view.repository)
                .to_owned();
            fetched = Some(
                match source
                    .compare(&repo, before, after, self.config.max_commits)
                    .await
                {
                    Ok(commits) => commits,
                    Err(err) => {
                        tracing::warn!(build = %key, error = format!("{err:#}"), "commit list unavailable");
                        CommitsCache::Unavailable {
                            reason: format!("{err:#}"),
                        }
                    }
                },
            );
        }
        let commits = fetched.as_ref().or(record.commits.as_ref());

        // 3. Render; identical content is not sent again.
        let message = render::render(&record.view, commits, &self.config.links);
        let digest = message.digest();
        let outgoing = self.outgoing(channel, key, message);

        // 4. Send.
        let mut sent = false;
        let result: Result<Option<(MessageRef, &'static str)>, ChatError> = async {
            if let Some(reference) = &record.slack.reference {
                if record.slack.last_digest.as_deref() == Some(digest.as_str()) {
                    return Ok(None);
                }
                sent = true;
                match self.chat.update(reference, &outgoing).await {
                    Ok(()) => return Ok(Some((reference.clone(), "updated"))),
                    Err(ChatError::MessageGone(reason)) => {
                        tracing::warn!(build = %key, reason, "message gone; posting a new one");
                    }
                    Err(err) => return Err(err),
                }
            } else if let Some(marker) = earlier_post {
                // A post may have happened without its reference being stored: look first.
                sent = true;
                match self.chat.find(channel, key, marker - FIND_MARGIN).await {
                    Ok(Some(found)) => {
                        tracing::info!(build = %key, reference = %found, "found the message of an unconfirmed post");
                        match self.chat.update(&found, &outgoing).await {
                            Ok(()) => return Ok(Some((found, "updated"))),
                            Err(ChatError::MessageGone(_)) => {}
                            Err(err) => return Err(err),
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        // Residual risk, documented: without history access a lost post
                        // reference means a second message.
                        tracing::warn!(build = %key, error = %err, "cannot look for an unconfirmed post; posting");
                    }
                }
            }
            sent = true;
            let reference = self.chat.post(&outgoing).await?;
            Ok(Some((reference, "posted")))
        }
        .await;

        // 5. Record the outcome.
        let (reference, action, error) = match result {
            Ok(Some((reference, action))) => (Some(reference), Some(action), None),
            Ok(None) => (None, None, None),
            Err(ChatError::Permanent(reason)) => {
                tracing::error!(build = %key, channel, reason, "chat rejected the build message");
                self.metrics.chat("rejected");
                (None, None, Some(reason))
            }
            Err(err) => {
                self.metrics.chat("failed");
                let wait = match &err {
                    ChatError::Transient {
                        retry_after: Some(after),
                        ..
                    } => *after,
                    _ => Duration::from_secs(1),
                };
                tracing::warn!(build = %key, error = %err, "chat delivery failed");
                self.release_lease(key).await;
                return (Outcome::RetryAfter(wait), sent);
            }
        };
        if let Some(action) = action {
            self.metrics.chat(action);
            bump(&self.stats.chat_sent);
        } else if error.is_none() {
            self.metrics.chat("unchanged");
        }
        let finalize = retry::retry(
            &Backoff::default(),
            |_| {
                self.store.modify(key, |record| {
                    if let Some(reference) = &reference
                        && record.slack.reference.as_ref() != Some(reference)
                    {
                        record.slack.reference = Some(reference.clone());
                    }
                    if record.slack.reference.is_some() || error.is_some() {
                        record.slack.post_started_at = None;
                    }
                    record.slack.delivered_version = record.slack.delivered_version.max(version);
                    if action.is_some() {
                        record.slack.last_digest = Some(digest.clone());
                        record.slack.deliveries += 1;
                    }
                    record.slack.last_error = error.clone();
                    if record.commits.is_none() {
                        record.commits = fetched.clone();
                    }
                    if record.slack.lease.as_ref().is_some_and(|l| l.owner == me) {
                        record.slack.lease = None;
                    }
                    (true, ())
                })
            },
            |err| match err {
                StoreError::Corrupt { .. } => Retry::Never,
                _ => Retry::Backoff,
            },
        )
        .await;
        let record = match finalize {
            Ok(((), record)) => record,
            Err(err) => {
                // The post marker stays: the next attempt looks for the message first.
                tracing::error!(build = %key, error = format!("{err:#}"), "cannot record the delivered message");
                return (Outcome::RetryAfter(Duration::from_secs(5)), sent);
            }
        };
        if let (Some(reference), Some(action)) = (&reference, action) {
            self.publish_delivered(
                &record,
                v1::NotificationChannel::Slack,
                reference.to_string(),
                action,
                &["slack", key, &record.slack.deliveries.to_string()],
            )
            .await;
        }
        if record.chat_dirty() {
            (Outcome::Again, sent)
        } else {
            (Outcome::Done, sent)
        }
    }

    async fn release_lease(&self, key: &str) {
        let me = &self.instance;
        let _ = self
            .store
            .modify(key, |record| {
                if record.slack.lease.as_ref().is_some_and(|l| &l.owner == me) {
                    record.slack.lease = None;
                    (true, ())
                } else {
                    (false, ())
                }
            })
            .await;
    }

    async fn publish_delivered(
        &self,
        record: &BuildRecord,
        channel: v1::NotificationChannel,
        reference: String,
        action: &str,
        id_parts: &[&str],
    ) {
        let chain = record.view.chain.chain();
        let mut parts = vec!["notification.delivered"];
        parts.extend_from_slice(id_parts);
        parts.push(action);
        let view = &record.view;
        let envelope = chain.envelope(
            chain.derive_id(&parts),
            Payload::NotificationDelivered(v1::NotificationDelivered {
                channel: channel as i32,
                build: Some(v1::BuildRef {
                    build_id: view.build_id.clone(),
                    build_request_id: view.build_request_id.clone(),
                    repository: view.repository.clone(),
                    commit: view.commit.clone(),
                    architecture: view
                        .architecture
                        .map_or(v1::Architecture::Unspecified, |a| a.to_proto())
                        as i32,
                    backend: view.backend.clone(),
                    project: view.project.clone(),
                    region: view.region.clone(),
                    log_url: view.log_url.clone(),
                }),
                reference,
                action: action.to_owned(),
            }),
        );
        if let Err(err) = self.publisher.publish(&envelope).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot record notification delivered"
            );
        }
    }

    /// Writes commit statuses one at a time, newest state per (commit, context).
    async fn status_worker(self: Arc<Self>) {
        while let Some((status_key, mut pending)) = self.status_queue.pop(&self.shutdown).await {
            self.metrics.status_queue.dec();
            {
                let mut recent = self
                    .recent_statuses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if recent.len() >= MAX_RECENT_STATUSES {
                    recent.clear();
                }
                recent.insert(status_key.clone(), pending.status.clone());
            }
            match self.statuses.write(&pending.status).await {
                Ok(()) => {
                    self.metrics.status("written");
                    bump(&self.stats.statuses_written);
                    self.mark_status_written(&pending).await;
                }
                Err(StatusError::Permanent(reason)) => {
                    self.metrics.status("rejected");
                    tracing::error!(
                        repository = %pending.status.repository,
                        commit = %pending.status.sha,
                        reason,
                        "commit status rejected"
                    );
                    self.mark_status_written(&pending).await;
                }
                Err(StatusError::Transient(reason)) => {
                    self.metrics.status("failed");
                    self.recent_statuses
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&status_key);
                    pending.attempts += 1;
                    let delay = Backoff {
                        initial: Duration::from_secs(1),
                        max: MAX_RETRY_DELAY,
                        max_attempts: u32::MAX,
                    }
                    .delay(pending.attempts);
                    tracing::warn!(reason, ?delay, "commit status write failed; will retry");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    self.metrics.status_queue.inc();
                    // Back at the front, unless a newer state arrived meanwhile.
                    self.status_queue
                        .push_front(status_key, pending, |newer, mut older| {
                            older.superseded.clear();
                            newer.superseded.push(older.build_key);
                        });
                }
            }
        }
    }

    /// Records the written status on its build, and on the builds whose older states it
    /// superseded (so a restart does not write those stale states again).
    async fn mark_status_written(&self, pending: &PendingStatus) {
        let statuses = &self.config.statuses;
        let written = &pending.status;
        let mut builds = vec![pending.build_key.clone()];
        builds.extend(pending.superseded.iter().cloned());
        for key in builds {
            let own = key == pending.build_key;
            let result = self
                .store
                .modify(&key, |record| {
                    record.status.written = if own {
                        Some(written.clone())
                    } else {
                        desired_status(statuses, &record.view).or_else(|| Some(written.clone()))
                    };
                    (true, ())
                })
                .await;
            match result {
                Ok(((), record)) if own => {
                    self.publish_delivered(
                        &record,
                        v1::NotificationChannel::GithubStatus,
                        written.context.clone(),
                        written.state.as_str(),
                        &["status", &key, &written.description],
                    )
                    .await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(build = %key, error = format!("{err:#}"), "cannot record the written status");
                }
            }
        }
    }
}
