//! The GitHub check run a build's view calls for (pure, no I/O): its status and conclusion,
//! its details link, and its output (title, Markdown summary).
//!
//! One check run per build and architecture, named by `[notifier.checks] name`
//! (`prx-ci/{arch}`), its `external_id` the build request id, so every write of a build goes
//! to the same run: `queued` when the build is requested, `in_progress` once it runs,
//! `completed` with its conclusion.
//!
//! Every value a build can influence (phase messages, exported values, publisher details)
//! reaches the Markdown only through [`escape`] or [`fenced`], so it renders as text.

use prx_ci_shared::codebuild::env;
use prx_ci_shared::log_tail::redact::is_format_character;
use prx_ci_shared::notice::commit_status::context;
use prx_ci_shared::notice::console_links::{LinkConfig, codebuild_console_url};
use prx_ci_shared::notice::render::format_duration;
use prx_ci_shared::notice::view::{BuildState, BuildView, PublishView};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::CheckRunConfig;

/// GitHub's limit on `output.summary` (and `output.text`), in bytes (of UTF-8).
pub const MAX_SUMMARY_BYTES: usize = 65_535;
/// Longest title written, in bytes (GitHub documents no limit; a title is one line).
const MAX_TITLE_BYTES: usize = 200;
/// What a path segment percent-encodes (all but letters, digits and `-_.~`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Published-parameter lines listed before the rest is counted.
const MAX_PUBLISH_LINES: usize = 100;

/// A check run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

/// A completed check run's conclusion. `neutral` and `skipped` are never used: branch
/// protection counts both as passing, and no build event means either (a build that is not
/// run has no check run; a stopped or failed one must not pass a required check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Success,
    Failure,
    TimedOut,
    Cancelled,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One check run as it should stand on GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckRun {
    /// `owner/repo`.
    pub repository: String,
    pub head_sha: String,
    pub name: String,
    /// The build request id (else the backend's build id): a redelivered or later event of
    /// the build finds its run by it.
    pub external_id: String,
    pub status: CheckStatus,
    pub conclusion: Option<Conclusion>,
    pub details_url: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub title: String,
    pub summary: String,
}

impl CheckRun {
    /// The body of `POST /repos/{o}/{r}/check-runs` (and of its `PATCH`: the same fields, so a
    /// write always sets the whole run).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "name": self.name,
            "head_sha": self.head_sha,
            "external_id": self.external_id,
            "status": self.status.as_str(),
            "output": {"title": self.title, "summary": self.summary},
        });
        if let Some(conclusion) = self.conclusion {
            body["conclusion"] = json!(conclusion.as_str());
        }
        for (field, value) in [
            ("details_url", &self.details_url),
            ("started_at", &self.started_at),
            ("completed_at", &self.completed_at),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        body
    }

    /// A stable digest of the content (a run already showing it is not written again).
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }
}

/// The status and conclusion of a build: `queued` until it runs, `in_progress`, then
/// `completed` (success; failure for a failed build and for the system's own fault, so a
/// required check never passes a build that did not; timed_out; cancelled for a build stopped,
/// superseded by a newer push or by hand).
pub fn status_of(view: &BuildView) -> (CheckStatus, Option<Conclusion>) {
    match view.effective_state() {
        BuildState::Requested => (CheckStatus::Queued, None),
        BuildState::InProgress => (CheckStatus::InProgress, None),
        BuildState::Succeeded => (CheckStatus::Completed, Some(Conclusion::Success)),
        BuildState::Failed | BuildState::Fault => {
            (CheckStatus::Completed, Some(Conclusion::Failure))
        }
        BuildState::TimedOut => (CheckStatus::Completed, Some(Conclusion::TimedOut)),
        BuildState::Stopped => (CheckStatus::Completed, Some(Conclusion::Cancelled)),
    }
}

/// The build's page: the ops dashboard's when `dashboard_url` is set, else the CodeBuild
/// console, else its log link when that is a web address (GitHub refuses others).
pub fn details_url(
    view: &BuildView,
    links: &LinkConfig,
    dashboard_url: Option<&str>,
) -> Option<String> {
    let key = if view.build_request_id.is_empty() {
        &view.build_id
    } else {
        &view.build_request_id
    };
    if let Some(base) = dashboard_url
        && !key.is_empty()
    {
        let key = percent_encoding::utf8_percent_encode(key, SEGMENT);
        return Some(format!("{}/builds/{key}", base.trim_end_matches('/')));
    }
    codebuild_console_url(links, view).or_else(|| web_url(&view.log_url))
}

