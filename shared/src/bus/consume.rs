//! The typed consumer loop: durable pull, explicit ack, bounded redelivery with backoff, and a
//! dead-letter path. A message that cannot be decoded, fails permanently, or keeps failing is
//! parked on `prx.parked.<consumer>` with its error and acknowledged (terminated), so it never
//! blocks the messages behind it. A message is only ever acknowledged after its handler
//! succeeded or after it was safely parked.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::{Envelope, MessageParked, envelope::Payload};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::envelope::{Chain, derived_event_id};
use crate::bus::nats::ConsumerDefinition;
use crate::bus::publish::EventPublisher;
use crate::bus::subject;
use crate::telemetry;
use crate::telemetry::metrics::{ConsumerLabels, ConsumerMetrics};

/// One message handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub envelope: Envelope,
    pub subject: String,
    pub stream: String,
    /// Position in the stream (for webhooks: the push sequence).
    pub stream_sequence: u64,
    /// How many times this message has been delivered (1 the first time).
    pub delivered: u64,
    pub published: OffsetDateTime,
    pub headers: Option<HeaderMap>,
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (network, outage, throttling): redelivered with backoff, parked after
    /// the consumer's `max_deliver`.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed (bad input): parked at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn transient(err: impl Into<anyhow::Error>) -> Self {
        Self::Transient(err.into())
    }

    pub fn permanent(err: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(err.into())
    }
}

/// Handles the messages of one consumer.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Which of a consumer's messages may be handled at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Any of them (with concurrency 1: one at a time, in stream order).
    Any,
    /// Those of different subjects. The messages of one subject are handled one at a time, in
    /// stream order: each subject goes to one of `concurrency` strands, which handle their
    /// messages in turn. A message that is retried (nak with a delay) comes back later, behind
    /// newer ones, as with concurrency 1.
    PerSubject,
}

/// How one consumer loop runs.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub stream: String,
    pub durable: String,
    /// Messages handled at once (1 keeps stream order; see `order` for more).
    pub concurrency: usize,
    /// Which messages may be handled at the same time.
    pub order: Order,
    /// Deliveries before a transiently failing message is parked.
    pub max_deliver: u64,
    /// Delay before redelivery after the n-th failure (the last entry repeats).
    pub backoff: Vec<Duration>,
    /// The consumer's ack wait; progress is reported at half of it while a handler runs.
    pub ack_wait: Duration,
}

impl ConsumerSettings {
    /// Settings from a `deploy/nats/consumers/*.json` definition, concurrency 1.
    pub fn from_definition(definition: &ConsumerDefinition) -> Self {
        let backoff = if definition.config.backoff.is_empty() {
            vec![Duration::from_secs(1)]
        } else {
            definition.config.backoff.clone()
        };
        Self {
            stream: definition.stream.clone(),
            durable: definition.durable_name().to_owned(),
            concurrency: 1,
            order: Order::Any,
            max_deliver: u64::try_from(definition.config.max_deliver)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(5),
            backoff,
            ack_wait: if definition.config.ack_wait.is_zero() {
                Duration::from_secs(30)
            } else {
                definition.config.ack_wait
            },
        }
    }

    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Handles the messages of one subject one at a time, in stream order, and those of
    /// different subjects at once (up to the concurrency).
    pub fn one_at_a_time_per_subject(mut self) -> Self {
        self.order = Order::PerSubject;
        self
    }

    fn backoff_for(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        *self
            .backoff
            .get(index)
            .or(self.backoff.last())
            .unwrap_or(&Duration::from_secs(1))
    }
}

