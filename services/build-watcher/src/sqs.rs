//! The SQS source: long-polls the queue an EventBridge rule feeds with CodeBuild events and
//! stores each message as a BuildReportReceived. A message is deleted only after JetStream
//! acknowledged its report; when the store fails the message stays, becomes visible again
//! after its visibility timeout, and is tried again (JetStream drops the copy if the first
//! store did land after all).
//!
//! The report's event id is derived from the EventBridge event `id`, so the same event
//! delivered twice (SQS is at-least-once; EventBridge may send an event twice) is stored once.
//!
//! A body that is not a CodeBuild event is stored too (id from the SQS message id) and
//! deleted: the state machine parks it (PRX_PARKED, with the body and the parse error, counted
//! and visible to operators) instead of it cycling through the queue until a redrive policy
//! (if the queue has one) moves it somewhere nobody looks.

use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::codebuild::event::CodeBuildEvent;
use prx_ci_shared::retry::Backoff;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// `source` of reports from SQS.
pub const SOURCE: &str = "sqs";

/// The report envelope of one SQS message body.
pub fn report_envelope(body: &str, message_id: &str, source: &str) -> v1::Envelope {
    let event: Option<CodeBuildEvent> = serde_json::from_str(body).ok();
    let (event_id, correlation_id, time, build_id, repository) = match &event {
        Some(e) if !e.id.is_empty() => (
            derived_event_id("eventbridge", &[&e.id]),
            e.id.clone(),
            OffsetDateTime::parse(
                e.time.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok(),
            e.detail.build_id.clone(),
            e.detail
                .additional_information
                .environment
                .environment_variables
                .iter()
                .find(|v| v.name == env::REPO)
                .map(|v| v.value.clone())
                .unwrap_or_default(),
        ),
        _ => (
            derived_event_id("sqs-message", &[message_id]),
            message_id.to_owned(),
            None,
            String::new(),
            String::new(),
        ),
    };
    Chain::starting(&correlation_id).envelope_at(
        event_id,
        time.unwrap_or_else(OffsetDateTime::now_utc),
        Payload::BuildReportReceived(v1::BuildReportReceived {
            event_json: body.as_bytes().to_vec(),
            source: source.to_owned(),
            build_id,
            repository,
            log_tail: None,
        }),
    )
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    pub received: usize,
    pub stored: usize,
    pub deleted: usize,
    /// Left in the queue because their report was not stored.
    pub kept: usize,
}

/// Long-polls one queue.
#[derive(Debug, Clone)]
pub struct SqsSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    publisher: EventPublisher,
    wait_time: Duration,
    max_messages: i32,
    visibility_timeout: Option<Duration>,
    metrics: Metrics,
}

