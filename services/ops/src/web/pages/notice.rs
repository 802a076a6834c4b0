//! What the notifier says about a build, as the build's page shows it (pure): the Slack message
//! its current state renders to (`prx_ci_shared::notice::render`, the notifier's own renderer)
//! as readable HTML, and the GitHub commit status it calls for.
//!
//! The message's text is Slack mrkdwn in which every value was escaped and the only `<`, `>` and
//! `|` are those of its links (`notice::mrkdwn`); here it is read back into elements, every
//! piece of text escaped again by maud, and only `http(s)` links become links.

use maud::{Markup, html};
use prx_ci_shared::notice::commit_status::{self, CommitStatus, DEFAULT_CONTEXT};
use prx_ci_shared::notice::console_links::LinkConfig;
use prx_ci_shared::notice::render::{self, SlackMessage};
use prx_ci_shared::notice::view::BuildView;

/// The notifier's settings the message and status depend on, read from its own section
/// (`[notifier.links]`, `[notifier.statuses] enabled` and `context`; the section's other keys
/// are the notifier's business and ignored here). Defaults: the notifier's.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct NoticeSettings {
    pub links: LinkConfig,
    pub statuses: StatusSettings,
}

/// The part of `[notifier.statuses]` the page needs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct StatusSettings {
    pub enabled: bool,
    pub context: String,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            context: DEFAULT_CONTEXT.to_owned(),
        }
    }
}

/// The Slack message and the commit status section of a build's page: what the notifier
/// renders for the build's current state (without a push's commit list, which it fetches from
/// GitHub).
pub fn section(view: &BuildView, settings: &NoticeSettings) -> Markup {
    let message = render::render(view, None, &settings.links);
    let status = commit_status::desired_status(&settings.statuses.context, view);
    html! {
        h3 { "The Slack message, as rendered now" }
        (slack_message(&message))
        h3 { "The commit status" }
        @if settings.statuses.enabled {
            (self::commit_status(status.as_ref()))
        } @else {
            p.muted { "None: commit statuses are off (" code { "[notifier.statuses] enabled = false" } ")." }
        }
    }
}

/// One piece of a mrkdwn line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Code(String),
    Link { url: String, label: String },
}

