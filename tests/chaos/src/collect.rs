//! Reads what a run left into a [`History`]: the streams (`PRX_WEBHOOKS`, `PRX_EVENTS`,
//! `PRX_PARKED`) with async-nats, SSM `GetParameterHistory` from the emulator, the runner's
//! `builds/*.json`; and tells whether the system has quiesced (every durable consumer drained).

use std::path::Path;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, PARKED_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::domain::Architecture;

use crate::history::{BuildResult, Completion, Decision, Parked, RunnerBuild};

/// Every decodable envelope of `stream`, in stream order.
pub async fn envelopes(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<v1::Envelope>> {
    let handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("cannot open stream {stream}"))?;
    let state = handle.get_info().await?.state;
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let raw: Vec<Option<Vec<u8>>> =
        futures::stream::iter(state.first_sequence..=state.last_sequence)
            .map(|seq| {
                let handle = handle.clone();
                async move {
                    handle
                        .get_raw_message(seq)
                        .await
                        .ok()
                        .map(|m| m.payload.to_vec())
                }
            })
            .buffered(32)
            .collect()
            .await;
    Ok(raw
        .into_iter()
        .flatten()
        .filter_map(|bytes| v1::Envelope::decode(bytes.as_slice()).ok())
        .collect())
}

/// Delivery ids of the stored webhooks, one per message.
pub fn stored_webhooks(envelopes: &[v1::Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::WebhookReceived(w)) => Some(w.delivery_id.clone()),
            _ => None,
        })
        .collect()
}

fn architecture(value: i32) -> String {
    Architecture::from_proto(value)
        .map_or_else(|| "unspecified".to_owned(), |a| a.as_str().to_owned())
}

fn result(status: v1::BuildStatus) -> BuildResult {
    match status {
        v1::BuildStatus::Succeeded => BuildResult::Succeeded,
        v1::BuildStatus::Failed => BuildResult::Failed,
        v1::BuildStatus::Fault => BuildResult::Fault,
        v1::BuildStatus::Stopped => BuildResult::Stopped,
        v1::BuildStatus::TimedOut => BuildResult::TimedOut,
        _ => BuildResult::Other,
    }
}

/// The dispatcher's decisions and the builds' terminal events.
pub fn decisions_and_completions(events: &[v1::Envelope]) -> (Vec<Decision>, Vec<Completion>) {
    let mut decisions = Vec::new();
    let mut completions = Vec::new();
    for e in events {
        match &e.payload {
            Some(Payload::BuildRequested(r)) => {
                let build = r.build.clone().unwrap_or_default();
                decisions.push(Decision::Requested {
                    event_id: e.event_id.clone(),
                    delivery_id: e.correlation_id.clone(),
                    build_id: build.build_id,
                    architecture: architecture(build.architecture),
                    repository: build.repository,
                    commit: build.commit,
                    retry_of: build.retry_of,
                });
            }
            Some(Payload::BuildSkipped(_)) => decisions.push(Decision::Skipped {
                event_id: e.event_id.clone(),
                delivery_id: e.correlation_id.clone(),
            }),
            Some(Payload::BuildCompleted(c)) => completions.push(Completion {
                event_id: e.event_id.clone(),
                build_id: c
                    .build
                    .as_ref()
                    .map(|b| b.build_id.clone())
                    .unwrap_or_default(),
                result: result(c.status()),
            }),
            _ => {}
        }
    }
    (decisions, completions)
}