fn web_url(url: &str) -> Option<String> {
    (url.starts_with("https://") || url.starts_with("http://")).then(|| url.to_owned())
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn rfc3339(at: Option<OffsetDateTime>) -> Option<String> {
    at.and_then(|at| at.format(&Rfc3339).ok())
}

/// The check run the build's current view calls for; `None` for a build nobody requested
/// (nothing vouches for its commit), without a valid commit or repository.
pub fn desired_check_run(
    config: &CheckRunConfig,
    links: &LinkConfig,
    view: &BuildView,
) -> Option<CheckRun> {
    let (repository, sha) = view.requested_commit()?;
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) || !repository.contains('/') {
        return None;
    }
    let external_id = if view.build_request_id.is_empty() {
        view.build_id.clone()
    } else {
        view.build_request_id.clone()
    };
    if external_id.is_empty() {
        return None;
    }
    let (status, conclusion) = status_of(view);
    Some(CheckRun {
        repository: repository.to_owned(),
        head_sha: sha.to_ascii_lowercase(),
        name: context(&config.name, view),
        external_id,
        status,
        conclusion,
        details_url: details_url(view, links, config.dashboard_url.as_deref()),
        started_at: rfc3339(view.started_at),
        completed_at: conclusion.and_then(|_| rfc3339(view.finished_at)),
        title: title(view),
        summary: summary(view),
    })
}

/// One line: where the build is.
pub fn title(view: &BuildView) -> String {
    let phase = view.failed_phase.as_deref();
    let duration = view
        .duration()
        .map(|d| format!(" in {}", format_duration(d)))
        .unwrap_or_default();
    let text = match view.effective_state() {
        BuildState::Requested => "Build requested, waiting to start".to_owned(),
        BuildState::InProgress => match &view.current_phase {
            Some(phase) => format!("Building: {phase}"),
            None => "Building".to_owned(),
        },
        BuildState::Succeeded => format!("Build succeeded{duration}"),
        BuildState::Failed | BuildState::Fault => phase.map_or("Build failed".to_owned(), |p| {
            format!("Build failed in {p}")
        }),
        BuildState::TimedOut => phase.map_or("Build timed out".to_owned(), |p| {
            format!("Build timed out in {p}")
        }),
        BuildState::Stopped => match &view.cancelled {
            Some(c) if !c.by_commit.is_empty() => {
                format!("Superseded by {}", short(&c.by_commit))
            }
            Some(_) => "Superseded by a newer push".to_owned(),
            None => "Build was stopped".to_owned(),
        },
    };
    truncate(&text.replace(['\n', '\r'], " "), MAX_TITLE_BYTES)
}

/// The Markdown summary: what was built, the phases with their durations, the failed phase
/// and its message, what the publisher did with each parameter (or why not), and the log.
pub fn summary(view: &BuildView) -> String {
    let mut out = String::new();
    let (repository, sha) = view
        .requested_commit()
        .unwrap_or((&view.repository, &view.commit));
    let arch = view
        .architecture
        .map(|a| a.as_str().to_owned())
        .or_else(|| view.var(env::TARGET_ARCHITECTURE).map(str::to_owned))
        .unwrap_or_else(|| "x86_64".to_owned());
    let on = match (view.pull_request(), view.var(env::BRANCH)) {
        (Some(pr), _) => format!(" of pull request \\#{}", escape(pr)),
        (None, Some(branch)) => format!(" on branch {}", escape(branch)),
        (None, None) => String::new(),
    };
    let backend = if view.region.is_empty() {
        escape(if view.project.is_empty() {
            &view.backend
        } else {
            &view.project
        })
    } else {
        format!("{} ({})", escape(&view.project), escape(&view.region))
    };
    out.push_str(&format!(
        "**{}** build of {} at {}{on}, on {backend}.\n",
        escape(&arch),
        escape(repository),
        escape(short(sha)),
    ));
    if let Some(duration) = view.duration() {
        out.push_str(&format!("Duration: {}.\n", format_duration(duration)));
    }
    if let Some(c) = &view.cancelled {
        out.push_str(&if c.by_commit.is_empty() {
            "\nStopped: a newer push superseded this build.\n".to_owned()
        } else {
            format!(
                "\nStopped: superseded by the push of {}.\n",
                escape(short(&c.by_commit))
            )
        });
    }

    if !view.phases.is_empty() {
        out.push_str("\n### Phases\n\n| Phase | Status | Duration |\n|---|---|---|\n");
        for phase in &view.phases {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                escape(&phase.name),
                escape(if phase.status.is_empty() {
                    "-"
                } else {
                    &phase.status
                }),
                format_duration(std::time::Duration::from_millis(phase.duration_ms)),
            ));
        }
    }
    if let Some(phase) = &view.failed_phase {
        out.push_str(&format!("\n### Failed in {}\n", escape(phase)));
        // The completion's message, else the failed phase's own.
        let message = view.failure_message.as_deref().or_else(|| {
            view.phases
                .iter()
                .find(|p| &p.name == phase && !p.message.is_empty())
                .map(|p| p.message.as_str())
        });
        if let Some(message) = message {
            out.push('\n');
            out.push_str(&fenced(message));
        }
    }

    if !view.publishes.is_empty() {
        out.push_str("\n### Parameters\n\n");
        for publish in view.publishes.iter().take(MAX_PUBLISH_LINES) {
            out.push_str(&publish_line(publish));
        }
        if view.publishes.len() > MAX_PUBLISH_LINES {
            out.push_str(&format!(
                "- …and {} more\n",
                view.publishes.len() - MAX_PUBLISH_LINES
            ));
        }
    }

    if matches!(
        view.effective_state(),
        BuildState::Failed | BuildState::Fault | BuildState::TimedOut
    ) {
        let room = MAX_SUMMARY_BYTES.saturating_sub(out.len());
        out.push_str(&log_section(view, room));
    }
    truncate(&out, MAX_SUMMARY_BYTES)
}

