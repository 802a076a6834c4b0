//! The log tail of a completed build (pure): whether it gets one, where its log is, and the
//! tail made from what the log source returned or from what the local runner reported. The
//! redaction and bounds are `prx_ci_shared::log_tail`'s, the same for every producer.

use prx_ci_proto::v1;
use prx_ci_shared::codebuild::build::{FinalStatus, LOCAL_BACKEND};
use prx_ci_shared::log_tail::{self, Redactor};

use crate::cloudwatch_logs::LogLocation;
use crate::report::Report;
use crate::watched_build::WatchedBuildRecord;

/// Messages asked of the log source: more than a tail holds, so redaction sees the lines
/// before the kept ones (a private key's `BEGIN` line), [`log_tail::CONTEXT_LINES`].
pub const FETCH_MESSAGES: usize = log_tail::MAX_LINES + log_tail::CONTEXT_LINES;

/// How the tail of a completed build is found.
#[derive(Debug, Clone, PartialEq)]
pub enum TailPlan {
    /// The report carries one (the local runner): redacted and bounded again.
    Reported(v1::LogTail),
    /// Read the end of the CodeBuild log at this location.
    Fetch(LogLocation),
    /// None can be had: a tail marked unavailable, with this reason.
    Unavailable(String),
}

/// The plan for the tail of a build completing with `status`; `None` when the build gets
/// no tail (it succeeded or was stopped, [`log_tail::wants_tail`]).
pub fn plan(
    report: &Report,
    status: FinalStatus,
    reported: Option<&v1::LogTail>,
    can_fetch: bool,
) -> Option<TailPlan> {
    if !log_tail::wants_tail(status) {
        return None;
    }
    if let Some(tail) = reported {
        return Some(TailPlan::Reported(tail.clone()));
    }
    if report.backend() == LOCAL_BACKEND {
        return Some(TailPlan::Unavailable(
            "the local runner's report carries no log tail".into(),
        ));
    }
    let Some(location) = location(report) else {
        return Some(TailPlan::Unavailable(
            "the build's report names no CloudWatch Logs stream".into(),
        ));
    };
    Some(if can_fetch {
        TailPlan::Fetch(location)
    } else {
        TailPlan::Unavailable("the build-watcher has no CloudWatch Logs client".into())
    })
}

/// Where a CodeBuild build's log is: the report's `logs` group and stream, else CodeBuild's
/// default (`/aws/codebuild/<project>`, the build's uuid).
pub fn location(report: &Report) -> Option<LogLocation> {
    let logs = report.event.detail.additional_information.logs.as_ref();
    let named = logs
        .map(|l| (l.group_name.trim(), l.stream_name.trim()))
        .filter(|(group, stream)| !group.is_empty() && !stream.is_empty());
    if let Some((group, stream)) = named {
        return Some(LogLocation {
            group: group.to_owned(),
            stream: stream.to_owned(),
        });
    }
    let (project, uuid) = report.build_id.split_once(':')?;
    let project = if report.event.detail.project_name.is_empty() {
        project
    } else {
        &report.event.detail.project_name
    };
    (!project.is_empty() && !uuid.is_empty()).then(|| LogLocation {
        group: format!("/aws/codebuild/{project}"),
        stream: uuid.to_owned(),
    })
}

/// The tail made of the messages a log source returned (oldest first, asked for
/// [`FETCH_MESSAGES`]): all of them are redacted together, the tail's bounds keep the last.
/// Never said to be the whole log: `GetLogEvents` may return fewer events than asked while
/// the stream holds more (it stops at 1 MB, and may even return none), so fewer messages do
/// not prove the log's start was reached.
pub fn from_messages(messages: &[String], redactor: &Redactor) -> v1::LogTail {
    if messages.is_empty() {
        return log_tail::unavailable("CloudWatch Logs returned no lines of the log");
    }
    let text: Vec<&str> = messages
        .iter()
        .map(|m| m.strip_suffix('\n').unwrap_or(m))
        .map(|m| m.strip_suffix('\r').unwrap_or(m))
        .collect();
    log_tail::tail_of(&text.join("\n"), true, redactor)
}

/// What a completion's tail is made from, found once per report before its record is read
/// (the log is read outside the record's compare-and-set, and once however often that is
/// retried).
#[derive(Debug, Clone, PartialEq)]
pub enum TailSource {
    /// The runner's tail, from its report.
    Reported(v1::LogTail),
    /// The messages read from the build's log.
    Fetched(Vec<String>),
    /// None can be had: why (for a failed read, its
    /// [`LogReadError`](crate::cloudwatch_logs::LogReadError), which never carries the error's
    /// details beyond its code).
    Unavailable(String),
}

impl TailSource {
    /// The tail, redacted with `redactor` (the build's record's), and its outcome for
    /// `prx_ci_build_watcher_log_tails{outcome}`.
    pub fn tail(&self, redactor: &Redactor) -> (v1::LogTail, &'static str) {
        match self {
            Self::Reported(tail) => (log_tail::sanitize(tail, redactor), "reported"),
            Self::Fetched(messages) => (from_messages(messages, redactor), "fetched"),
            Self::Unavailable(why) => (log_tail::unavailable(why), "unavailable"),
        }
    }
}