/// Slack's three escapes back to characters.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A line split into text, `` `code` `` and `<url|label>` links (escapes undone).
pub fn pieces(line: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        let link = (c == '<')
            .then(|| rest[1..].split_once('>'))
            .flatten()
            .and_then(|(inside, after)| Some((inside.split_once('|')?, after)));
        let code = (c == '`')
            .then(|| rest[1..].split_once('`'))
            .flatten()
            .filter(|(inside, _)| !inside.is_empty());
        if let Some(((url, label), after)) = link {
            flush(&mut text, &mut out);
            out.push(Piece::Link {
                url: url.to_owned(),
                label: unescape(label),
            });
            rest = after;
        } else if let Some((inside, after)) = code {
            flush(&mut text, &mut out);
            out.push(Piece::Code(unescape(inside)));
            rest = after;
        } else {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    flush(&mut text, &mut out);
    out
}

fn flush(text: &mut String, out: &mut Vec<Piece>) {
    if !text.is_empty() {
        out.push(Piece::Text(unescape(text)));
        text.clear();
    }
}

fn line(line: &str) -> Markup {
    html! {
        @for piece in pieces(line) {
            @match piece {
                Piece::Text(t) => (t),
                Piece::Code(c) => code { (c) },
                Piece::Link { url, label } => {
                    @if url.starts_with("https://") || url.starts_with("http://") {
                        a href=(url) rel="noreferrer" { (label) }
                    } @else {
                        (label)
                    }
                },
            }
        }
    }
}

/// The message as HTML: its colour as a word and a bar, the first line (`*...*`) bold, quoted
/// lines (`> `) as quotes, `_..._` lines in italics.
pub fn slack_message(message: &SlackMessage) -> Markup {
    let text = message.mrkdwn();
    let colour = match message.color() {
        prx_ci_shared::notice::render::COLOR_SUCCEEDED => "succeeded",
        prx_ci_shared::notice::render::COLOR_FAILED => "failed",
        _ => "in-progress",
    };
    html! {
        div class=(format!("slack slack-{colour}")) id="slack-message" data-colour=(colour) {
            @for l in text.lines() {
                @if let Some(bold) = l.strip_prefix('*').and_then(|l| l.strip_suffix('*')) {
                    p { strong { (line(bold)) } }
                } @else if let Some(quoted) = l.strip_prefix("&gt; ") {
                    blockquote { (line(quoted)) }
                } @else if let Some(italic) = l.strip_prefix('_').and_then(|l| l.strip_suffix('_')) {
                    p { em { (line(italic)) } }
                } @else {
                    p { (line(l)) }
                }
            }
        }
    }
}

/// The commit status as a definition list; `None` reads as "no status".
pub fn commit_status(status: Option<&CommitStatus>) -> Markup {
    html! {
        @match status {
            None => p.muted { "None: a commit status is posted once the build runs, for builds the dispatcher requested." },
            Some(s) => dl.facts id="commit-status" data-state=(s.state.as_str()) {
                dt { "State" } dd { strong { (s.state.as_str()) } }
                dt { "Context" } dd.mono { (s.context) }
                dt { "Description" } dd { (s.description) }
                dt { "Commit" } dd.mono { (s.repository) " " (s.sha) }
                dt { "Target URL" } dd {
                    @match &s.target_url {
                        Some(url) => a href=(url) rel="noreferrer" { (url) },
                        None => span.muted { "none (GitHub takes only http(s) links; a local log is a file)" },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::notice::commit_status::StatusState;
    use prx_ci_shared::notice::mrkdwn::{escape, link};
    use prx_ci_shared::notice::render::{Attachment, Block, BlockText, COLOR_FAILED};

    use super::*;

    fn message(text: &str) -> SlackMessage {
        SlackMessage {
            text: String::new(),
            attachments: vec![Attachment {
                color: COLOR_FAILED.into(),
                blocks: vec![Block {
                    kind: "section".into(),
                    text: BlockText {
                        kind: "mrkdwn".into(),
                        text: text.into(),
                    },
                }],
            }],
        }
    }

    #[test]
    fn lines_split_into_text_code_and_links() {
        let l = format!(
            "Set `{}` to {} & more",
            escape("/a<b>"),
            link(Some("https://x.test/p?q=1"), "the <page>")
        );
        assert_eq!(
            pieces(&l),
            vec![
                Piece::Text("Set ".into()),
                Piece::Code("/a<b>".into()),
                Piece::Text(" to ".into()),
                Piece::Link {
                    url: "https://x.test/p?q=1".into(),
                    label: "the <page>".into()
                },
                Piece::Text(" & more".into()),
            ]
        );
        // Unbalanced markers stay text.
        assert_eq!(pieces("a ` b"), vec![Piece::Text("a ` b".into())]);
    }

    #[test]
    fn untrusted_text_stays_text_and_only_web_links_are_links() {
        let hostile = "<script>alert(1)</script> <!here> <https://evil|click>";
        let text = format!(
            "*Local » {} {}*\n&gt; {}\n_(commit list unavailable)_",
            link(Some("file:///data/b.log"), "Building"),
            escape(hostile),
            link(Some("javascript:alert(1)"), "x"),
        );
        let html = slack_message(&message(&text)).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("href=\"file:"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("href=\"https://evil"), "{html}");
        assert!(html.contains("<strong>Local » Building"), "{html}");
        assert!(html.contains("<blockquote>x</blockquote>"), "{html}");
        assert!(
            html.contains("<em>(commit list unavailable)</em>"),
            "{html}"
        );
        assert!(html.contains(r#"data-colour="failed""#));
    }

    #[test]
    fn a_commit_status_shows_its_fields() {
        let status = CommitStatus {
            repository: "PRX/app".into(),
            sha: "a".repeat(40),
            context: "prx-ci/x86_64".into(),
            state: StatusState::Failure,
            description: "Build failed in <BUILD>".into(),
            target_url: None,
        };
        let html = commit_status(Some(&status)).into_string();
        assert!(html.contains(r#"data-state="failure""#), "{html}");
        assert!(html.contains("Build failed in &lt;BUILD&gt;"));
        assert!(html.contains("prx-ci/x86_64"));
        assert!(commit_status(None).into_string().contains("None"));
    }

    #[test]
    fn the_settings_are_read_from_the_notifiers_own_section() {
        use figment::providers::{Format as _, Toml};
        let figment = figment::Figment::from(Toml::string(
            "[notifier]\nconcurrency = 4\n[notifier.slack]\nchannel = \"#ci\"\n\
             [notifier.statuses]\nenabled = false\ncontext = \"AWS CodeBuild {region} ({project})\"\nper_minute = 10\n",
        ));
        let settings: NoticeSettings = figment.extract_inner("notifier").unwrap();
        assert!(!settings.statuses.enabled);
        assert_eq!(
            settings.statuses.context,
            "AWS CodeBuild {region} ({project})"
        );
        let defaults: NoticeSettings = figment::Figment::new()
            .extract_inner("notifier")
            .unwrap_or_default();
        assert!(defaults.statuses.enabled);
        assert_eq!(defaults.statuses.context, DEFAULT_CONTEXT);
    }
}
