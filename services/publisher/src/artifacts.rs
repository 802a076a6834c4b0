//! The artifact check port: before a parameter points at an image or object, it must exist.
//! ECR `DescribeImages` and S3 `HeadObject` in production; nothing locally.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;

use crate::mapping::ArtifactKind;

/// Time limit of one artifact check call attempt.
pub const CHECK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactStatus {
    Present,
    /// Missing, and what exactly is missing.
    Missing(String),
}

/// Checks that the artifact a value points at exists.
#[async_trait]
pub trait ArtifactChecker: Send + Sync + fmt::Debug {
    /// `Err` is an outage (retried later), never "missing".
    async fn check(&self, kind: ArtifactKind, value: &str) -> anyhow::Result<ArtifactStatus>;
}

/// No check (local mode: `prx-ci up` has no registry or bucket).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoArtifactCheck;

#[async_trait]
impl ArtifactChecker for NoArtifactCheck {
    async fn check(&self, _kind: ArtifactKind, _value: &str) -> anyhow::Result<ArtifactStatus> {
        Ok(ArtifactStatus::Present)
    }
}

/// ECR image tags (in the caller's account and region) and S3 objects in the
/// application-code bucket.
#[derive(Debug, Clone)]
pub struct AwsArtifactChecker {
    ecr: aws_sdk_ecr::Client,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl AwsArtifactChecker {
    /// Checks S3 objects in `bucket` (`PRX_APPLICATION_CODE_BUCKET`), virtual-hosted style.
    pub fn new(sdk_config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        Self::with_path_style(sdk_config, bucket, false)
    }

    /// Like [`Self::new`]; `force_path_style` for emulators and S3-compatible stores.
    pub fn with_path_style(
        sdk_config: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        force_path_style: bool,
    ) -> Self {
        let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(CHECK_ATTEMPT_TIMEOUT)
            .build();
        let ecr = aws_sdk_ecr::config::Builder::from(sdk_config)
            .timeout_config(timeouts.clone())
            .build();
        let s3 = aws_sdk_s3::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .force_path_style(force_path_style)
            .build();
        Self {
            ecr: aws_sdk_ecr::Client::from_conf(ecr),
            s3: aws_sdk_s3::Client::from_conf(s3),
            bucket: bucket.into(),
        }
    }

    async fn check_image(&self, value: &str) -> anyhow::Result<ArtifactStatus> {
        let Some((repository, tag)) = value.split_once(':') else {
            return Ok(ArtifactStatus::Missing(format!("{value:?} names no tag")));
        };
        let result = self
            .ecr
            .describe_images()
            .repository_name(repository)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(tag)
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(out) if !out.image_details().is_empty() => Ok(ArtifactStatus::Present),
            Ok(_) => Ok(ArtifactStatus::Missing(format!(
                "ECR repository {repository} has no image tagged {tag}"
            ))),
            Err(SdkError::ServiceError(e)) if e.err().is_repository_not_found_exception() => Ok(
                ArtifactStatus::Missing(format!("ECR repository {repository} does not exist")),
            ),
            Err(SdkError::ServiceError(e)) if e.err().is_image_not_found_exception() => {
                Ok(ArtifactStatus::Missing(format!(
                    "ECR repository {repository} has no image tagged {tag}"
                )))
            }
            Err(err) => Err(anyhow::anyhow!(
                "cannot describe ECR image {value}: {}",
                aws_sdk_ecr::error::DisplayErrorContext(err)
            )),
        }
    }

    async fn check_object(&self, key: &str) -> anyhow::Result<ArtifactStatus> {
        let result = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ArtifactStatus::Present),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {
                Ok(ArtifactStatus::Missing(format!(
                    "S3 object s3://{}/{key} does not exist",
                    self.bucket
                )))
            }
            // HeadObject has no body: a 404 for a missing bucket arrives without a code.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                Ok(ArtifactStatus::Missing(format!(
                    "S3 object s3://{}/{key} does not exist (or the bucket does not)",
                    self.bucket
                )))
            }
            Err(err) => Err(anyhow::anyhow!(
                "cannot check S3 object s3://{}/{key}: {}",
                self.bucket,
                aws_sdk_s3::error::DisplayErrorContext(err)
            )),
        }
    }
}

#[async_trait]
impl ArtifactChecker for AwsArtifactChecker {
    async fn check(&self, kind: ArtifactKind, value: &str) -> anyhow::Result<ArtifactStatus> {
        match kind {
            ArtifactKind::EcrImage => self.check_image(value).await,
            ArtifactKind::S3Object => self.check_object(value).await,
        }
    }
}
