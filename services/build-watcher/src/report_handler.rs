//! The `build-watcher-reports` consumer: every report (SQS, reconciler, local runner) goes
//! through the per-build state machine, and each transition becomes one event in the chain of
//! the build's request.
//!
//! Per report: read the build's record (waiting briefly for its BuildRequested if the report
//! won the race), apply the state machine, publish the transitions (deterministic ids), then
//! write the record with compare-and-set. A crash between publish and write replays the same
//! transitions with the same ids (JetStream drops the copies); a concurrent writer makes the
//! write fail and the report is applied again to the fresh record.
//!
//! A build nobody requested is looked up in the request index first: when its environment is
//! a request's ([`console_retry::match_retry`]), it is a console retry and is adopted into that
//! request's chain; otherwise it is recorded from what its report says.
//!
//! Shadow mode (`[build_watcher] mode = "shadow"`): the builds reported are the original
//! system's, nobody's by id. Each is matched to a shadow request of its repository, commit and
//! architecture ([`console_retry::match_shadow`], variables not compared) as soon as its first
//! report arrives, and adopted into that request's chain (`BuildRef.shadowed`); one matching
//! no shadow request is recorded as a build nobody requested, as live does.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use prx_ci_proto::v1::envelope::Payload;
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::{Delivery, Handler, HandlerError};
use time::OffsetDateTime;

use prx_ci_shared::config::Mode;
use prx_ci_shared::kv::{CAS_ATTEMPTS, Versioned};

use crate::build_store::BuildStore;
use crate::cloudwatch_logs::LogSource;
use crate::console_retry::{self, RetryMatch};
use crate::emit::{transition_event, transition_name};
use crate::log_tail::{self, TailPlan, TailSource};
use crate::metrics::Metrics;
use crate::report::{Report, ReportKind, parse_report};
use crate::state::{self, Input, Outcome, Transition};
use crate::watched_build::WatchedBuildRecord;

/// Which consumer records requests, to tell "not processed yet" from "never requested".
#[derive(Debug, Clone)]
pub struct RequestConsumer {
    pub stream: String,
    pub durable: String,
}

/// Where a build's record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The dispatcher requested the build (its record was there).
    Requested,
    /// Nobody requested it; it retries `original` (console retry). `matching`: every request
    /// that matched.
    Adopted {
        original: String,
        push_sequence: u64,
        matching: Vec<String>,
    },
    /// Nobody requested it and it matches no request (`why`: per candidate, why not).
    Unrequested { why: Vec<String> },
    /// Shadow mode: the original system's build of the shadow request `request` (its id).
    Shadowed { request: String, push_sequence: u64 },
}

/// Handles BuildReportReceived events.
#[derive(Debug, Clone)]
pub struct ReportHandler {
    pub(crate) store: BuildStore,
    pub(crate) publisher: EventPublisher,
    pub(crate) js: jetstream::Context,
    pub(crate) requests: RequestConsumer,
    pub(crate) request_wait: Duration,
    pub(crate) unrequested_after: Duration,
    pub(crate) metrics: Metrics,
    pub(crate) mode: Mode,
    /// Reads the end of a CodeBuild build's log (`None`: local mode, no CloudWatch Logs).
    pub(crate) logs: Option<Arc<dyn LogSource>>,
    /// How long reading a log tail may take before the completion goes out without it.
    pub(crate) log_tail_timeout: Duration,
}