/// A consumer loop without replays (what a replay itself runs; [`super::run_consumer`] runs
/// one next to its replays).
pub(crate) async fn run_consumer_only<H: Handler>(
    js: jetstream::Context,
    publisher: EventPublisher,
    settings: ConsumerSettings,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let consumer: PullConsumer = js
        .get_stream(&settings.stream)
        .await
        .with_context(|| format!("cannot open stream {}", settings.stream))?
        .get_consumer(&settings.durable)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open consumer {}: {e}", settings.durable))?;
    // The server's ack wait is the one that counts: progress is reported within it. It can
    // differ from the definition's: a consumer created with a `backoff` (by hand, or by a
    // version before provisioning stopped sending it) has the backoff's first entry instead.
    let mut settings = settings;
    let server_ack_wait = consumer.cached_info().config.ack_wait;
    if !server_ack_wait.is_zero() {
        settings.ack_wait = server_ack_wait;
    }
    let ctx = Arc::new(LoopContext {
        publisher,
        settings,
        handler,
        metrics,
    });
    let strands = Strands::start(&ctx, &shutdown);
    // Messages held at once (pulled and being handled). With strands, each also queues up to
    // [`STRAND_QUEUE`] messages of its subjects while it is busy.
    let permits = Arc::new(Semaphore::new(ctx.settings.concurrency));
    let mut tasks = JoinSet::new();
    tracing::info!(consumer = %ctx.settings.durable, stream = %ctx.settings.stream, "consumer started");

    'outer: while !shutdown.is_cancelled() {
        let batch = u32::try_from(ctx.settings.concurrency * 2)
            .unwrap_or(u32::MAX)
            .max(1);
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch as usize)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(consumer = %ctx.settings.durable, error = %err, "cannot pull; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            // Take a permit before pulling so no more than `concurrency` messages are held.
            let permit = tokio::select! {
                () = shutdown.cancelled() => break 'outer,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closes"),
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break 'outer,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => match &strands {
                    Some(strands) => {
                        // The permit only bounds what is pulled at once; the strand's queue
                        // bounds what waits (a full one holds the loop until it has room).
                        drop(permit);
                        tokio::select! {
                            () = shutdown.cancelled() => break 'outer,
                            () = strands.send(message) => {}
                        }
                    }
                    None => {
                        let ctx = ctx.clone();
                        tasks.spawn(async move {
                            ctx.process(message).await;
                            drop(permit);
                        });
                    }
                },
                Some(Err(err)) => {
                    // Missed heartbeats and similar: the stream recovers by itself.
                    tracing::debug!(consumer = %ctx.settings.durable, error = %err, "pull stream error");
                }
                None => break,
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(err) = done {
                    tracing::error!(error = %err, "message task panicked");
                }
            }
        }
    }
    if let Some(strands) = strands {
        strands.stop().await;
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done {
            tracing::error!(error = %err, "message task panicked");
        }
    }
    tracing::info!(consumer = %ctx.settings.durable, "consumer stopped");
    Ok(())
}

/// Messages a strand queues behind the one it is handling. Small, so that none waits long
/// enough to reach the ack wait: queued messages get no progress reports.
const STRAND_QUEUE: usize = 8;

/// The strands of [`Order::PerSubject`]: one task each, handling its messages in turn.
struct Strands {
    senders: Vec<mpsc::Sender<jetstream::Message>>,
    tasks: JoinSet<()>,
}

impl Strands {
    /// The strands `ctx`'s settings ask for (none unless [`Order::PerSubject`] with a
    /// concurrency above 1). A strand stops at `shutdown` after the message it is handling;
    /// what it still queues is not acknowledged, so the server delivers it again.
    fn start<H: Handler>(ctx: &Arc<LoopContext<H>>, shutdown: &CancellationToken) -> Option<Self> {
        if ctx.settings.order != Order::PerSubject || ctx.settings.concurrency == 1 {
            return None;
        }
        let mut senders = Vec::with_capacity(ctx.settings.concurrency);
        let mut tasks = JoinSet::new();
        for _ in 0..ctx.settings.concurrency {
            let (sender, mut queue) = mpsc::channel::<jetstream::Message>(STRAND_QUEUE);
            senders.push(sender);
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    let next = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        next = queue.recv() => next,
                    };
                    let Some(message) = next else { break };
                    // A handler's panic is a failure of its message (`process`), not the end
                    // of the strand.
                    ctx.process(message).await;
                }
            });
        }
        Some(Self { senders, tasks })
    }

    /// Queues `message` in the strand of its subject, waiting while that queue is full.
    async fn send(&self, message: jetstream::Message) {
        let strand = strand_of(&message.subject, self.senders.len());
        // A strand ends only at shutdown, after which nothing is sent.
        let _ = self.senders[strand].send(message).await;
    }

    /// Waits for every strand to finish the message it is handling.
    async fn stop(mut self) {
        self.senders.clear();
        while let Some(done) = self.tasks.join_next().await {
            if let Err(err) = done {
                tracing::error!(error = %err, "consumer strand panicked");
            }
        }
    }
}

/// The strand (of `strands`) that handles the messages of `subject`.
pub fn strand_of(subject: &str, strands: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    subject.hash(&mut hasher);
    usize::try_from(hasher.finish() % u64::try_from(strands).unwrap_or(1)).unwrap_or(0)
}

struct LoopContext<H> {
    publisher: EventPublisher,
    settings: ConsumerSettings,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
}