/// The log section of a build that did not succeed: the link to its log, then its last lines
/// (`view.log_tail`: redacted and bounded by the build-watcher) in a fence no line of them can
/// close, or why they are missing; within `room` bytes (the earliest lines go first). Said to
/// be the whole log only when its producer knows it is (`truncated` false: the local runner
/// read the log from its start); a CloudWatch Logs tail never is.
fn log_section(view: &BuildView, room: usize) -> String {
    let mut out = String::from("\n### Log\n\n");
    match web_url(&view.log_url) {
        Some(url) => out.push_str(&format!("[The build's log]({}).", link_target(&url))),
        None if !view.log_url.is_empty() => {
            out.push_str(&format!("The build's log: {}", escape(&view.log_url)));
        }
        None => out.push_str("The build's log has no link."),
    }
    out.push('\n');
    let Some(tail) = &view.log_tail else {
        out.push_str("\nIts last lines are not shown: the build's completion carries none.\n");
        return out;
    };
    if tail.lines.is_empty() {
        let why = tail.unavailable.as_deref().unwrap_or("unknown");
        out.push_str(&format!(
            "\nIts last lines are unavailable: {}.\n",
            escape(why)
        ));
        return out;
    }
    for skip in 0..tail.lines.len() {
        let shown = &tail.lines[skip..];
        let intro = if tail.truncated || skip > 0 {
            format!(
                "\nThe last {} {}, secrets masked (any earlier lines are not shown, long lines are cut):\n\n",
                shown.len(),
                if shown.len() == 1 { "line" } else { "lines" }
            )
        } else {
            "\nThe whole log, secrets masked:\n\n".to_owned()
        };
        let section = format!("{out}{intro}{}", fenced(&shown.join("\n")));
        if section.len() <= room {
            return section;
        }
    }
    out.push_str("\nIts last lines do not fit in this summary.\n");
    out
}

fn publish_line(p: &PublishView) -> String {
    let what = if p.parameter.is_empty() {
        "Whole build".to_owned()
    } else {
        format!("`{}`", code(&p.parameter))
    };
    let label = if p.label.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(&p.label))
    };
    match &p.skipped {
        None => format!("- {what}{label}: written `{}`\n", code(&p.value)),
        Some(reason) => {
            let mut line = format!(
                "- {what}{label}: skipped, {}",
                escape(&reason.replace('_', " "))
            );
            if !p.superseded_by_commit.is_empty() {
                line.push_str(&format!(" by {}", escape(short(&p.superseded_by_commit))));
            }
            if !p.check.is_empty() {
                line.push_str(&format!(" (check: {})", escape(&p.check)));
            }
            if !p.detail.is_empty() {
                line.push_str(&format!(": {}", escape(&p.detail)));
            }
            line.push('\n');
            line
        }
    }
}

/// Text as Markdown text: every ASCII punctuation character that Markdown (or GitHub's
/// mentions, references and `$` math) reads is backslash-escaped, line breaks become spaces,
/// control and invisible format characters (e.g. a right-to-left override, the list of
/// `prx_ci_shared::log_tail::redact::is_format_character`) are dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '<' | '>' | '#' | '+'
            | '-' | '.' | '!' | '|' | '~' | '@' | '&' | ':' | '"' | '\'' | '=' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || is_format_character(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Text inside a one-backtick code span: backticks and line breaks cannot appear there.
fn code(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '`' => '\'',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .filter(|c| !c.is_control())
        .collect()
}

/// Text in a fenced code block whose fence is longer than any backtick run inside, so the
/// text cannot close it.
pub fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let body: String = text
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    format!("{fence}text\n{}\n{fence}\n", body.trim_end_matches('\n'))
}

/// A link target: only characters that cannot end a Markdown link destination.
fn link_target(url: &str) -> String {
    url.chars()
        .flat_map(|c| match c {
            '(' => "%28".chars().collect::<Vec<_>>(),
            ')' => "%29".chars().collect(),
            ' ' => "%20".chars().collect(),
            '<' => "%3C".chars().collect(),
            '>' => "%3E".chars().collect(),
            c if c.is_control() => vec![],
            c => vec![c],
        })
        .collect()
}

/// `text` within `max` bytes: when longer, cut at a character boundary and ended with `…`.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text[..end].to_owned();
    cut.push('…');
    cut
}

#[cfg(test)]
#[path = "check_run_tests.rs"]
mod tests;
