//! Replays: re-delivering a range of a stream, in order, to one durable consumer.
//!
//! JetStream cannot move an existing durable consumer back (its deliver policy and start are
//! fixed at creation, and the services re-provision their consumers from `deploy/nats/` at every
//! start), and re-publishing the range would duplicate it for every other consumer (or be
//! dropped by the duplicate window). So a replay is a second, temporary durable on the same
//! stream: `<consumer>-replay-<n>`, a copy of the target's configuration starting at the
//! range's first sequence, filtered to the range's subjects, with the range's last sequence in
//! its metadata. Every consumer loop ([`crate::bus::run_consumer`]) runs a [`ReplayRunner`]
//! next to itself with the same handler, so every service supports replays: it picks up replay consumers meant for it, feeds their messages to
//! the handler in order (concurrency 1), acknowledges without handling anything past the end of
//! the range, and deletes the replay consumer once the range is acknowledged. Handlers see the
//! original stream sequences, and their derived event ids are the original ones, so effects
//! already applied are not applied twice. See docs/operations.md.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::consume::{ConsumerSettings, Delivery, Handler, HandlerError, run_consumer_only};
use crate::bus::nats::ConsumerDefinition;
use crate::bus::publish::EventPublisher;
use crate::telemetry::metrics::ConsumerMetrics;

/// Metadata key naming the consumer a replay is for.
pub const TARGET_KEY: &str = "prx-replay-target";
/// Metadata key holding the last stream sequence of the range.
pub const LAST_SEQUENCE_KEY: &str = "prx-replay-last-sequence";
/// A replay consumer nobody pulls from for this long is removed by the server.
pub const REPLAY_INACTIVE_THRESHOLD: Duration = Duration::from_secs(24 * 3600);
/// How often a running replay checks whether its range has been acknowledged.
const COMPLETION_POLL: Duration = Duration::from_millis(200);

/// The name prefix of replay consumers of `consumer`.
pub fn replay_prefix(consumer: &str) -> String {
    format!("{consumer}-replay-")
}

/// Whether every subject matching `subject` also matches `filter` (NATS wildcards `*`, `>`).
pub fn subject_within(subject: &str, filter: &str) -> bool {
    let s: Vec<&str> = subject.split('.').collect();
    let f: Vec<&str> = filter.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        if *ft == ">" {
            return s.len() > i;
        }
        let Some(st) = s.get(i) else { return false };
        match (*ft, *st) {
            (">", _) => unreachable!(),
            (_, ">") => return false,
            ("*", _) => {}
            (_, "*") => return false,
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    s.len() == f.len()
}

/// The filters of a consumer configuration (empty = the whole stream).
pub fn filters_of(config: &consumer::pull::Config) -> Vec<String> {
    if !config.filter_subjects.is_empty() {
        config.filter_subjects.clone()
    } else if !config.filter_subject.is_empty() {
        vec![config.filter_subject.clone()]
    } else {
        Vec::new()
    }
}

/// The configuration of a replay consumer for `target`, starting at `first` and ending at
/// `last`, filtered to `filters`.
pub fn replay_config(
    target: &consumer::pull::Config,
    target_name: &str,
    name: &str,
    filters: Vec<String>,
    first: u64,
    last: u64,
) -> consumer::pull::Config {
    let mut config = target.clone();
    config.durable_name = Some(name.to_owned());
    config.name = None;
    config.description = Some(format!(
        "Replay of sequences {first}..={last} into {target_name}"
    ));
    config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
        start_sequence: first,
    };
    config.filter_subject = String::new();
    config.filter_subjects = filters;
    config.inactive_threshold = REPLAY_INACTIVE_THRESHOLD;
    config
        .metadata
        .insert(TARGET_KEY.into(), target_name.into());
    config
        .metadata
        .insert(LAST_SEQUENCE_KEY.into(), last.to_string());
    config
}

/// Passes messages up to the end of the range to the real handler; acknowledges the rest
/// unhandled.
struct Bounded<H> {
    inner: Arc<H>,
    last: u64,
}

impl<H: Handler> Handler for Bounded<H> {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        if delivery.stream_sequence > self.last {
            return Ok(());
        }
        self.inner.handle(delivery).await
    }
}

/// How often a consumer loop looks for replays meant for it.
pub const REPLAY_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the replays meant for one consumer of a service (see the module docs).
/// [`crate::bus::run_consumer`] starts one next to every consumer loop.
#[derive(Debug, Clone)]
pub struct ReplayRunner {
    js: jetstream::Context,
    publisher: EventPublisher,
    metrics: ConsumerMetrics,
    stream: String,
    consumer: String,
    poll_interval: Duration,
    /// The live consumer's retry schedule (its definition's `backoff`, which the server is not
    /// given, so a replay consumer copied from the server's configuration has none).
    backoff: Vec<Duration>,
}

impl ReplayRunner {
    pub fn new(
        js: jetstream::Context,
        publisher: EventPublisher,
        metrics: ConsumerMetrics,
        stream: &str,
        consumer: &str,
        poll_interval: Duration,
        backoff: Vec<Duration>,
    ) -> Self {
        Self {
            js,
            publisher,
            metrics,
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            poll_interval,
            backoff,
        }
    }