/// The redaction for a build's log: the well-known secret shapes and the values of its
/// secret-looking variables (reported environment, exported variables, the request's
/// environment).
pub fn redactor(record: &WatchedBuildRecord, report: &Report) -> Redactor {
    let environment = report.environment();
    let exported = report.exported_variables();
    let requested = record.request.as_ref().map(|r| &r.environment);
    Redactor::for_variables(
        environment
            .iter()
            .chain(exported.iter())
            .chain(requested.into_iter().flatten())
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudwatch_logs::LogReadError;
    use crate::report::parse_report;

    fn report(build_id: &str, logs: serde_json::Value) -> Report {
        parse_report(
            serde_json::json!({
                "id": "e", "time": "2017-09-01T16:14:28Z", "region": "us-east-1",
                "detail-type": "CodeBuild Build State Change",
                "detail": {
                    "build-status": "FAILED",
                    "build-id": build_id,
                    "project-name": "proj",
                    "additional-information": {
                        "logs": logs,
                        "environment": {"environment-variables": [
                            {"name": "DEPLOY_TOKEN", "value": "tok-1234567890", "type": "PLAINTEXT"},
                            {"name": "PRX_REPO", "value": "PRX/app", "type": "PLAINTEXT"}
                        ]},
                        "exported-environment-variables": [{"name": "OUT_SECRET", "value": "exported-secret-1"}]
                    }
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    const ARN: &str = "arn:aws:codebuild:us-east-1:1:build/proj:6f2c1b8e";

    #[test]
    fn only_failed_builds_get_a_tail_and_the_report_decides_how() {
        let named = report(
            ARN,
            serde_json::json!({"group-name": "/custom", "stream-name": "s1", "deep-link": ""}),
        );
        assert_eq!(plan(&named, FinalStatus::Succeeded, None, true), None);
        assert_eq!(plan(&named, FinalStatus::Stopped, None, true), None);
        assert_eq!(
            plan(&named, FinalStatus::Failed, None, true),
            Some(TailPlan::Fetch(LogLocation {
                group: "/custom".into(),
                stream: "s1".into()
            }))
        );
        assert!(matches!(
            plan(&named, FinalStatus::TimedOut, None, false),
            Some(TailPlan::Unavailable(why)) if why.contains("no CloudWatch Logs client")
        ));
        let reported = v1::LogTail {
            lines: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(
            plan(&named, FinalStatus::Fault, Some(&reported), true),
            Some(TailPlan::Reported(reported))
        );
        let local = report("local:1234", serde_json::json!(null));
        assert!(matches!(
            plan(&local, FinalStatus::Failed, None, true),
            Some(TailPlan::Unavailable(why)) if why.contains("local runner")
        ));
    }

    #[test]
    fn without_named_logs_the_codebuild_default_stream_is_read() {
        let unnamed = report(ARN, serde_json::json!({"deep-link": "https://x"}));
        assert_eq!(
            location(&unnamed),
            Some(LogLocation {
                group: "/aws/codebuild/proj".into(),
                stream: "6f2c1b8e".into()
            })
        );
    }

    #[test]
    fn messages_lose_their_line_breaks_and_are_never_said_to_be_the_whole_log() {
        let few: Vec<String> = vec!["[Container] one\n".into(), "two\r\n".into()];
        let tail = from_messages(&few, &Redactor::default());
        assert_eq!(tail.lines, ["[Container] one", "two"]);
        assert!(
            tail.truncated,
            "fewer events than asked do not prove the log's start"
        );
        let full: Vec<String> = (0..FETCH_MESSAGES).map(|i| format!("m{i}\n")).collect();
        let tail = from_messages(&full, &Redactor::default());
        assert_eq!(tail.lines.len(), log_tail::MAX_LINES);
        assert_eq!(tail.lines[0], format!("m{}", log_tail::CONTEXT_LINES));
        assert!(tail.truncated);
        let none = from_messages(&[], &Redactor::default());
        assert!(none.lines.is_empty());
        assert_eq!(
            none.unavailable,
            "CloudWatch Logs returned no lines of the log"
        );
    }

    #[test]
    fn a_key_whose_begin_line_is_before_the_kept_lines_is_masked() {
        // A build killed while printing a key: its BEGIN line is the first message read, its
        // body fills the kept lines, no END line follows.
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
        let mut messages = vec!["-----BEGIN PRIVATE KEY-----\n".to_owned()];
        messages.extend((1..FETCH_MESSAGES).map(|i| format!("{body}{i:02}\n")));
        let tail = from_messages(&messages, &Redactor::default());
        assert!(
            tail.lines.iter().all(|l| !l.contains("MIIE")),
            "{:?}",
            tail.lines
        );
        assert!(tail.truncated);
    }

    #[test]
    fn the_builds_secret_variables_are_masked() {
        let r = report(ARN, serde_json::json!(null));
        let record = WatchedBuildRecord::default();
        let tail = from_messages(
            &["using tok-1234567890 and exported-secret-1 for PRX/app".into()],
            &redactor(&record, &r),
        );
        assert_eq!(tail.lines, ["using [REDACTED] and [REDACTED] for PRX/app"]);
    }

    #[test]
    fn a_read_error_gives_an_unavailable_tail() {
        let location = LogLocation {
            group: "/g".into(),
            stream: "s".into(),
        };
        let (tail, outcome) = TailSource::Unavailable(LogReadError::NotFound(location).to_string())
            .tail(&Redactor::default());
        assert_eq!(outcome, "unavailable");
        assert!(tail.lines.is_empty());
        assert_eq!(tail.unavailable, "log stream /g/s does not exist");
    }
}
