//! Naming builds: the backends, build ids and ARNs, the source version a build checks out,
//! final statuses, CodeBuild's time format, and the console pages a person opens.

use std::fmt;

use prx_ci_proto::v1;
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::domain::{Branch, CommitSha};

/// The backend name of AWS CodeBuild builds (`BuildRef.backend`).
pub const CODEBUILD_BACKEND: &str = "codebuild";
/// The backend name (and project name) of the local runner's builds.
pub const LOCAL_BACKEND: &str = "local";
/// Prefix of the local runner's build ids (`local:<uuid>`).
pub const LOCAL_BUILD_PREFIX: &str = "local:";
/// `backend` of the pseudo builds of a shadow request (`BuildRequested.shadow`): nothing runs,
/// ids are `shadow:<request id>`; never looked up in AWS.
pub const SHADOW_BACKEND: &str = "shadow";

/// Whether a build id belongs to the local runner (never reconciled through AWS).
pub fn is_local_build(build_id: &str) -> bool {
    build_id.starts_with(LOCAL_BUILD_PREFIX)
}

/// The backend a build id belongs to.
pub fn backend_of(build_id: &str) -> &'static str {
    if is_local_build(build_id) {
        LOCAL_BACKEND
    } else {
        CODEBUILD_BACKEND
    }
}

/// The parts of a CodeBuild build ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildArn<'a> {
    pub region: &'a str,
    pub account: &'a str,
    pub project: &'a str,
    pub uuid: &'a str,
}

/// Splits `arn:<partition>:codebuild:<region>:<account>:build/<project>:<uuid>`.
pub fn parse_arn(arn: &str) -> Option<BuildArn<'_>> {
    let mut parts = arn.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next()?;
    if parts.next()? != "codebuild" {
        return None;
    }
    let region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?.strip_prefix("build/")?;
    let (project, uuid) = resource.rsplit_once(':')?;
    Some(BuildArn {
        region,
        account,
        project,
        uuid,
    })
}

/// The id a build is known by whatever the source: CodeBuild ARNs become `<project>:<uuid>`
/// (what `StartBuild`, `StopBuild` and `BatchGetBuilds` use); other ids are kept.
pub fn build_id_of(arn_or_id: &str) -> &str {
    let id = arn_or_id.trim();
    if id.starts_with("arn:")
        && let Some((_, rest)) = id.split_once(":build/")
    {
        return rest;
    }
    id
}

/// The CodeBuild console page of a build. The caller encodes the parts for where the link goes
/// (a URL path segment, Slack mrkdwn).
pub fn console_build_url(region: &str, account: &str, project: &str, uuid: &str) -> String {
    format!(
        "https://{region}.console.aws.amazon.com/codesuite/codebuild/{account}/projects/{project}/build/{project}%3A{uuid}?region={region}"
    )
}

/// The CloudWatch console page of a CodeBuild project's log group (`/aws/codebuild/<project>`,
/// CodeBuild's default), when the region and project read like AWS names (else no link).
pub fn cloudwatch_log_group_url(region: &str, project: &str) -> Option<String> {
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let project_ok = !project.is_empty()
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (region_ok && project_ok).then(|| {
        format!(
            "https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/log-group/$252Faws$252Fcodebuild$252F{project}"
        )
    })
}

/// The CodeBuild console page of a build's log, from its ARN (or its `project:uuid` id, with
/// the account then left empty).
pub fn console_log_url(region: &str, arn_or_id: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    let id = build_id_of(arn_or_id);
    let project = id.split_once(':').map_or(id, |(project, _)| project);
    let account = parse_arn(arn_or_id).map_or("", |a| a.account);
    format!(
        "https://{region}.console.aws.amazon.com/codesuite/codebuild/{account}/projects/{}/build/{}/log?region={region}",
        encode(project),
        encode(id)
    )
}

