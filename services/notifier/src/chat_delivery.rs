//! Slack delivery: one queue per chat channel, drained at the pace, posting a build's message
//! once and updating it in place.
//!
//! # Never posting twice
//! Replicas take a per-build lease in the record before delivering (a second replica waits).
//! Before the first `chat.postMessage` the record gets a post marker (`post_started_at`),
//! stored *before* the call; the message `ts` is stored right after it and the marker
//! cleared. A record found with a marker and no `ts` (the post may have happened but storing
//! its `ts` failed, Slack answered it 5xx / `internal_error` / `fatal_error`, or the process
//! died in between) is never posted blindly: the notifier first
//! reads the channel's recent history (`conversations.history`, `include_all_metadata`) for the
//! message carrying the build's key in its metadata (every post has
//! `metadata.event_type = prx_ci_build`, `event_payload.build = <key>`) and adopts it.
//! Residual risk: when that lookup is impossible (no `channels:history`/`groups:history`
//! scope, a channel configured by name instead of id, Slack down) the notifier posts again
//! rather than stay silent, so a lost `ts` *and* a failed lookup give a second message; and a
//! lease that expires while its holder is still blocked in Slack's retries (longer than
//! `[notifier] lease`) can let a second replica post concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prx_ci_proto::v1;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::retry::{self, Backoff, Retry};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::chat::{ChatError, MessageRef, OutgoingMessage};
use crate::metrics::bump;
use crate::notification_record::{ChatDelivery, Claim, NotificationRecord};
use crate::queue::CoalescingQueue;
use crate::service::Core;
use prx_ci_shared::notice::render::CommitsCache;
use prx_ci_shared::notice::render::{self, SlackMessage};

/// How far before a post marker the recovery looks for the message.
const FIND_MARGIN: Duration = Duration::from_secs(60);
/// How often a build leased by another replica is looked at again.
const LEASE_POLL: Duration = Duration::from_secs(5);
/// Longest wait before a failed delivery is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// One chat channel's queue of builds whose message needs delivering.
#[derive(Debug, Default)]
pub(crate) struct ChannelQueue {
    queue: CoalescingQueue<String, ()>,
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

/// A message sent: where it is and whether it was `posted` or `updated`.
type Sent = Option<(MessageRef, &'static str)>;

impl Core {
    /// `channel`'s queue, its worker started on first use.
    fn channel_queue(self: &Arc<Self>, channel: &str) -> Arc<ChannelQueue> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queue) = channels.get(channel) {
            return queue.clone();
        }
        let queue = Arc::new(ChannelQueue::default());
        channels.insert(channel.to_owned(), queue.clone());
        drop(channels);
        let core = self.clone();
        let worker_queue = queue.clone();
        let channel = channel.to_owned();
        self.spawn(async move { core.channel_worker(channel, worker_queue).await });
        queue
    }

    /// Queues build `key`'s message on `channel` (a build already waiting is not queued again).
    pub(crate) fn enqueue_chat(self: &Arc<Self>, channel: &str, key: &str) {
        bump(&self.stats.chat_requested);
        let fresh = self
            .channel_queue(channel)
            .queue
            .push(key.to_owned(), (), |_, ()| {});
        if fresh {
            self.metrics.chat_queue.inc();
        } else {
            self.metrics.chat("coalesced");
        }
    }