impl ReportHandler {
    /// Finds the build's record, waiting for a BuildRequested that may still be on its way.
    /// A result without a record means: nobody requested this build (so far), start a record
    /// from the report (at the returned revision).
    async fn join(
        &self,
        report: &Report,
        delivery: &Delivery,
        current: Versioned<WatchedBuildRecord>,
    ) -> Result<Versioned<WatchedBuildRecord>, HandlerError> {
        if current.record.is_some() {
            return Ok(current);
        }
        // Only the first delivery waits in the handler (the common race: the local runner or
        // SQS beating the dispatcher's publish by milliseconds, and the wait ends as soon as
        // the record is written); later ones rely on the consumer's backoff, so a build nobody
        // requested holds its strand for `request_wait` once, not at each of the deliveries
        // before `unrequested_after` (config.rs: why `request_wait` is 2 s). In shadow mode
        // no request is ever written under the original system's build id, so nothing could
        // end the wait early: the report goes straight to the consumer's backoff, and its next
        // delivery looks for a matching shadow request again.
        let waited = if delivery.delivered <= 1 && !self.mode.is_shadow() {
            self.store
                .wait_for(&report.build_id, self.request_wait)
                .await
                .map_err(HandlerError::transient)?
        } else {
            current
        };
        if waited.record.is_some() {
            return Ok(waited);
        }
        let age = OffsetDateTime::now_utc() - delivery.published;
        if age >= self.unrequested_after
            && self.requests_caught_up(delivery.stream_sequence).await?
        {
            return Ok(waited);
        }
        Err(HandlerError::transient(anyhow::anyhow!(
            "no BuildRequested for build {} yet (report {}s old); waiting for it",
            report.build_id,
            age.whole_seconds()
        )))
    }

