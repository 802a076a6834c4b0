//! The Slack message of a build, rendered from its view (pure, no I/O).
//!
//! Keeps everything the original handler showed (reference §5.1: colours, verbs, region
//! nickname, repository, PR link or branch, linked short commit, PR action, author and title,
//! the push's commit list, ECR/S3 lines with console links through the SSO deep-link wrapper,
//! the 3,000-character guard) and adds the duration, the failed phase and its message,
//! superseded builds, and what the publisher did.
//!
//! Security: every value (webhook, exported variable, publisher report, commit) enters the text
//! through [`mrkdwn::escape`] and links through [`mrkdwn::link`], with URL components encoded,
//! so no build can mention anyone or forge a link.

use crate::codebuild::env;
use crate::domain::short_sha;
use serde::{Deserialize, Serialize};

use crate::notice::console_links::{LinkConfig, Links};
use crate::notice::mrkdwn::{self, escape, link, replace_links};
use crate::notice::view::{BuildState, BuildView, PublishView};

/// One commit of a push, as listed in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSummary {
    pub sha: String,
    /// GitHub login of the author, else the git author name.
    pub author: String,
    pub message: String,
}

/// What the message knows about a push's commits (cached in the notifier's record so updates
/// do not fetch again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CommitsCache {
    /// The first page of the comparison, and how many commits it has in total.
    Loaded {
        commits: Vec<CommitSummary>,
        total: u64,
    },
    /// The comparison could not be fetched (the message says so, and is still sent).
    Unavailable { reason: String },
}

/// Slack's limit for the text of one section block (and the original's guard).
pub const MAX_SECTION_CHARS: usize = 3000;

/// Amber: in progress (and anything unknown).
pub const COLOR_IN_PROGRESS: &str = "#daa038";
/// Green: succeeded.
pub const COLOR_SUCCEEDED: &str = "#2eb886";
/// Red: failed, stopped.
pub const COLOR_FAILED: &str = "#a30200";

/// A rendered message: attachment with colour and one mrkdwn section, plus a plain `text`
/// fallback (notifications, clients without attachments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlackMessage {
    pub text: String,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub color: String,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: BlockText,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

impl SlackMessage {
    /// The mrkdwn text of the (only) section.
    pub fn mrkdwn(&self) -> &str {
        self.attachments
            .first()
            .and_then(|a| a.blocks.first())
            .map_or("", |b| b.text.text.as_str())
    }

    pub fn color(&self) -> &str {
        self.attachments.first().map_or("", |a| a.color.as_str())
    }

    /// A stable digest of the content (an update with the same digest is not sent).
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }

    /// Readable multi-line text for logs: links become `label (url)`.
    pub fn to_log_text(&self) -> String {
        let text = replace_links(self.mrkdwn(), |url, label| format!("{label} ({url})"));
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }
}

/// The nickname the original used for a region (falls back to the code).
pub fn region_nickname(region: &str) -> &str {
    match region {
        "us-east-1" => "N. Virginia",
        "us-east-2" => "Ohio",
        "us-west-1" => "N. California",
        "us-west-2" => "Oregon",
        "af-south-1" => "Cape Town",
        "ap-east-1" => "Hong Kong",
        "ap-south-1" => "Mumbai",
        "ap-northeast-3" => "Osaka",
        "ap-northeast-2" => "Seoul",
        "ap-southeast-1" => "Singapore",
        "ap-southeast-2" => "Sydney",
        "ap-northeast-1" => "Tokyo",
        "ca-central-1" => "C. Canada",
        "eu-central-1" => "Frankfurt",
        "eu-west-1" => "Ireland",
        "eu-west-2" => "London",
        "eu-south-1" => "Milan",
        "eu-west-3" => "Paris",
        "eu-north-1" => "Stockholm",
        "me-south-1" => "Bahrain",
        "sa-east-1" => "São Paulo",
        other => other,
    }
}

/// The original's guard: over the limit, links become their labels; still over, the text is
/// cut at the limit (in characters, never inside one, nor inside an escape such as `&amp;`).
pub fn guard_length(text: String) -> String {
    if text.chars().count() <= MAX_SECTION_CHARS {
        return text;
    }
    let stripped = replace_links(&text, |_, label| label.to_owned());
    if stripped.chars().count() <= MAX_SECTION_CHARS {
        return stripped;
    }
    mrkdwn::truncate(&stripped, MAX_SECTION_CHARS)
}