    /// Looks for replay consumers every poll interval and runs each to completion, until
    /// `shutdown`.
    pub async fn run<H: Handler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        let mut running: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        let prefix = replay_prefix(&self.consumer);
        loop {
            while let Some(done) = tasks.try_join_next() {
                match done {
                    Ok(name) => {
                        running.remove(&name);
                    }
                    Err(err) => tracing::error!(error = %err, "replay task panicked"),
                }
            }
            match self.replay_consumers(&prefix).await {
                Ok(found) => {
                    for (name, config) in found {
                        if running.insert(name.clone()) {
                            let this = self.clone();
                            let handler = handler.clone();
                            let shutdown = shutdown.clone();
                            tasks.spawn(async move {
                                this.run_one(&name, config, handler, shutdown).await;
                                name
                            });
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(consumer = %self.consumer, error = %err, "cannot list replay consumers");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn replay_consumers(
        &self,
        prefix: &str,
    ) -> anyhow::Result<Vec<(String, consumer::Config)>> {
        let stream = self.js.get_stream(&self.stream).await?;
        let mut infos = stream.consumers();
        let mut found = Vec::new();
        while let Some(info) = infos.next().await {
            let info = info?;
            if info.name.starts_with(prefix)
                && info.config.metadata.get(TARGET_KEY) == Some(&self.consumer)
            {
                found.push((info.name.clone(), info.config.clone()));
            }
        }
        Ok(found)
    }

    async fn run_one<H: Handler>(
        &self,
        name: &str,
        config: consumer::Config,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        let Some(last) = config
            .metadata
            .get(LAST_SEQUENCE_KEY)
            .and_then(|v| v.parse::<u64>().ok())
        else {
            tracing::warn!(replay = name, "replay consumer without an end; ignoring it");
            return;
        };
        let definition = ConsumerDefinition {
            stream: self.stream.clone(),
            config: consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                max_deliver: config.max_deliver,
                backoff: config.backoff.clone(),
                ack_wait: config.ack_wait,
                ..Default::default()
            },
        };
        let mut settings = ConsumerSettings::from_definition(&definition).with_concurrency(1);
        if definition.config.backoff.is_empty() && !self.backoff.is_empty() {
            settings.backoff = self.backoff.clone();
        }
        tracing::info!(replay = name, last, "replay started");
        let stop = shutdown.child_token();
        let consumer_loop = tokio::spawn(run_consumer_only(
            self.js.clone(),
            self.publisher.clone(),
            settings,
            Arc::new(Bounded {
                inner: handler,
                last,
            }),
            self.metrics.clone(),
            stop.clone(),
        ));
        let finished = loop {
            if self.acknowledged_up_to(name, last).await {
                break true;
            }
            tokio::select! {
                () = stop.cancelled() => break false,
                () = tokio::time::sleep(COMPLETION_POLL) => {}
            }
        };
        stop.cancel();
        let _ = consumer_loop.await;
        if finished {
            match self
                .js
                .delete_consumer_from_stream(name, &self.stream)
                .await
            {
                Ok(_) => tracing::info!(replay = name, "replay finished"),
                Err(err) => {
                    tracing::warn!(replay = name, error = %err, "cannot delete replay consumer")
                }
            }
        }
    }

    async fn acknowledged_up_to(&self, name: &str, last: u64) -> bool {
        let Ok(stream) = self.js.get_stream(&self.stream).await else {
            return false;
        };
        match stream.consumer_info(name).await {
            Ok(info) => info.ack_floor.stream_sequence >= last,
            Err(_) => false,
        }
    }
}

/// Deletes every replay consumer of `consumer` on `stream` (abandoned replays).
pub async fn cancel_replays(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<usize> {
    let handle = js.get_stream(stream).await?;
    let prefix = replay_prefix(consumer);
    let mut names = handle.consumer_names();
    let mut doomed = Vec::new();
    while let Some(name) = names.next().await {
        let name = name?;
        if name.starts_with(&prefix) {
            doomed.push(name);
        }
    }
    for name in &doomed {
        js.delete_consumer_from_stream(name, stream).await?;
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_within_filters() {
        assert!(subject_within("prx.build.completed.PRX.app", "prx.build.>"));
        assert!(subject_within("prx.build.*.PRX.app", "prx.build.>"));
        assert!(subject_within("prx.build.completed.>", "prx.build.>"));
        assert!(subject_within("prx.build.>", "prx.build.>"));
        assert!(subject_within(
            "prx.webhook.push.PRX.app",
            "prx.webhook.*.*.*"
        ));
        assert!(!subject_within("prx.build.>", "prx.build.*.*.*"));
        assert!(!subject_within(
            "prx.build.*.PRX.app",
            "prx.build.completed.>"
        ));
        assert!(!subject_within(
            "prx.publish.applied.PRX.app",
            "prx.build.>"
        ));
        assert!(!subject_within("prx.build", "prx.build.>"));
        assert!(!subject_within(
            "prx.build.completed",
            "prx.build.completed.*"
        ));
    }

    #[test]
    fn replay_consumers_copy_the_target_and_carry_their_range() {
        let target = consumer::pull::Config {
            durable_name: Some("notifier".into()),
            filter_subjects: vec!["prx.build.>".into(), "prx.publish.>".into()],
            max_deliver: 8,
            ..Default::default()
        };
        assert_eq!(filters_of(&target).len(), 2);
        let c = replay_config(
            &target,
            "notifier",
            "notifier-replay-1",
            vec!["prx.build.>".into()],
            5,
            9,
        );
        assert_eq!(c.durable_name.as_deref(), Some("notifier-replay-1"));
        assert_eq!(
            c.deliver_policy,
            consumer::DeliverPolicy::ByStartSequence { start_sequence: 5 }
        );
        assert_eq!(c.max_deliver, 8);
        assert_eq!(c.metadata[LAST_SEQUENCE_KEY], "9");
        assert_eq!(c.metadata[TARGET_KEY], "notifier");
        assert!(c.description.unwrap().contains("5..=9"));
    }
}