    /// Whether the request consumer has handled every request stored before `sequence`.
    async fn requests_caught_up(&self, sequence: u64) -> Result<bool, HandlerError> {
        let stream = self
            .js
            .get_stream(&self.requests.stream)
            .await
            .map_err(HandlerError::transient)?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&self.requests.durable)
            .await
            .map_err(|e| HandlerError::transient(anyhow::anyhow!("cannot open consumer: {e}")))?;
        let info = consumer.info().await.map_err(HandlerError::transient)?;
        Ok(info.ack_floor.stream_sequence >= sequence
            || (info.num_pending == 0 && info.num_ack_pending == 0))
    }

    /// Shadow mode: the record of the original's build `report` is about, adopted into the
    /// shadow request it matches (`None`: none matches, so far).
    async fn start_shadowed(
        &self,
        report: &Report,
    ) -> Result<Option<(WatchedBuildRecord, Origin)>, HandlerError> {
        let candidates = self.candidates(report).await?;
        Ok(
            console_retry::match_shadow(&report.build_id, &report.environment(), &candidates).map(
                |request| {
                    (
                        WatchedBuildRecord::shadowed(report, request),
                        Origin::Shadowed {
                            request: request.build.build_request_id.clone(),
                            push_sequence: request.chain.push_sequence,
                        },
                    )
                },
            ),
        )
    }

    /// The requests of the reported build's repository, commit and architecture.
    async fn candidates(
        &self,
        report: &Report,
    ) -> Result<Vec<console_retry::RequestedBuild>, HandlerError> {
        let reported = report.build_ref();
        match self
            .store
            .requests_of(
                &reported.repository,
                &reported.commit,
                reported.architecture,
            )
            .await
        {
            Ok(candidates) => Ok(candidates),
            Err(e) if e.is_transient() => Err(HandlerError::transient(e)),
            Err(e) => {
                // An unreadable index entry must not hold the build's events back.
                tracing::warn!(build_id = %report.build_id, error = %e, "request index unreadable; the build stays unrequested");
                Ok(Vec::new())
            }
        }
    }

    /// The record of a build nobody requested: adopted into the chain of the request it
    /// retries (same repository, commit, architecture and dispatcher variables), else started
    /// from the report alone.
    async fn start_unrequested(
        &self,
        report: &Report,
        envelope: &prx_ci_proto::v1::Envelope,
    ) -> Result<(WatchedBuildRecord, Origin), HandlerError> {
        if self.mode.is_shadow() {
            if let Some(shadowed) = self.start_shadowed(report).await? {
                return Ok(shadowed);
            }
            return Ok((
                WatchedBuildRecord::unrequested(report, envelope),
                Origin::Unrequested {
                    why: vec![
                        "no shadow request of its repository, commit and architecture".into(),
                    ],
                },
            ));
        }
        let candidates = self.candidates(report).await?;
        Ok(
            match console_retry::match_retry(
                &report.build_id,
                &report.environment(),
                &report.source(),
                &candidates,
            ) {
                RetryMatch::Adopt { original, matching } => (
                    WatchedBuildRecord::adopted(report, original),
                    Origin::Adopted {
                        original: original.build_id.clone(),
                        push_sequence: original.chain.push_sequence,
                        matching,
                    },
                ),
                RetryMatch::NoMatch { mismatches } => (
                    WatchedBuildRecord::unrequested(report, envelope),
                    Origin::Unrequested {
                        why: mismatches
                            .iter()
                            .map(|(build, why)| format!("{build}: {why}"))
                            .collect(),
                    },
                ),
            },
        )
    }

    /// What the log tail of the completion `report` may cause is made from: the runner's
    /// tail, else the end of the build's CloudWatch Logs stream. Read once per delivery,
    /// before the record is (so the read neither widens the compare-and-set's window nor is
    /// repeated when that is retried); `None` when the report completes nothing that gets a
    /// tail, or its build is already final (a report handled again reads nothing). Best
    /// effort: a missing stream, an error or the timeout gives a reason, never an error, so
    /// the completion always goes out.
    async fn tail_source(
        &self,
        report: &Report,
        reported: Option<&prx_ci_proto::v1::LogTail>,
    ) -> Result<Option<TailSource>, HandlerError> {
        let ReportKind::Final(status) = &report.kind else {
            return Ok(None);
        };
        let Some(plan) = log_tail::plan(report, *status, reported, self.logs.is_some()) else {
            return Ok(None);
        };
        let location = match plan {
            TailPlan::Reported(tail) => return Ok(Some(TailSource::Reported(tail))),
            TailPlan::Unavailable(why) => return Ok(Some(TailSource::Unavailable(why))),
            TailPlan::Fetch(location) => location,
        };
        let Some(logs) = self.logs.as_ref() else {
            return Ok(None);
        };
        let current = self
            .store
            .get(&report.build_id)
            .await
            .map_err(HandlerError::transient)?;
        if current.record.is_some_and(|r| r.state.lifecycle.is_final()) {
            return Ok(None);
        }
        let read = tokio::time::timeout(
            self.log_tail_timeout,
            logs.last_messages(&location, log_tail::FETCH_MESSAGES),
        )
        .await;
        Ok(Some(match read {
            Ok(Ok(messages)) => TailSource::Fetched(messages),
            Ok(Err(err)) => {
                tracing::warn!(build_id = %report.build_id, error = %err, "no log tail for the completed build");
                TailSource::Unavailable(err.to_string())
            }
            Err(_) => {
                let why = format!(
                    "reading log stream {location} took longer than {:?}",
                    self.log_tail_timeout
                );
                tracing::warn!(build_id = %report.build_id, reason = %why, "no log tail for the completed build");
                TailSource::Unavailable(why)
            }
        }))
    }

    /// Publishes the transitions the state machine found in the report (deterministic ids),
    /// then returns the record to write and the outcome.
    async fn apply(
        &self,
        mut record: WatchedBuildRecord,
        report: &Report,
        tail_source: Option<&TailSource>,
    ) -> Result<(WatchedBuildRecord, Outcome), HandlerError> {
        let outcome = state::apply_report(&record.state, report);
        let now = OffsetDateTime::now_utc();
        let completes = outcome
            .transitions
            .iter()
            .any(|t| matches!(t, Transition::Completed { .. }));
        let log_tail = tail_source.filter(|_| completes).map(|source| {
            let (tail, outcome) = source.tail(&log_tail::redactor(&record, report));
            self.metrics.log_tail(outcome);
            tail
        });
        for transition in &outcome.transitions {
            let envelope = transition_event(&record, report, transition, now, log_tail.as_ref());
            let stored = self
                .publisher
                .publish(&envelope)
                .await
                .map_err(HandlerError::transient)?;
            if !stored.duplicate {
                self.metrics.transition(transition_name(transition));
            }
            tracing::info!(
                build_id = %record.build_id,
                transition = transition_name(transition),
                event_id = %envelope.event_id,
                duplicate = stored.duplicate,
                "build transition"
            );
        }
        record.record_report(report, &outcome, now);
        Ok((record, outcome))
    }
}