/// A GitHub page of `repository`, which must read `owner/name` in GitHub's characters (anything
/// else gets no link): `kind` is `commit` or `pull`, `id` one path segment.
fn github_url(repository: &str, kind: &str, id: &str) -> Option<String> {
    let github_name = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let (owner, name) = repository.split_once('/')?;
    (github_name(owner) && github_name(name) && !id.is_empty()).then(|| {
        format!(
            "https://github.com/{owner}/{name}/{kind}/{}",
            mrkdwn::segment(id)
        )
    })
}

fn is_zero_sha(sha: &str) -> bool {
    sha.is_empty() || sha.bytes().all(|b| b == b'0')
}

/// `3m 12s`, `45s`, `1h 2m 3s`.
pub fn format_duration(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// The short tag of an image value `repo:[word-]<sha>[-arch]` (the original's intent; its
/// regex misreads SHAs that start with a letter).
pub fn image_tag(value: &str) -> Option<String> {
    let tag = value.rsplit_once(':')?.1;
    let mut parts: Vec<&str> = tag.split('-').collect();
    let is_hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    let position = parts.iter().position(|p| is_hex(p))?;
    parts.drain(..position);
    Some(short_sha(parts.first()?).to_owned())
}

/// The labels of a `LABEL=/p1,/p2;LABEL2=/p3` mapping whose entry splits into exactly two
/// parts (the original's rule).
fn mapping_labels(mapping: &str) -> impl Iterator<Item = &str> {
    mapping.split(';').filter_map(|entry| {
        let parts: Vec<&str> = entry.split('=').collect();
        (parts.len() == 2).then_some(parts[0])
    })
}

/// Renders the message of a build.
pub fn render(
    view: &BuildView,
    commits: Option<&CommitsCache>,
    links: &LinkConfig,
) -> SlackMessage {
    let links = Links::new(links, view);
    let state = view.effective_state();
    let repo = view.var(env::REPO).unwrap_or(&view.repository);
    let sha = view.commit_sha();
    let branch = view.var(env::BRANCH).unwrap_or("unknown");
    let pr = view.pull_request();

    let (verb, color) = match state {
        BuildState::Requested | BuildState::InProgress => ("Building", COLOR_IN_PROGRESS),
        BuildState::Succeeded => ("Built", COLOR_SUCCEEDED),
        BuildState::Failed | BuildState::Fault => ("Failed to build", COLOR_FAILED),
        BuildState::TimedOut => ("Timed out building", COLOR_FAILED),
        BuildState::Stopped => ("Stopped building", COLOR_FAILED),
    };
    let nickname = if view.region.is_empty() {
        "Local"
    } else {
        region_nickname(&view.region)
    };
    let verb_link = links
        .codebuild(view)
        .or_else(|| Some(view.log_url.clone()).filter(|u| !u.is_empty()));

    let mut line1 = vec![format!(
        "{} » {}",
        escape(nickname),
        link(verb_link.as_deref(), verb)
    )];
    if let Some(arch) = view
        .architecture
        .map(|a| a.as_str().to_owned())
        .or_else(|| view.var(env::TARGET_ARCHITECTURE).map(str::to_owned))
    {
        line1.push(escape(&arch));
    }
    line1.push(escape(repo));
    line1.push(match pr {
        Some(n) => link(github_url(repo, "pull", n).as_deref(), &format!("#{n}")),
        None => format!("`{}` branch", escape(branch)),
    });
    line1.push(format!(
        "with commit {}",
        link(github_url(repo, "commit", sha).as_deref(), short_sha(sha))
    ));
    if pr.is_some()
        && let Some(action) = view.var(env::GITHUB_ACTION)
    {
        line1.push(format!("({})", escape(action)));
    }
    let line1 = line1.join(" ");

    let mut more: Vec<String> = Vec::new();
    more.extend(status_lines(view, state, repo));
    more.extend(artifact_lines(view, &links));
    more.extend(view.publishes.iter().map(publish_line));

    if pr.is_some() {
        more.push(format!(
            "> {}: {}",
            escape(view.var(env::GITHUB_PR_AUTHOR).unwrap_or("")),
            escape(view.var(env::GITHUB_PR_TITLE).unwrap_or(""))
        ));
        more.push(format!(
            "Will merge commits from `{}` into `{}`",
            escape(branch),
            escape(view.var(env::GITHUB_PR_BASE_BRANCH).unwrap_or(""))
        ));
    } else if push_range(view).is_some() {
        match commits {
            Some(CommitsCache::Loaded { commits, total }) => {
                for c in commits {
                    let first_line = c.message.lines().next().unwrap_or("");
                    more.push(format!(
                        "> `{}` {}: {}",
                        link(
                            github_url(repo, "commit", &c.sha).as_deref(),
                            short_sha(&c.sha)
                        ),
                        escape(&c.author),
                        escape(first_line)
                    ));
                }
                let hidden = total.saturating_sub(commits.len() as u64);
                if hidden > 0 {
                    more.push(format!(
                        "> …and {hidden} more commit{}",
                        if hidden == 1 { "" } else { "s" }
                    ));
                }
            }
            Some(CommitsCache::Unavailable { .. }) => {
                more.push("_(commit list unavailable)_".to_owned());
            }
            None => {}
        }
    }

    let mut text = format!("*{line1}*");
    if !more.is_empty() {
        text.push('\n');
        text.push_str(&more.join("\n"));
    }
    let text = guard_length(text);
    let fallback = replace_links(&line1, |_, label| label.to_owned());
    SlackMessage {
        text: fallback,
        attachments: vec![Attachment {
            color: color.to_owned(),
            blocks: vec![Block {
                kind: "section".to_owned(),
                text: BlockText {
                    kind: "mrkdwn".to_owned(),
                    text,
                },
            }],
        }],
    }
}

/// The `before...after` of a push build, unless either is missing or all zeros (the original
/// skips the commit list then).
pub fn push_range(view: &BuildView) -> Option<(&str, &str)> {
    if view.pull_request().is_some() {
        return None;
    }
    let before = view.var(env::GITHUB_BEFORE)?;
    let after = view.var(env::GITHUB_AFTER)?;
    (!is_zero_sha(before) && !is_zero_sha(after)).then_some((before, after))
}

fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

fn status_lines(view: &BuildView, state: BuildState, repo: &str) -> Vec<String> {
    let after = view
        .duration()
        .map(|d| format!(" after {}", format_duration(d)))
        .unwrap_or_default();
    let phase = view
        .failed_phase
        .as_deref()
        .map(|p| format!(" in phase `{}`", escape(p)))
        .unwrap_or_default();
    let message = view
        .failure_message
        .as_deref()
        .map(|m| format!(": {}", escape(&one_line(m, 300))))
        .unwrap_or_default();
    let line = match state {
        BuildState::Requested => "» Waiting for the build to start".to_owned(),
        BuildState::InProgress => match &view.current_phase {
            Some(p) => format!("» Running phase `{}`", escape(p)),
            None => return vec![],
        },
        BuildState::Succeeded => match view.duration() {
            Some(d) => format!("» Took {}", format_duration(d)),
            None => return vec![],
        },
        BuildState::Failed => format!("» Failed{phase}{after}{message}"),
        BuildState::Fault => format!("» Build service fault{phase}{after}{message}"),
        BuildState::TimedOut => format!("» Timed out{phase}{after}"),
        BuildState::Stopped => match &view.cancelled {
            Some(c) if !c.by_commit.is_empty() => format!(
                "» Superseded by a newer push: commit {}{after}",
                link(
                    github_url(repo, "commit", &c.by_commit).as_deref(),
                    short_sha(&c.by_commit)
                )
            ),
            Some(_) => format!("» Superseded by a newer push{after}"),
            None => format!("» Stopped{after}"),
        },
    };
    vec![line]
}

fn artifact_lines(view: &BuildView, links: &Links<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(mapping) = view.var(env::SPIRE_ECR_PKG_PARAMETERS) {
        for label in mapping_labels(mapping) {
            let Some(image) = view.var(label) else {
                continue;
            };
            let repository = image.split(':').next().unwrap_or(image);
            let tag = image_tag(image).unwrap_or_default();
            lines.push(format!(
                "» Docker image pushed to {} with tag `{}…`",
                link(links.ecr(repository).as_deref(), "ECR"),
                escape(&tag)
            ));
        }
    }
    if let Some(mapping) = view.var(env::SPIRE_S3_PKG_PARAMETERS) {
        let bucket = view.var(env::APPLICATION_CODE_BUCKET).unwrap_or("");
        for label in mapping_labels(mapping) {
            let Some(key) = view.var(label) else {
                continue;
            };
            lines.push(format!(
                "» Code package pushed to {} bucket `{}`",
                link(links.s3(bucket, key).as_deref(), "S3"),
                escape(bucket)
            ));
        }
    }
    lines
}

fn publish_line(p: &PublishView) -> String {
    let parameter = escape(&p.parameter);
    let value = escape(&p.value);
    let Some(reason) = &p.skipped else {
        return format!("» Set `{parameter}` to `{value}`");
    };
    let why = match reason.as_str() {
        "superseded" if !p.superseded_by_commit.is_empty() => format!(
            "a newer push (`{}`) already set it",
            escape(short_sha(&p.superseded_by_commit))
        ),
        "superseded" => "a newer push already set it".to_owned(),
        "prerelease" => "prerelease build".to_owned(),
        "publishing_disabled" => {
            format!(
                "publishing is disabled (`{}` is not `true`)",
                env::CI_PUBLISH
            )
        }
        "invalid_mapping" => "invalid mapping".to_owned(),
        "label_variable_missing" => format!("variable `{}` is missing", escape(&p.label)),
        "outside_prefix" => "outside the allowed prefix".to_owned(),
        "invalid_parameter_name" => "not a valid parameter name".to_owned(),
        "artifact_missing" => "the artifact does not exist".to_owned(),
        "not_primary_architecture" => "another architecture publishes this push".to_owned(),
        "invalid_value" => "the value does not have the shape Spire CD reads".to_owned(),
        "unordered" => "the build has no push order (not started through CI)".to_owned(),
        "already_published" => return format!("» `{parameter}` already set to `{value}`"),
        _ if !p.detail.is_empty() => escape(&one_line(&p.detail, 200)),
        other => escape(&other.replace('_', " ")),
    };
    if p.parameter.is_empty() {
        format!("» Not published: {why}")
    } else {
        format!("» Did not set `{parameter}`: {why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_strips_links_first_then_truncates() {
        let short_text = "<https://x|a> b".to_owned();
        assert_eq!(guard_length(short_text.clone()), short_text);
        let long_link = format!("<https://example.test/{}|label> tail", "x".repeat(3000));
        assert_eq!(guard_length(long_link), "label tail");
        let long = "y".repeat(3100);
        assert_eq!(guard_length(long).chars().count(), MAX_SECTION_CHARS);
        let multibyte = "é".repeat(3100);
        assert_eq!(guard_length(multibyte).chars().count(), MAX_SECTION_CHARS);
    }

    #[test]
    fn the_guard_never_cuts_an_escape_in_half() {
        let text = format!("{}{}", "y".repeat(MAX_SECTION_CHARS - 2), escape("<!here>"));
        let guarded = guard_length(text);
        assert_eq!(guarded, "y".repeat(MAX_SECTION_CHARS - 2));
        let text = format!("{}{} tail", "y".repeat(MAX_SECTION_CHARS - 5), escape("&"));
        assert!(guard_length(text).ends_with("y&amp;"));
    }

    #[test]
    fn links_are_replaced_only_when_well_formed() {
        let f = |text: &str| replace_links(text, |_, l| l.to_owned());
        assert_eq!(f("<u|l> and <v|m>"), "l and m");
        assert_eq!(f("a < b | c"), "a < b | c");
        assert_eq!(f("<u|\nl>"), "<u|\nl>");
        assert_eq!(f("x <u|l"), "x <u|l");
        assert_eq!(f("<u|é> <v|>>"), "é >");
    }

    #[test]
    fn image_tags_are_read_like_the_original_meant() {
        assert_eq!(
            image_tag("github/prx/my-app:165df6a5fd675dcf67-x86_64").as_deref(),
            Some("165df6a")
        );
        assert_eq!(
            image_tag("github/prx/my-app:release-abc123def4567-aarch64").as_deref(),
            Some("abc123d")
        );
        assert_eq!(image_tag("github/prx/my-app:latest"), None);
        assert_eq!(image_tag("no-tag"), None);
    }

    #[test]
    fn nicknames_and_durations() {
        assert_eq!(region_nickname("us-east-1"), "N. Virginia");
        assert_eq!(region_nickname("sa-east-1"), "São Paulo");
        assert_eq!(region_nickname("xx-new-1"), "xx-new-1");
        let d = std::time::Duration::from_secs;
        assert_eq!(format_duration(d(45)), "45s");
        assert_eq!(format_duration(d(192)), "3m 12s");
        assert_eq!(format_duration(d(3723)), "1h 2m 3s");
        assert_eq!(escape("a <b> & c"), "a &lt;b&gt; &amp; c");
    }
}
