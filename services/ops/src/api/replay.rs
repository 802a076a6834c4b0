//! The `Replay` call: lists a range of a stream and creates the replay consumer its target
//! service runs.

use prx_ci_proto::v1::{self, replay_request};
use time::OffsetDateTime;

use super::{OpsApi, time_of};
use crate::auth::Operator;
use crate::error::OpsError;
use crate::event_log::{self, End, Start};
use crate::replay;

impl OpsApi {
    /// Lists a range and (unless a dry run) creates the replay consumer for it, logged as
    /// asked by `operator`.
    pub async fn replay(
        &self,
        request: v1::ReplayRequest,
        operator: &Operator,
    ) -> Result<v1::ReplayResponse, OpsError> {
        if request.consumer.is_empty() {
            return Err(OpsError::InvalidArgument("consumer is empty".into()));
        }
        if request
            .consumer
            .contains(replay::replay_prefix("").as_str())
        {
            return Err(OpsError::InvalidArgument(
                "replay into a replay consumer is not supported".into(),
            ));
        }
        let stream =
            self.rt.js.get_stream(&request.stream).await.map_err(|_| {
                OpsError::NotFound(format!("stream {} does not exist", request.stream))
            })?;
        let target = stream.consumer_info(&request.consumer).await.map_err(|_| {
            OpsError::NotFound(format!(
                "consumer {} does not exist on {}",
                request.consumer, request.stream
            ))
        })?;
        let target_config = consumer_pull_config(&target.config);
        let target_filters = replay::filters_of(&target_config);
        let filters = if request.subject.is_empty() {
            target_filters
        } else if target_filters.is_empty()
            || target_filters
                .iter()
                .any(|f| replay::subject_within(&request.subject, f))
        {
            vec![request.subject.clone()]
        } else {
            return Err(OpsError::InvalidArgument(format!(
                "subject {} is outside what {} consumes ({})",
                request.subject,
                request.consumer,
                target_filters.join(", ")
            )));
        };
        let start = match &request.from {
            None => Start::First,
            Some(replay_request::From::FromSequence(s)) => Start::Sequence(*s),
            Some(replay_request::From::FromTime(t)) => Start::Time(time_of(t)?),
        };
        let end = match &request.to {
            None => End::Now,
            Some(replay_request::To::ToSequence(s)) => End::Sequence(*s),
            Some(replay_request::To::ToTime(t)) => End::Time(time_of(t)?),
        };
        let mut first = None;
        let mut last = 0;
        let mut listed = std::collections::VecDeque::new();
        let limit = self.config.max_listed_events;
        let count = event_log::scan(&self.rt.js, &request.stream, &filters, start, end, |m| {
            first.get_or_insert(m.sequence);
            last = m.sequence;
            if listed.len() == limit {
                listed.pop_front();
            }
            listed.push_back(m.to_proto(None));
        })
        .await?;
        let Some(first) = first else {
            return Err(OpsError::FailedPrecondition(
                "the range holds no message for this consumer; nothing to replay".into(),
            ));
        };
        let mut response = v1::ReplayResponse {
            events: listed.into(),
            replay_consumer: String::new(),
            count,
            first_sequence: first,
            last_sequence: last,
        };
        if request.dry_run {
            return Ok(response);
        }
        let name = format!(
            "{}{}",
            replay::replay_prefix(&request.consumer),
            OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
        );
        let config = replay::replay_config(
            &target_config,
            &request.consumer,
            &name,
            filters,
            first,
            last,
        );
        self.rt
            .js
            .create_consumer_on_stream(config, &request.stream)
            .await
            .map_err(OpsError::unavailable)?;
        tracing::info!(
            stream = %request.stream,
            consumer = %request.consumer,
            replay = %name,
            first,
            last,
            count,
            requested_by = operator.name(),
            "replay created"
        );
        response.replay_consumer = name;
        Ok(response)
    }
}

/// The pull-consumer view of a consumer's configuration (the fields a replay copies).
fn consumer_pull_config(
    c: &async_nats::jetstream::consumer::Config,
) -> async_nats::jetstream::consumer::pull::Config {
    async_nats::jetstream::consumer::pull::Config {
        durable_name: c.durable_name.clone(),
        description: c.description.clone(),
        ack_policy: c.ack_policy,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        filter_subject: c.filter_subject.clone(),
        filter_subjects: c.filter_subjects.clone(),
        replay_policy: c.replay_policy,
        max_ack_pending: c.max_ack_pending,
        backoff: c.backoff.clone(),
        metadata: c.metadata.clone(),
        ..Default::default()
    }
}