impl Handler for ReportHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), HandlerError> {
        let Some(Payload::BuildReportReceived(raw)) = &delivery.envelope.payload else {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "not a BuildReportReceived event"
            )));
        };
        let report = parse_report(&raw.event_json).map_err(HandlerError::permanent)?;
        let source = if raw.source.is_empty() {
            "unknown"
        } else {
            raw.source.as_str()
        };

        let tail_source = self.tail_source(&report, raw.log_tail.as_ref()).await?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .store
                .get(&report.build_id)
                .await
                .map_err(HandlerError::transient)?;
            // Shadow mode adopts an original's build at its first report, without waiting
            // for a BuildRequested that never comes under its id.
            let shadowed = if current.record.is_none() && self.mode.is_shadow() {
                self.start_shadowed(&report).await?
            } else {
                None
            };
            let (revision, record, origin) = match shadowed {
                Some((record, origin)) => (current.revision, record, origin),
                None => {
                    let joined = self.join(&report, &delivery, current).await?;
                    match joined.record {
                        Some(record) => (joined.revision, record, Origin::Requested),
                        None => {
                            let (record, origin) =
                                self.start_unrequested(&report, &delivery.envelope).await?;
                            (joined.revision, record, origin)
                        }
                    }
                }
            };
            let was_final = record.state.lifecycle.is_final();
            if was_final {
                // Nothing can change a finished build; just make sure it left the in-flight
                // index (a crash after the final write, or a reconciler poll racing it).
                let outcome = state::apply(
                    &record.state,
                    match &report.kind {
                        ReportKind::Final(s) => Input::Final(*s),
                        _ => Input::Phase { phase: "" },
                    },
                );
                if outcome.no_change == Some(state::NoChange::ConflictingFinal) {
                    tracing::warn!(
                        build_id = %report.build_id,
                        first = ?record.final_status,
                        reported = ?report.kind,
                        source,
                        "a source reports another final status; the first one stands"
                    );
                }
                if source == "reconciler" {
                    self.store
                        .remove_in_flight(&report.build_id)
                        .await
                        .map_err(HandlerError::transient)?;
                }
                self.metrics.report(source, "no_change");
                return Ok(());
            }
            let (record, outcome) = self.apply(record, &report, tail_source.as_ref()).await?;
            let saved = self
                .store
                .save(&record, revision)
                .await
                .map_err(HandlerError::transient)?;
            if saved.is_none() {
                continue;
            }
            if record.state.lifecycle.is_final() {
                self.store
                    .remove_in_flight(&report.build_id)
                    .await
                    .map_err(HandlerError::transient)?;
            } else {
                self.store
                    .put_in_flight(&record.in_flight())
                    .await
                    .map_err(HandlerError::transient)?;
            }
            let outcome_name = match (&origin, outcome.transitions.is_empty()) {
                (Origin::Unrequested { .. }, _) => "unrequested",
                (Origin::Adopted { .. }, _) => "adopted",
                (Origin::Shadowed { .. }, _) => "shadowed",
                (Origin::Requested, true) => "no_change",
                (Origin::Requested, false) => "applied",
            };
            match &origin {
                Origin::Requested => {}
                Origin::Adopted {
                    original,
                    push_sequence,
                    matching,
                } => {
                    let several = matching.len() > 1;
                    tracing::info!(
                        build_id = %report.build_id,
                        retry_of = %original,
                        push_sequence,
                        repository = %record.build.repository,
                        commit = %record.build.commit,
                        matching = ?matching,
                        "build nobody requested has the environment of a requested build (a console retry): ordered as that build's push{}",
                        if several { "; several requests matched, the newest push was taken" } else { "" }
                    );
                    self.metrics.console_retry(if several {
                        "adopted_among_several"
                    } else {
                        "adopted"
                    });
                }
                Origin::Shadowed {
                    request,
                    push_sequence,
                } => {
                    tracing::info!(
                        build_id = %report.build_id,
                        build_request_id = %request,
                        push_sequence,
                        repository = %record.build.repository,
                        commit = %record.build.commit,
                        "the original system's build adopted into our shadow request's chain"
                    );
                }
                Origin::Unrequested { why } => {
                    tracing::warn!(
                        build_id = %report.build_id,
                        repository = %record.build.repository,
                        commit = %record.build.commit,
                        not_a_retry_of = ?why,
                        "build nobody requested (started by hand?) matches no request; reported with what is known, never published"
                    );
                    self.metrics.console_retry("unmatched");
                }
            }
            self.metrics.report(source, outcome_name);
            return Ok(());
        }
        Err(HandlerError::transient(anyhow::anyhow!(
            "build record {} kept changing",
            report.build_id
        )))
    }
}