impl<H: Handler> LoopContext<H> {
    async fn process(&self, message: jetstream::Message) {
        let durable = self.settings.durable.as_str();
        let (stream, stream_sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream.to_owned(),
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1),
                info.published,
            ),
            Err(err) => {
                tracing::error!(consumer = durable, error = %err, "message without JetStream metadata; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let envelope = match Envelope::decode(message.payload.clone()) {
            Ok(envelope) if envelope.payload.is_some() => envelope,
            Ok(_) => {
                let err = anyhow::anyhow!("envelope has no payload (unknown event kind?)");
                self.park(&message, &stream, stream_sequence, delivered, None, &err)
                    .await;
                return;
            }
            Err(err) => {
                let err = anyhow::Error::new(err).context("cannot decode envelope");
                self.park(&message, &stream, stream_sequence, delivered, None, &err)
                    .await;
                return;
            }
        };
        let span = tracing::info_span!(
            "handle",
            consumer = durable,
            event_id = %envelope.event_id,
            correlation_id = %envelope.correlation_id,
            subject = %message.subject,
            stream_sequence,
            delivered,
        );
        let trace = telemetry::continue_trace_from_headers(&span, message.headers.as_ref());
        let delivery = Delivery {
            envelope: envelope.clone(),
            subject: message.subject.to_string(),
            stream: stream.clone(),
            stream_sequence,
            delivered,
            published,
            headers: message.headers.clone(),
        };
        let started = Instant::now();
        // A panicking handler fails its message like a transient error (retried with backoff,
        // parked after `max_deliver`), so the message is not left to the ack wait.
        let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            telemetry::in_trace(trace, self.handler.handle(delivery)),
        ));
        let result = self
            .with_progress(&message, async {
                handled.await.unwrap_or_else(|_| {
                    Err(HandlerError::transient(anyhow::anyhow!(
                        "the handler panicked"
                    )))
                })
            })
            .instrument(span.clone())
            .await;
        self.metrics
            .handle_seconds
            .get_or_create(&ConsumerLabels {
                consumer: durable.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        let _entered = span.enter();
        match result {
            Ok(()) => {
                if let Err(err) = message.ack().await {
                    // The handler is idempotent; a lost ack means one harmless redelivery.
                    tracing::warn!(error = %err, "cannot ack");
                }
                self.metrics.count(durable, "acked");
            }
            Err(HandlerError::Transient(err)) if delivered < self.settings.max_deliver => {
                let delay = self.settings.backoff_for(delivered);
                tracing::warn!(
                    error = format!("{err:#}"),
                    ?delay,
                    "handler failed; will retry"
                );
                if let Err(ack_err) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %ack_err, "cannot nak; the ack wait will redeliver");
                }
                self.metrics.count(durable, "retried");
            }
            Err(HandlerError::Transient(err) | HandlerError::Permanent(err)) => {
                drop(_entered);
                let park = self.park(
                    &message,
                    &stream,
                    stream_sequence,
                    delivered,
                    Some(&envelope),
                    &err,
                );
                telemetry::in_trace(trace, park).instrument(span).await;
            }
        }
    }

    /// Runs `work`, telling the server the message is still being worked on at half the ack
    /// wait, so slow handlers are not redelivered behind their own back.
    async fn with_progress<F: Future<Output = Result<(), HandlerError>>>(
        &self,
        message: &jetstream::Message,
        work: F,
    ) -> Result<(), HandlerError> {
        let period = (self.settings.ack_wait / 2).max(Duration::from_millis(100));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticker.tick() => {
                    if let Err(err) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %err, "cannot report progress");
                    }
                }
            }
        }
    }

    async fn park(
        &self,
        message: &jetstream::Message,
        stream: &str,
        stream_sequence: u64,
        delivered: u64,
        envelope: Option<&Envelope>,
        error: &anyhow::Error,
    ) {
        let durable = &self.settings.durable;
        let headers: BTreeMap<String, String> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, v)| Some((k.to_string(), v.first()?.as_str().to_owned())))
            .collect();
        let chain = envelope.map(Chain::caused_by).unwrap_or_default();
        let event_id =
            derived_event_id(&format!("{stream}:{stream_sequence}"), &["parked", durable]);
        let parked = chain.envelope(
            event_id,
            Payload::MessageParked(MessageParked {
                consumer: durable.clone(),
                stream: stream.to_owned(),
                stream_sequence,
                subject: message.subject.to_string(),
                data: message.payload.to_vec(),
                error: format!("{error:#}"),
                deliveries: u32::try_from(delivered).unwrap_or(u32::MAX),
                headers: headers.into_iter().collect(),
            }),
        );
        match self
            .publisher
            .publish_to(subject::parked_subject(durable), &parked)
            .await
        {
            Ok(_) => {
                tracing::error!(
                    consumer = %durable,
                    stream,
                    stream_sequence,
                    error = format!("{error:#}"),
                    "message parked"
                );
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %err, "cannot terminate parked message");
                }
                self.metrics.count(durable, "parked");
            }
            Err(err) => {
                // Not parked, so not acknowledged: it comes back later.
                tracing::error!(error = %err, "cannot park message; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.settings.backoff_for(delivered))))
                    .await;
                self.metrics.count(durable, "retried");
            }
        }
    }
}