/// What a build checks out: StartBuild's `sourceVersion`, which a build reads back as
/// `CODEBUILD_SOURCE_VERSION` (the commit it resolved to is `CODEBUILD_RESOLVED_SOURCE_VERSION`).
///
/// The dispatcher sends CodeBuild's reference-and-commit form, `<ref>^{<sha>}`: the exact
/// commit, found with a shallow fetch of that one ref (a bare SHA makes CodeBuild download the
/// whole history to find it, and a fork's commit is only under `refs/pull/<N>/head`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceVersion {
    /// `<ref>^{<sha>}`: commit `commit`, reachable from `git_ref` (`refs/...`).
    RefAt { git_ref: String, commit: CommitSha },
    /// A bare commit id.
    Commit(CommitSha),
    /// A branch or tag name, or `pr/<N>`: resolved when the build starts.
    Name(String),
}

/// Why a text is not a source version a build may be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source version {value:?}: {why}")]
pub struct InvalidSourceVersion {
    value: String,
    why: &'static str,
}

impl SourceVersion {
    /// `refs/pull/<number>/head^{<commit>}`: a pull request's head commit (forks included).
    pub fn pull_request(number: u64, commit: CommitSha) -> Self {
        Self::RefAt {
            git_ref: format!("refs/pull/{number}/head"),
            commit,
        }
    }

    /// `refs/heads/<branch>^{<commit>}`: a pushed commit of a branch.
    pub fn branch(branch: &Branch, commit: CommitSha) -> Self {
        Self::RefAt {
            git_ref: format!("refs/heads/{}", branch.as_str()),
            commit,
        }
    }

    /// Reads any form CodeBuild accepts for a GitHub source: `<ref>^{<sha>}`, a 40-digit SHA,
    /// or a name. Refused: empty text, text git could read as an option or a refspec (a leading
    /// `-`, whitespace, control characters, `:`), and a `^{...}` whose ref is not under `refs/`
    /// or whose commit is not a full SHA.
    pub fn parse(text: &str) -> Result<Self, InvalidSourceVersion> {
        let invalid = |why| InvalidSourceVersion {
            value: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text.starts_with('-') {
            return Err(invalid("starts with '-' (git would read it as an option)"));
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
        {
            return Err(invalid("contains whitespace, a control character or ':'"));
        }
        if let Some((git_ref, rest)) = text.split_once("^{") {
            let sha = rest
                .strip_suffix('}')
                .ok_or_else(|| invalid("expected <ref>^{<commit sha>}"))?;
            let commit = CommitSha::parse(sha)
                .map_err(|_| invalid("the commit in ^{...} must be 40 hex digits"))?;
            if !git_ref.starts_with("refs/") || git_ref.len() == "refs/".len() {
                return Err(invalid(
                    "the ref before ^{...} must be a full ref (refs/...)",
                ));
            }
            if git_ref.contains(['^', '~', '?', '*', '[', '\\']) || git_ref.contains("..") {
                return Err(invalid("the ref before ^{...} is not a valid git ref name"));
            }
            return Ok(Self::RefAt {
                git_ref: git_ref.to_owned(),
                commit,
            });
        }
        Ok(match CommitSha::parse(text) {
            Ok(commit) => Self::Commit(commit),
            Err(_) => Self::Name(text.to_owned()),
        })
    }

    /// The exact commit this version names (`None` for a name, resolved only at build time).
    pub fn commit(&self) -> Option<&CommitSha> {
        match self {
            Self::RefAt { commit, .. } | Self::Commit(commit) => Some(commit),
            Self::Name(_) => None,
        }
    }

    /// The ref to fetch: the ref of `<ref>^{<sha>}`, `refs/pull/<N>/head` for `pr/<N>`, a
    /// name as it is; `None` for a bare commit.
    pub fn fetch_ref(&self) -> Option<String> {
        match self {
            Self::RefAt { git_ref, .. } => Some(git_ref.clone()),
            Self::Commit(_) => None,
            Self::Name(name) => Some(match name.strip_prefix("pr/") {
                Some(number) => format!("refs/pull/{number}/head"),
                None => name.clone(),
            }),
        }
    }
}

impl fmt::Display for SourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RefAt { git_ref, commit } => write!(f, "{git_ref}^{{{commit}}}"),
            Self::Commit(commit) => write!(f, "{commit}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Build and phase statuses as CodeBuild spells them (`build-status`, `phase-status`).
pub mod status {
    pub const IN_PROGRESS: &str = "IN_PROGRESS";
    pub const SUCCEEDED: &str = "SUCCEEDED";
    pub const FAILED: &str = "FAILED";
    pub const FAULT: &str = "FAULT";
    pub const STOPPED: &str = "STOPPED";
    pub const TIMED_OUT: &str = "TIMED_OUT";
}

/// A build's final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinalStatus {
    Succeeded,
    Failed,
    Fault,
    Stopped,
    TimedOut,
}

impl FinalStatus {
    /// Every final status, in CodeBuild's documentation order.
    pub const ALL: [Self; 5] = [
        Self::Succeeded,
        Self::Failed,
        Self::Fault,
        Self::Stopped,
        Self::TimedOut,
    ];

    /// Parses CodeBuild's spelling (`IN_PROGRESS` and unknown text are not final).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// CodeBuild's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => status::SUCCEEDED,
            Self::Failed => status::FAILED,
            Self::Fault => status::FAULT,
            Self::Stopped => status::STOPPED,
            Self::TimedOut => status::TIMED_OUT,
        }
    }

