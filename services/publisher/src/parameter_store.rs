//! The parameter store port (SSM in production, a NATS KV bucket locally) and its adapters.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::SdkError;
use futures::TryStreamExt as _;
use prx_ci_shared::retry::{Backoff, Retry, retry};

use prx_ci_shared::kv::{decode_key_token, key_token};

/// The KV bucket the local parameter store writes (`deploy/nats/kv/prx_ci_parameters.json`).
pub const PARAMETERS_BUCKET: &str = "prx_ci_parameters";

/// The KV bucket of shadow mode's would-be parameters (`[publisher] mode = "shadow"`,
/// `deploy/nats/kv/prx_ci_shadow_parameters.json`): what the publisher would have written,
/// never the original system's writes, so the fence compares against its own history.
pub const SHADOW_PARAMETERS_BUCKET: &str = "prx_ci_shadow_parameters";

/// Time limit of one SSM call attempt, so a hung connection cannot outlive the fence lease.
pub const SSM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parameter as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredParameter {
    pub name: String,
    pub value: String,
    /// SSM version or KV revision.
    pub version: i64,
}

/// Why a store call failed; the distinction matters to the fence.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store answered, and nothing was written. `retryable`: trying later may help.
    #[error("parameter store refused: {message}")]
    NotWritten { message: String, retryable: bool },
    /// No usable answer: the write may or may not have been applied.
    #[error("parameter store outcome unknown: {message}")]
    Unknown { message: String },
}

/// Where parameters live.
#[async_trait]
pub trait ParameterStore: Send + Sync + fmt::Debug {
    /// Writes `value` (type String, overwriting) and returns the new version.
    async fn put(&self, name: &str, value: &str) -> Result<i64, StoreError>;
    /// The current value and version, `None` when the parameter does not exist.
    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError>;
    /// Every parameter whose name starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<StoredParameter>, StoreError>;
}

/// AWS Systems Manager Parameter Store.
#[derive(Debug, Clone)]
pub struct SsmParameterStore {
    client: aws_sdk_ssm::Client,
    backoff: Backoff,
}

impl SsmParameterStore {
    /// A client from the SDK configuration. SDK retries are off: throttling is retried by the
    /// shared retry helper, and every attempt is time-limited ([`SSM_ATTEMPT_TIMEOUT`]).
    pub fn new(sdk_config: &aws_config::SdkConfig) -> Self {
        let config = aws_sdk_ssm::config::Builder::from(sdk_config)
            .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_ssm::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(SSM_ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            client: aws_sdk_ssm::Client::from_conf(config),
            backoff: Backoff::default(),
        }
    }

    /// Overrides the throttling retry policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn client(&self) -> &aws_sdk_ssm::Client {
        &self.client
    }

    /// After `PutParameter` of `value` was answered `status` (5xx): SSM finished with the call
    /// but may have applied it. The caller holds the parameter's fence claim, so nobody else
    /// writes it meanwhile: if it holds `value` now, this write landed (or the value was there
    /// already) and is done, never written again; otherwise nothing landed and the write may be
    /// retried. A failed read leaves the outcome unknown.
    async fn after_server_error(
        &self,
        name: &str,
        value: &str,
        status: u16,
    ) -> Result<i64, StoreError> {
        match self.get(name).await {
            Ok(Some(current)) if current.value == value => {
                tracing::warn!(
                    parameter = name,
                    status,
                    version = current.version,
                    "SSM answered PutParameter with a server error, but the parameter holds the value: written"
                );
                Ok(current.version)
            }
            Ok(_) => Err(StoreError::NotWritten {
                message: format!(
                    "SSM answered PutParameter {status} and {name} does not hold the value: not written"
                ),
                retryable: true,
            }),
            Err(read) => Err(StoreError::Unknown {
                message: format!(
                    "SSM answered PutParameter {status}, and reading {name} to see whether it landed failed: {read}"
                ),
            }),
        }
    }
}

/// Error codes of a refusal that trying again later may cure (SSM throttles with a 400).
fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ThrottlingException"
                | "Throttling"
                | "TooManyUpdates"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
        )
    )
}

/// The status of a 5xx answer: the server failed while handling the call, so a write may or
/// may not have been applied.
fn server_error<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response()
        .map(|raw| raw.status().as_u16())
        .filter(|status| *status >= 500)
}

/// Classifies an SDK error for the fence: a 4xx error answer means nothing was written; a 5xx
/// answer or no answer (timeout, broken connection) means we cannot know.
fn classify<E>(err: &SdkError<E, HttpResponse>) -> StoreError
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{}", aws_sdk_ssm::error::DisplayErrorContext(err));
    if let Some(status) = server_error(err) {
        return StoreError::Unknown {
            message: format!("SSM answered {status}: {message}"),
        };
    }
    match err {
        SdkError::ServiceError(service) => StoreError::NotWritten {
            retryable: is_throttling(service.err().code()),
            message,
        },
        // The request never left: nothing written.
        SdkError::ConstructionFailure(_) => StoreError::NotWritten {
            message,
            retryable: false,
        },
        _ => StoreError::Unknown { message },
    }
}

