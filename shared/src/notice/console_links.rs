//! Console links of a build (CodeBuild, ECR, S3), wrapped in the IAM Identity Center deep
//! link when configured; every part is encoded for a Slack mrkdwn link.

use crate::codebuild::build::{CODEBUILD_BACKEND, console_build_url};
use crate::codebuild::env;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use serde::Deserialize;

use crate::notice::mrkdwn;
use crate::notice::view::BuildView;

/// Characters JavaScript's `encodeURIComponent` leaves alone (the original's encoding).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// How AWS console links are built (the notifier's section `[notifier.links]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// IAM Identity Center start URL every console link is wrapped in (the original used
    /// `https://d-906713e952.awsapps.com/start`). Default: none, console links are direct.
    pub sso_start_url: Option<String>,
    /// Role of the deep link. Default `AdministratorAccess`.
    pub sso_role_name: String,
    /// AWS account of the builds, used when a build id carries none. Default: none.
    pub account_id: Option<String>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            sso_start_url: None,
            sso_role_name: "AdministratorAccess".to_owned(),
            account_id: None,
        }
    }
}

/// Builds console links, wrapped in the IAM Identity Center deep link when configured.
#[derive(Debug, Clone)]
pub(super) struct Links<'a> {
    config: &'a LinkConfig,
    region: &'a str,
    account: Option<String>,
}

impl<'a> Links<'a> {
    pub(super) fn new(config: &'a LinkConfig, view: &'a BuildView) -> Self {
        // The account: the build ARN's (`arn:aws:codebuild:<region>:<account>:build/...`), else
        // the project's `PRX_AWS_ACCOUNT_ID`, else the configured one.
        let from_arn = view
            .build_id
            .strip_prefix("arn:")
            .and_then(|arn| arn.split(':').nth(3))
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        Self {
            config,
            region: &view.region,
            account: from_arn
                .or_else(|| view.var(env::AWS_ACCOUNT_ID).map(str::to_owned))
                .or_else(|| config.account_id.clone()),
        }
    }

    fn console(&self, url: String) -> String {
        match (&self.config.sso_start_url, &self.account) {
            (Some(start), Some(account)) => format!(
                "{}/#/console?account_id={}&role_name={}&destination={}",
                start.trim_end_matches('/'),
                utf8_percent_encode(account, URI_COMPONENT),
                utf8_percent_encode(&self.config.sso_role_name, URI_COMPONENT),
                utf8_percent_encode(&url, URI_COMPONENT)
            ),
            _ => url,
        }
    }

    /// The account, path-encoded, when console links can be made: the region is part of the
    /// host name, so it must look like one (`us-east-1`), or there is no link.
    fn aws_ready(&self) -> Option<String> {
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        region_ok.then_some(())?;
        self.account.as_deref().map(mrkdwn::segment)
    }

    pub(super) fn codebuild(&self, view: &BuildView) -> Option<String> {
        if view.backend != CODEBUILD_BACKEND {
            return None;
        }
        let account = self.aws_ready()?;
        let id = view.build_id.rsplit('/').next()?;
        let (project, uuid) = id.split_once(':')?;
        let project = mrkdwn::segment(if view.project.is_empty() {
            project
        } else {
            &view.project
        });
        let uuid = mrkdwn::segment(uuid);
        Some(self.console(console_build_url(self.region, &account, &project, &uuid)))
    }

    pub(super) fn ecr(&self, repository: &str) -> Option<String> {
        let account = self.aws_ready()?;
        let repository = mrkdwn::path(repository)?;
        let region = self.region;
        Some(self.console(format!(
            "https://{region}.console.aws.amazon.com/ecr/repositories/private/{account}/{repository}?region={region}"
        )))
    }

    pub(super) fn s3(&self, bucket: &str, key: &str) -> Option<String> {
        self.aws_ready()?;
        let (bucket, key) = (mrkdwn::segment(bucket), mrkdwn::query_value(key));
        let region = self.region;
        Some(self.console(format!(
            "https://{region}.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={key}"
        )))
    }
}

/// The CodeBuild console page of a CodeBuild build (wrapped in the IAM Identity Center deep
/// link when configured); `None` for other backends or when the account or region is unknown.
pub fn codebuild_console_url(config: &LinkConfig, view: &BuildView) -> Option<String> {
    Links::new(config, view).codebuild(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_links_use_the_deep_link_wrapper() {
        let config = LinkConfig {
            sso_start_url: Some("https://d-906713e952.awsapps.com/start/".into()),
            sso_role_name: "AdministratorAccess".into(),
            account_id: Some("123456789012".into()),
        };
        let view = BuildView {
            region: "us-west-2".into(),
            ..BuildView::default()
        };
        let links = Links::new(&config, &view);
        assert_eq!(
            links.ecr("github/prx/app").unwrap(),
            "https://d-906713e952.awsapps.com/start/#/console?account_id=123456789012&role_name=AdministratorAccess&destination=https%3A%2F%2Fus-west-2.console.aws.amazon.com%2Fecr%2Frepositories%2Fprivate%2F123456789012%2Fgithub%2Fprx%2Fapp%3Fregion%3Dus-west-2"
        );
    }
}