    /// Delivers one channel's builds, at most one chat call per `min_interval`.
    async fn channel_worker(self: Arc<Self>, channel: String, queue: Arc<ChannelQueue>) {
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
            let Some((key, ())) = queue.queue.pop(&self.shutdown).await else {
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

    /// One delivery attempt of build `key`'s newest rendering: take the lease, fetch the push's
    /// commits once, render, send unless identical to the last sent, record the outcome.
    /// Returns the outcome and whether a chat call was made (for the pace).
    async fn deliver(&self, channel: &str, key: &str) -> (Outcome, bool) {
        let (earlier_post, record) = match self.claim(key).await {
            Ok(claimed) => claimed,
            Err(outcome) => return (outcome, false),
        };
        let fetched = self.fetch_commits(key, &record).await;
        let commits = fetched.as_ref().or(record.commits.as_ref());
        let message = render::render(&record.view, commits, &self.config.links);
        let digest = message.digest();
        let outgoing = self.outgoing(channel, key, message);

        let mut sent = false;
        let result = self
            .send(key, &record, earlier_post, &digest, &outgoing, &mut sent)
            .await;
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
        let delivery = ChatDelivery {
            reference,
            action,
            error,
            version: record.view.version,
            digest,
            fetched,
        };
        let record = match self.record_delivery(key, &delivery).await {
            Some(record) => record,
            // The post marker stays: the next attempt looks for the message first.
            None => return (Outcome::RetryAfter(Duration::from_secs(5)), sent),
        };
        if let (Some(reference), Some(action)) = (&delivery.reference, delivery.action) {
            let event = record.delivered_event(
                v1::NotificationChannel::Slack,
                reference.to_string(),
                action,
                &["slack", key, &record.slack.deliveries.to_string()],
                self.config.mode.is_shadow(),
            );
            self.publish_delivered(&event).await;
        }
        if record.chat_dirty() {
            (Outcome::Again, sent)
        } else {
            (Outcome::Done, sent)
        }
    }

    /// Takes the build's lease and, before a first post, leaves the post marker. `Ok`: the
    /// earlier post marker, if any, and the record; `Err`: what to do instead of delivering.
    async fn claim(
        &self,
        key: &str,
    ) -> Result<(Option<OffsetDateTime>, NotificationRecord), Outcome> {
        let now = OffsetDateTime::now_utc();
        let until = now + self.config.lease;
        let me = &self.instance;
        match self
            .store
            .modify(key, |record| record.claim_lease(me, now, until))
            .await
        {
            Ok((Claim::Claimed { earlier_post }, record)) => Ok((earlier_post, record)),
            Ok((Claim::Clean, _)) => Err(Outcome::Done),
            Ok((Claim::Busy(busy), _)) => {
                // Another replica delivers it; it also picks up what changed meanwhile. Look
                // again soon in case it died.
                let wait = Duration::try_from(busy)
                    .unwrap_or(LEASE_POLL)
                    .min(LEASE_POLL);
                Err(Outcome::RetryAfter(wait))
            }
            Err(err) => {
                tracing::warn!(build = %key, error = format!("{err:#}"), "cannot take delivery lease");
                Err(Outcome::RetryAfter(Duration::from_secs(1)))
            }
        }
    }

    /// The push's commits, when the record has none yet and a source is configured (a failed
    /// comparison is cached too: the message says the list is unavailable).
    async fn fetch_commits(&self, key: &str, record: &NotificationRecord) -> Option<CommitsCache> {
        if record.commits.is_some() {
            return None;
        }
        let (source, (before, after)) = (self.commits.as_ref()?, render::push_range(&record.view)?);
        let repo = record
            .view
            .var(env::REPO)
            .unwrap_or(&record.view.repository);
        Some(
            match source
                .compare(repo, before, after, self.config.max_commits)
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
        )
    }

    /// Sends `outgoing`: updates the stored message unless the content is unchanged (`Ok(None)`),
    /// adopts the message of an unconfirmed post when it can be found, else posts. `sent` tells
    /// whether a chat call was made, whatever the result.
    async fn send(
        &self,
        key: &str,
        record: &NotificationRecord,
        earlier_post: Option<OffsetDateTime>,
        digest: &str,
        outgoing: &OutgoingMessage,
        sent: &mut bool,
    ) -> Result<Sent, ChatError> {
        if let Some(reference) = &record.slack.reference {
            if record.slack.last_digest.as_deref() == Some(digest) {
                return Ok(None);
            }
            *sent = true;
            match self.chat.update(reference, outgoing).await {
                Ok(()) => return Ok(Some((reference.clone(), "updated"))),
                Err(ChatError::MessageGone(reason)) => {
                    tracing::warn!(build = %key, reason, "message gone; posting a new one");
                }
                Err(err) => return Err(err),
            }
        } else if let Some(marker) = earlier_post {
            // A post may have happened without its reference being stored: look first.
            *sent = true;
            match self
                .chat
                .find(&outgoing.channel, key, marker - FIND_MARGIN)
                .await
            {
                Ok(Some(found)) => {
                    tracing::info!(build = %key, reference = %found, "found the message of an unconfirmed post");
                    match self.chat.update(&found, outgoing).await {
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
        *sent = true;
        let reference = self.chat.post(outgoing).await?;
        Ok(Some((reference, "posted")))
    }

    /// Stores the delivery's outcome (retried with backoff: the message went out, the record
    /// must say so). `None` when it could not be stored.
    async fn record_delivery(
        &self,
        key: &str,
        delivery: &ChatDelivery,
    ) -> Option<NotificationRecord> {
        let me = &self.instance;
        let stored = retry::retry(
            &Backoff::default(),
            |_| {
                self.store
                    .modify(key, |record| record.mark_delivered(delivery, me))
            },
            |err| {
                if err.is_transient() {
                    Retry::Backoff
                } else {
                    Retry::Never
                }
            },
        )
        .await;
        match stored {
            Ok(((), record)) => Some(record),
            Err(err) => {
                tracing::error!(build = %key, error = format!("{err:#}"), "cannot record the delivered message");
                None
            }
        }
    }

    /// Drops this replica's lease after a failed attempt.
    async fn release_lease(&self, key: &str) {
        let me = &self.instance;
        let _ = self
            .store
            .modify(key, |record| record.release_lease(me))
            .await;
    }
}