#[async_trait]
impl ParameterStore for SsmParameterStore {
    /// Throttling is retried. A 5xx answer is not retried blindly: the write may have landed
    /// with its answer lost, so the parameter is read first ([`Self::after_server_error`]).
    async fn put(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        retry(
            &self.backoff,
            |_| async {
                let sent = self
                    .client
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .overwrite(true)
                    .send()
                    .await;
                match sent {
                    Ok(out) => Ok(out.version()),
                    Err(err) => match server_error(&err) {
                        Some(status) => self.after_server_error(name, value, status).await,
                        None => Err(classify(&err)),
                    },
                }
            },
            |err| match err {
                StoreError::NotWritten {
                    retryable: true, ..
                } => Retry::Backoff,
                _ => Retry::Never,
            },
        )
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError> {
        match self.client.get_parameter().name(name).send().await {
            Ok(out) => Ok(out.parameter().map(|p| StoredParameter {
                name: p.name().unwrap_or(name).to_owned(),
                value: p.value().unwrap_or_default().to_owned(),
                version: p.version(),
            })),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(err) => Err(classify(&err)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        // GetParametersByPath wants a path; names under it are filtered by the exact prefix.
        let path = match prefix.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &prefix[..i],
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&e))?;
            for p in page.parameters() {
                let name = p.name().unwrap_or_default();
                if name.starts_with(prefix) {
                    out.push(StoredParameter {
                        name: name.to_owned(),
                        value: p.value().unwrap_or_default().to_owned(),
                        version: p.version(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Parameters in a NATS KV bucket (local mode): key = the encoded name, value = the value,
/// version = the KV revision.
#[derive(Debug, Clone)]
pub struct KvParameterStore {
    kv: kv::Store,
}

impl KvParameterStore {
    /// Opens the [`PARAMETERS_BUCKET`] (provisioned from `deploy/nats/kv/`).
    pub async fn new(js: &jetstream::Context) -> anyhow::Result<Self> {
        Self::open(js, PARAMETERS_BUCKET).await
    }

    /// Opens the parameter bucket `bucket` ([`PARAMETERS_BUCKET`] or
    /// [`SHADOW_PARAMETERS_BUCKET`]; provisioned from `deploy/nats/kv/`).
    pub async fn open(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Self> {
        let kv = js
            .get_key_value(bucket)
            .await
            .with_context(|| format!("cannot open KV bucket {bucket} (provisioned?)"))?;
        Ok(Self { kv })
    }
}

fn kv_unknown(err: impl fmt::Display) -> StoreError {
    StoreError::Unknown {
        message: err.to_string(),
    }
}

#[async_trait]
impl ParameterStore for KvParameterStore {
    async fn put(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        let revision = self
            .kv
            .put(key_token(name), value.to_owned().into())
            .await
            .map_err(kv_unknown)?;
        Ok(i64::try_from(revision).unwrap_or(i64::MAX))
    }

    async fn get(&self, name: &str) -> Result<Option<StoredParameter>, StoreError> {
        let entry = self.kv.entry(key_token(name)).await.map_err(kv_unknown)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| StoredParameter {
                name: name.to_owned(),
                value: String::from_utf8_lossy(&e.value).into_owned(),
                version: i64::try_from(e.revision).unwrap_or(i64::MAX),
            }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredParameter>, StoreError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(kv_unknown)?,
            Err(err) => return Err(kv_unknown(err)),
        };
        let mut out = Vec::new();
        for key in keys {
            let Some(name) = decode_key_token(&key) else {
                continue;
            };
            if !name.starts_with(prefix) {
                continue;
            }
            if let Some(p) = self.get(&name).await? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ssm::error::ErrorMetadata;
    use aws_sdk_ssm::operation::put_parameter::PutParameterError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn answered(status: u16, code: Option<&str>) -> SdkError<PutParameterError, HttpResponse> {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(
            PutParameterError::generic(meta.build()),
            HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn throttling_is_a_retryable_refusal() {
        for code in ["ThrottlingException", "TooManyUpdates"] {
            let err = classify(&answered(400, Some(code)));
            assert!(
                matches!(
                    err,
                    StoreError::NotWritten {
                        retryable: true,
                        ..
                    }
                ),
                "{code}: {err:?}"
            );
        }
    }

    #[test]
    fn other_4xx_answers_are_final_refusals() {
        let err = classify(&answered(400, Some("ParameterMaxVersionLimitExceeded")));
        assert!(
            matches!(
                err,
                StoreError::NotWritten {
                    retryable: false,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_5xx_answer_leaves_the_outcome_unknown_whatever_its_code() {
        for (status, code) in [
            (500, Some("InternalServerError")),
            (503, Some("ServiceUnavailable")),
            (500, None),
            (502, None),
        ] {
            let err = answered(status, code);
            assert_eq!(server_error(&err), Some(status));
            let classified = classify(&err);
            assert!(
                matches!(&classified, StoreError::Unknown { message } if message.contains(&status.to_string())),
                "{status} {code:?}: {classified:?}"
            );
        }
        assert_eq!(server_error(&answered(400, None)), None);
    }

    #[test]
    fn no_answer_leaves_the_outcome_unknown() {
        let err: SdkError<PutParameterError, HttpResponse> =
            SdkError::timeout_error("attempt timeout");
        assert!(matches!(classify(&err), StoreError::Unknown { .. }));
    }
}