/// The parked messages.
pub fn parked(envelopes: &[v1::Envelope]) -> Vec<Parked> {
    envelopes
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::MessageParked(p)) => Some(Parked {
                consumer: p.consumer.clone(),
                subject: p.subject.clone(),
                error: p.error.clone(),
                data: p.data.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// Every stream's envelopes: (webhooks, events, parked).
pub async fn streams(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<(Vec<v1::Envelope>, Vec<v1::Envelope>, Vec<v1::Envelope>)> {
    Ok((
        envelopes(js, WEBHOOKS_STREAM).await?,
        envelopes(js, EVENTS_STREAM).await?,
        envelopes(js, PARKED_STREAM).await?,
    ))
}

/// Durable consumers with messages still pending or unacknowledged (`name: pending/ack
/// pending`); empty when every consumer is drained.
pub async fn busy_consumers(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<String>> {
    let mut busy = Vec::new();
    for stream in [WEBHOOKS_STREAM, EVENTS_STREAM] {
        let handle = js.get_stream(stream).await?;
        let infos: Vec<_> = handle.consumers().try_collect().await?;
        for info in infos {
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                busy.push(format!(
                    "{}: {} pending, {} unacknowledged",
                    info.name, info.num_pending, info.num_ack_pending
                ));
            }
        }
    }
    Ok(busy)
}

/// `GetParameterHistory` of `name`, oldest first (empty when it was never written).
pub async fn parameter_history(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let mut values = Vec::new();
    let mut token = None;
    loop {
        let page = match ssm
            .get_parameter_history()
            .name(name)
            .set_next_token(token)
            .send()
            .await
        {
            Ok(page) => page,
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(aws_sdk_ssm::operation::get_parameter_history::GetParameterHistoryError::is_parameter_not_found) =>
            {
                return Ok(values);
            }
            Err(err) => return Err(anyhow::anyhow!("GetParameterHistory {name}: {err:?}")),
        };
        values.extend(
            page.parameters()
                .iter()
                .filter_map(|p| p.value().map(str::to_owned)),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(values);
        }
    }
}

/// Every parameter under `prefix` (to find writes nobody expected).
pub async fn parameter_names(
    ssm: &aws_sdk_ssm::Client,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = ssm
            .get_parameters_by_path()
            .path(prefix)
            .recursive(true)
            .set_next_token(token)
            .send()
            .await
            .with_context(|| format!("GetParametersByPath {prefix}"))?;
        names.extend(
            page.parameters()
                .iter()
                .filter_map(|p| p.name().map(str::to_owned)),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(names);
        }
    }
}

/// The runner's build records (`<data_dir>/builds/*.json`).
pub fn runner_builds(data_dir: &Path) -> anyhow::Result<Vec<RunnerBuild>> {
    let dir = data_dir.join("builds");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("unreadable build record {}", path.display()))?;
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        out.push(RunnerBuild {
            build_id: field("build_id").unwrap_or_default(),
            request_id: field("request_id").unwrap_or_default(),
            final_status: field("final_status"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event_id: &str, correlation: &str, payload: Payload) -> v1::Envelope {
        v1::Envelope {
            event_id: event_id.into(),
            correlation_id: correlation.into(),
            payload: Some(payload),
            ..v1::Envelope::default()
        }
    }

    #[test]
    fn events_become_decisions_and_completions() {
        let build = v1::BuildRef {
            build_id: "b1".into(),
            repository: "chaos/app-0".into(),
            commit: "c1".into(),
            architecture: v1::Architecture::Aarch64 as i32,
            retry_of: "b0".into(),
            ..v1::BuildRef::default()
        };
        let events = [
            envelope(
                "e1",
                "d1",
                Payload::BuildRequested(v1::BuildRequested {
                    build: Some(build.clone()),
                    ..v1::BuildRequested::default()
                }),
            ),
            envelope(
                "e2",
                "d2",
                Payload::BuildSkipped(v1::BuildSkipped::default()),
            ),
            envelope(
                "e3",
                "d1",
                Payload::BuildCompleted(v1::BuildCompleted {
                    build: Some(build),
                    status: v1::BuildStatus::Fault as i32,
                    ..v1::BuildCompleted::default()
                }),
            ),
        ];
        let (decisions, completions) = decisions_and_completions(&events);
        assert_eq!(
            decisions,
            [
                Decision::Requested {
                    event_id: "e1".into(),
                    delivery_id: "d1".into(),
                    build_id: "b1".into(),
                    architecture: "aarch64".into(),
                    repository: "chaos/app-0".into(),
                    commit: "c1".into(),
                    retry_of: "b0".into(),
                },
                Decision::Skipped {
                    event_id: "e2".into(),
                    delivery_id: "d2".into()
                }
            ]
        );
        assert_eq!(
            completions,
            [Completion {
                event_id: "e3".into(),
                build_id: "b1".into(),
                result: BuildResult::Fault
            }]
        );
    }

    #[test]
    fn runner_records_are_read() {
        let dir = std::env::temp_dir().join(format!("chaos-records-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("builds")).unwrap();
        std::fs::write(
            dir.join("builds/x.json"),
            r#"{"build_id":"local:x","request_id":"r","final_status":"FAILED","environment":[]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("builds/x.log"), "log").unwrap();
        let builds = runner_builds(&dir).unwrap();
        assert_eq!(
            builds,
            [RunnerBuild {
                build_id: "local:x".into(),
                request_id: "r".into(),
                final_status: Some("FAILED".into())
            }]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
