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
//! ([`prx_ci_shared::notice::view`]) is idempotent and monotonic, so redeliveries and late events are harmless.
//!
//! # Pace and coalescing
//! Each channel has one queue: a FIFO of build keys in which a key already waiting is not
//! queued again. Its worker waits for the pace (`[notifier.slack] min_interval`, Slack's ~1
//! message per second per channel) *before* it takes the next build, loads the newest record
//! and renders it, so every event that arrived meanwhile goes out in one call. A rendering
//! identical to the last one sent is not sent. 100 builds finishing in the same second are 100 calls, one
//! per build, drained at the pace, however many events each build had.
//! Commit statuses go through one queue keyed by (repository, commit, context) where a newer
//! state replaces a waiting older one, and the GitHub sink spends a token bucket sized to
//! GitHub's content-creation limits (80/minute, 500/hour by default). In GitHub App mode the
//! notifier writes check runs instead ([`Notifier::with_check_runs`]): one queue of build keys
//! (a build waiting is not queued again, its worker writes the newest record's run), the check
//! run sink spending its own bucket (`[notifier.checks]`).
//!
//! [`crate::handler`] folds the events into records, [`crate::chat_delivery`] and
//! [`crate::status_delivery`] and [`crate::check_delivery`] deliver them. This module only wires them together.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1;
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::{CancellationToken, EventPublisher, Runtime};
use tokio::task::JoinSet;

use crate::chat::{ChatSink, ShadowChatSink};
use crate::chat_delivery::ChannelQueue;
use crate::check_delivery::PendingCheckRun;
use crate::commits::CommitSource;
use crate::config::NotifierConfig;
use crate::github_checks::{CheckRunSink, ShadowCheckRunSink};
use crate::github_status::{ShadowStatusSink, StatusSink};
use crate::handler::EventHandler;
use crate::metrics::{DeliveryStats, Metrics};
use crate::notification_record::NotificationRecord;
use crate::notification_store::NotificationStore;
use crate::queue::CoalescingQueue;
use crate::status_delivery::{PendingStatus, StatusKey};
use prx_ci_shared::notice::commit_status::CommitStatus;

/// The durable consumer (`deploy/nats/consumers/notifier.json`).
pub const CONSUMER: &str = "notifier";

/// The notifier service.
pub struct Notifier {
    rt: Runtime,
    config: NotifierConfig,
    chat: Arc<dyn ChatSink>,
    statuses: Arc<dyn StatusSink>,
    checks: Option<Arc<dyn CheckRunSink>>,
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
            .field("checks", &self.checks)
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
        // Shadow mode branches here: the sinks handed in (Slack, GitHub) are never called;
        // everything else (rendering, dedup records, events) runs as live.
        let (chat, statuses): (Arc<dyn ChatSink>, Arc<dyn StatusSink>) = if config.mode.is_shadow()
        {
            (Arc::new(ShadowChatSink), Arc::new(ShadowStatusSink))
        } else {
            (chat, statuses)
        };
        Ok(Self {
            rt,
            config,
            chat,
            statuses,
            checks: None,
            commits,
            metrics: Metrics::register(registry),
            stats: DeliveryStats::default(),
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// GitHub App mode: check runs through `checks` (one per build and architecture) replace
    /// the commit statuses, which are then not written. In shadow mode nothing is written
    /// (the runs are rendered and recorded as live).
    #[must_use]
    pub fn with_check_runs(mut self, checks: Arc<dyn CheckRunSink>) -> Self {
        self.checks = Some(if self.config.mode.is_shadow() {
            Arc::new(ShadowCheckRunSink)
        } else {
            checks
        });
        self
    }

    /// Counters of what this instance did (shared; read them while it runs).
    pub fn stats(&self) -> DeliveryStats {
        self.stats.clone()
    }

    /// Consumes build events until `shutdown` is cancelled, delivering messages and statuses.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = NotificationStore::open(&self.rt.js, &self.config.bucket).await?;
        let definitions = prx_ci_shared::bus::nats::Definitions::embedded()?;
        let settings = ConsumerSettings::from_definition(definitions.consumer(CONSUMER)?)
            .with_concurrency(self.config.concurrency);
        let workers = shutdown.child_token();
        let core = Arc::new(Core {
            store,
            chat: self.chat,
            statuses: self.statuses,
            checks: self.checks,
            commits: self.commits,
            publisher: self.rt.publisher.clone(),
            metrics: self.metrics,
            stats: self.stats,
            instance: self.instance,
            channels: Mutex::new(HashMap::new()),
            status_queue: CoalescingQueue::default(),
            recent_statuses: Mutex::new(HashMap::new()),
            check_queue: CoalescingQueue::default(),
            check_run_polls: Mutex::new(HashSet::new()),
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
            async move { core.check_run_worker().await }
        });
        core.spawn({
            let core = core.clone();
            async move { core.requeue_dirty().await }
        });
        let handler = Arc::new(EventHandler::new(core.clone()));
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

/// What the handler and the delivery workers share.
pub(crate) struct Core {
    pub(crate) config: NotifierConfig,
    pub(crate) store: NotificationStore,
    pub(crate) chat: Arc<dyn ChatSink>,
    pub(crate) statuses: Arc<dyn StatusSink>,
    /// App mode: the check-run sink (statuses are then not written).
    pub(crate) checks: Option<Arc<dyn CheckRunSink>>,
    pub(crate) commits: Option<Arc<dyn CommitSource>>,
    pub(crate) publisher: EventPublisher,
    pub(crate) metrics: Metrics,
    pub(crate) stats: DeliveryStats,
    /// This replica's lease owner name.
    pub(crate) instance: String,
    /// Each chat channel's queue of builds (its worker is spawned with it).
    pub(crate) channels: Mutex<HashMap<String, Arc<ChannelQueue>>>,
    pub(crate) status_queue: CoalescingQueue<StatusKey, PendingStatus>,
    /// The status last handed to GitHub per (commit, context), so an event arriving while a
    /// write is in flight does not queue the same state again.
    pub(crate) recent_statuses: Mutex<HashMap<StatusKey, CommitStatus>>,
    /// Builds whose check run waits to be written.
    pub(crate) check_queue: CoalescingQueue<String, PendingCheckRun>,
    /// Builds whose run another replica holds, with a look again scheduled (one per build).
    pub(crate) check_run_polls: Mutex<HashSet<String>>,
    tasks: Mutex<JoinSet<()>>,
    pub(crate) shutdown: CancellationToken,
}

impl Core {
    /// Runs `task` until it ends; [`Notifier::run`] waits for every task at shutdown. Tasks
    /// already ended (retries and polls waited out) are reaped here, so the set stays small.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// The chat channel of a build's messages.
    pub(crate) fn channel_for(&self, record: &NotificationRecord) -> String {
        self.config.channel_for(&record.view.repository).to_owned()
    }

    /// Publishes a `NotificationDelivered` event; a failure is logged, never retried (the
    /// event is a record for operators, the delivery itself happened).
    pub(crate) async fn publish_delivered(&self, envelope: &v1::Envelope) {
        if let Err(err) = self.publisher.publish(envelope).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot record notification delivered"
            );
        }
    }
}