impl SqsSource {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: String,
        publisher: EventPublisher,
        config: &crate::BuildWatcherConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            queue_url,
            publisher,
            wait_time: config.sqs_wait_time,
            max_messages: config.sqs_max_messages,
            visibility_timeout: config.sqs_visibility_timeout,
            metrics,
        }
    }

    /// Receives one batch, stores each message's report, deletes the stored ones.
    pub async fn poll_once(&self) -> anyhow::Result<PollOutcome> {
        use anyhow::Context as _;
        let mut request = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.max_messages)
            .wait_time_seconds(i32::try_from(self.wait_time.as_secs()).unwrap_or(20));
        if let Some(v) = self.visibility_timeout {
            request = request.visibility_timeout(i32::try_from(v.as_secs()).unwrap_or(i32::MAX));
        }
        let received = request
            .send()
            .await
            .with_context(|| format!("cannot receive from {}", self.queue_url))?;
        let messages = received.messages();
        let mut outcome = PollOutcome {
            received: messages.len(),
            ..PollOutcome::default()
        };
        if messages.is_empty() {
            return Ok(outcome);
        }
        let stores = messages.iter().map(|m| async move {
            let body = m.body().unwrap_or_default();
            let message_id = m.message_id().unwrap_or_default();
            let envelope = report_envelope(body, message_id, SOURCE);
            let result = self.publisher.publish(&envelope).await;
            (m, envelope.event_id, result)
        });
        let mut delete = Vec::new();
        for (i, (message, event_id, result)) in futures::future::join_all(stores)
            .await
            .into_iter()
            .enumerate()
        {
            match result {
                Ok(stored) => {
                    outcome.stored += 1;
                    self.metrics.sqs(
                        if stored.duplicate {
                            "duplicate"
                        } else {
                            "stored"
                        },
                        1,
                    );
                    tracing::debug!(%event_id, duplicate = stored.duplicate, "SQS message stored");
                    if let Some(handle) = message.receipt_handle() {
                        delete.push(
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(handle)
                                .build()
                                .context("cannot build a delete entry")?,
                        );
                    }
                }
                Err(err) => {
                    outcome.kept += 1;
                    self.metrics.sqs("store_failed", 1);
                    tracing::warn!(%event_id, error = %err, "cannot store SQS message; it stays in the queue");
                }
            }
        }
        if !delete.is_empty() {
            let attempted = delete.len();
            match self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(delete))
                .send()
                .await
            {
                Ok(out) => {
                    let failed = out.failed().len();
                    outcome.deleted = attempted.saturating_sub(failed);
                    self.metrics.sqs("deleted", outcome.deleted as u64);
                    if failed > 0 {
                        // Harmless: the message comes back and its report is a duplicate.
                        self.metrics.sqs("delete_failed", failed as u64);
                        tracing::warn!(failed, "cannot delete some stored SQS messages");
                    }
                }
                Err(err) => {
                    self.metrics.sqs("delete_failed", attempted as u64);
                    tracing::warn!(error = %err, "cannot delete stored SQS messages; they will be received again");
                }
            }
        }
        Ok(outcome)
    }

    /// Polls until `shutdown`; backs off while SQS fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_attempts: u32::MAX,
        };
        let mut failures = 0u32;
        tracing::info!(queue_url = %self.queue_url, "SQS source started");
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                result = self.poll_once() => result,
            };
            match result {
                Ok(_) => failures = 0,
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.delay(failures);
                    tracing::warn!(error = format!("{err:#}"), ?delay, "SQS poll failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("SQS source stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_eventbridge_event_gets_the_same_report_id() {
        let body = r#"{"id":"evt-1","detail-type":"CodeBuild Build State Change","time":"2017-09-01T16:14:28Z","detail":{"build-id":"p:1","build-status":"IN_PROGRESS","additional-information":{"environment":{"environment-variables":[{"name":"PRX_REPO","value":"PRX/app","type":"PLAINTEXT"}]}}}}"#;
        let a = report_envelope(body, "sqs-1", SOURCE);
        let b = report_envelope(body, "sqs-2", SOURCE);
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.correlation_id, "evt-1");
        let Some(Payload::BuildReportReceived(r)) = &a.payload else {
            panic!()
        };
        assert_eq!(r.repository, "PRX/app");
        assert_eq!(r.build_id, "p:1");
        assert_eq!(r.source, "sqs");
        assert_eq!(
            prx_ci_shared::bus::envelope::subject_of(&a).unwrap(),
            "prx.runner.report.PRX.app"
        );
    }

    #[test]
    fn a_body_that_is_not_an_event_is_kept_for_parking() {
        let a = report_envelope("hello", "sqs-1", SOURCE);
        let b = report_envelope("hello", "sqs-2", SOURCE);
        assert_ne!(a.event_id, b.event_id, "ids come from the SQS message id");
        let Some(Payload::BuildReportReceived(r)) = &a.payload else {
            panic!()
        };
        assert_eq!(r.event_json, b"hello");
        assert_eq!(
            prx_ci_shared::bus::envelope::subject_of(&a).unwrap(),
            "prx.runner.report.~.~"
        );
    }
}