    pub fn to_proto(self) -> v1::BuildStatus {
        match self {
            Self::Succeeded => v1::BuildStatus::Succeeded,
            Self::Failed => v1::BuildStatus::Failed,
            Self::Fault => v1::BuildStatus::Fault,
            Self::Stopped => v1::BuildStatus::Stopped,
            Self::TimedOut => v1::BuildStatus::TimedOut,
        }
    }
}

/// CodeBuild's time format in event details: `Sep 1, 2017 4:12:29 PM` (UTC).
const EVENT_DETAIL_TIME: &[BorrowedFormatItem<'static>] = format_description!(
    "[month repr:short] [day padding:none], [year] [hour repr:12 padding:none]:[minute]:[second] [period]"
);

/// Parses CodeBuild's event-detail time (`Sep 1, 2017 4:12:29 PM`, UTC).
pub fn parse_codebuild_time(text: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(text.trim(), EVENT_DETAIL_TIME)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// Formats a time the way CodeBuild's event details do.
pub fn format_codebuild_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(EVENT_DETAIL_TIME)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:codebuild:us-west-2:123456789012:build/proj:8745a7a9";

    #[test]
    fn arns_split_into_their_parts_and_other_text_does_not() {
        assert_eq!(
            parse_arn(ARN),
            Some(BuildArn {
                region: "us-west-2",
                account: "123456789012",
                project: "proj",
                uuid: "8745a7a9",
            })
        );
        for text in [
            "proj:1",
            "arn:aws:s3:::bucket",
            "arn:aws:codebuild:r:a:project/p",
        ] {
            assert_eq!(parse_arn(text), None, "{text}");
        }
    }

    #[test]
    fn build_ids_come_from_arns_and_other_ids_are_kept() {
        assert_eq!(build_id_of(ARN), "proj:8745a7a9");
        assert_eq!(build_id_of(" proj:1 "), "proj:1");
        assert_eq!(build_id_of("local:abc"), "local:abc");
        assert_eq!(backend_of("local:abc"), LOCAL_BACKEND);
        assert_eq!(backend_of("proj:1"), CODEBUILD_BACKEND);
    }

    #[test]
    fn console_urls() {
        assert_eq!(
            console_build_url("us-west-2", "123456789012", "proj", "8745a7a9"),
            "https://us-west-2.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/proj/build/proj%3A8745a7a9?region=us-west-2"
        );
        assert_eq!(
            console_log_url(
                "us-east-1",
                "arn:aws:codebuild:us-east-1:123456789012:build/infrastructure-ci-Runner2:0b5e-11"
            ),
            "https://us-east-1.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/infrastructure-ci-Runner2/build/infrastructure-ci-Runner2%3A0b5e-11/log?region=us-east-1"
        );
        assert_eq!(
            console_log_url("eu-west-1", "p:1"),
            "https://eu-west-1.console.aws.amazon.com/codesuite/codebuild//projects/p/build/p%3A1/log?region=eu-west-1"
        );
        assert_eq!(
            cloudwatch_log_group_url("us-east-1", "infrastructure-ci-Runner2").as_deref(),
            Some(
                "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/$252Faws$252Fcodebuild$252Finfrastructure-ci-Runner2"
            )
        );
        assert_eq!(cloudwatch_log_group_url("", "p"), None);
        assert_eq!(cloudwatch_log_group_url("us-east-1", "a/b"), None);
        assert_eq!(cloudwatch_log_group_url("evil.example/x", "p"), None);
    }

    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

    #[test]
    fn source_versions_name_the_ref_and_the_exact_commit() {
        let commit = CommitSha::parse(SHA).unwrap();
        let pr = SourceVersion::pull_request(7, commit.clone());
        assert_eq!(pr.to_string(), format!("refs/pull/7/head^{{{SHA}}}"));
        assert_eq!(pr.commit(), Some(&commit));
        assert_eq!(pr.fetch_ref().as_deref(), Some("refs/pull/7/head"));
        let push = SourceVersion::branch(&Branch::new("release/2").unwrap(), commit.clone());
        assert_eq!(push.to_string(), format!("refs/heads/release/2^{{{SHA}}}"));
        assert_eq!(push.fetch_ref().as_deref(), Some("refs/heads/release/2"));
        // What is written is read back, for every form.
        for version in [
            pr,
            push,
            SourceVersion::Commit(commit.clone()),
            SourceVersion::Name("pr/7".into()),
            SourceVersion::Name("main".into()),
        ] {
            assert_eq!(SourceVersion::parse(&version.to_string()), Ok(version));
        }
        let tag = SourceVersion::parse(&format!("refs/tags/v1.0^{{{SHA}}}")).unwrap();
        assert_eq!(tag.commit(), Some(&commit));
        assert_eq!(tag.fetch_ref().as_deref(), Some("refs/tags/v1.0"));
        // Upper-case SHAs are the same commit.
        let upper = SourceVersion::parse(&SHA.to_ascii_uppercase()).unwrap();
        assert_eq!(upper.commit(), Some(&commit));
        assert_eq!(upper.fetch_ref(), None);
        assert_eq!(
            SourceVersion::parse("pr/7").unwrap().fetch_ref().as_deref(),
            Some("refs/pull/7/head")
        );
        assert_eq!(SourceVersion::parse("main").unwrap().commit(), None);
    }

    #[test]
    fn source_versions_git_could_misread_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "empty"),
            ("--upload-pack=touch", "starts with '-'"),
            ("-", "starts with '-'"),
            ("main branch", "whitespace"),
            ("main:refs/heads/x", "':'"),
            ("refs/heads/main^{abc}", "40 hex digits"),
            (&format!("main^{{{SHA}}}"), "full ref"),
            (&format!("refs/^{{{SHA}}}"), "full ref"),
            (&format!("refs/heads/a..b^{{{SHA}}}"), "not a valid git ref"),
            (
                &format!("refs/heads/main^{{{SHA}"),
                "expected <ref>^{<commit sha>}",
            ),
        ] {
            let err = SourceVersion::parse(text).unwrap_err().to_string();
            assert!(err.starts_with("invalid source version"), "{err}");
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn final_statuses_round_trip_and_in_progress_is_not_final() {
        for s in FinalStatus::ALL {
            assert_eq!(FinalStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(FinalStatus::parse(status::IN_PROGRESS), None);
        assert_eq!(FinalStatus::parse("succeeded"), None);
    }

    #[test]
    fn codebuild_times_round_trip() {
        let t = parse_codebuild_time("Sep 1, 2017 4:12:29 PM").unwrap();
        assert_eq!(t.unix_timestamp(), 1_504_282_349);
        assert_eq!(format_codebuild_time(t), "Sep 1, 2017 4:12:29 PM");
        assert_eq!(parse_codebuild_time("2017-09-01T16:12:29Z"), None);
    }
}
