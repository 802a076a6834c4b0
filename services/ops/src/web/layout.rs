//! The page shell every dashboard page shares: head, navigation, the signed-in operator, and the
//! small vendored scripts that keep the `[data-live]` region current and stream a build's log.

use maud::{DOCTYPE, Markup, html};
use prost_types::Timestamp;
use prx_ci_proto::v1::{Architecture, BuildState};
use prx_ci_shared::bus::envelope::from_timestamp;

use crate::auth::Operator;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Builds,
    Branches,
    Parameters,
    Parked,
    Actions,
    Shadow,
    None,
}

/// A whole page: the body is the region the live updates replace when `live_topics` names what
/// it shows (signed-in pages only).
pub fn page(
    title: &str,
    section: Section,
    operator: Option<(&Operator, &str)>,
    live_topics: &str,
    body: Markup,
) -> Markup {
    let link = |href: &str, label: &str, this: Section| {
        html! {
            @if section == this {
                a href=(href) aria-current="page" { strong { (label) } }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · PRX CI" }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/live.js" defer {}
                script src="/assets/log.js" defer {}
            }
            body {
                header.top {
                    span.brand { "PRX CI" }
                    nav aria-label="Pages" {
                        (link("/", "Builds", Section::Builds))
                        (link("/branches", "Branches", Section::Branches))
                        (link("/parameters", "Parameters", Section::Parameters))
                        (link("/parked", "Parked", Section::Parked))
                        (link("/actions", "Actions", Section::Actions))
                        (link("/shadow", "Shadow", Section::Shadow))
                    }
                    @if let Some((operator, csrf)) = operator {
                        span.muted { "signed in as " (operator.name()) }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="content" {
                    // Only signed-in pages with topics listen to `/events` (live.js looks
                    // for this region): the sign-in and error pages would be refused.
                    @if operator.is_some() && !live_topics.is_empty() {
                        div data-live data-topics=(live_topics) { (body) }
                    } @else {
                        div { (body) }
                    }
                }
            }
        }
    }
}

/// A timestamp as `2026-11-30 22:41:49 UTC` ("—" when unknown).
pub fn time(ts: Option<&Timestamp>) -> String {
    let Some(at) = from_timestamp(ts).filter(|_| ts.is_some_and(|t| t.seconds > 0)) else {
        return "—".to_owned();
    };
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    at.format(&format).unwrap_or_else(|_| "—".to_owned())
}

/// Milliseconds as `1.5 s`, `2 min 05 s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A build state as a word with a symbol (readable without colour).
pub fn state(state: BuildState) -> Markup {
    let (symbol, word) = match state {
        BuildState::Requested => ("○", "requested"),
        BuildState::Running => ("◐", "running"),
        BuildState::Succeeded => ("✓", "succeeded"),
        BuildState::Failed => ("✗", "failed"),
        BuildState::Fault => ("✗", "fault"),
        BuildState::Stopped => ("■", "stopped"),
        BuildState::TimedOut => ("✗", "timed out"),
        BuildState::Cancelled => ("⤼", "cancelled"),
        BuildState::Unspecified => ("?", "unknown"),
    };
    let class = format!("status status-{}", state_word(state));
    html! { span class=(class) { span aria-hidden="true" { (symbol) } " " (word) } }
}

/// The word a state is filtered and tested by (`data-status`): the enum's name without prefix.
pub fn state_word(state: BuildState) -> String {
    state
        .as_str_name()
        .trim_start_matches("BUILD_STATE_")
        .to_ascii_lowercase()
}

/// `x86_64` / `aarch64` / "".
pub fn architecture(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::X8664 => "x86_64",
        Architecture::Aarch64 => "aarch64",
        Architecture::Unspecified => "",
    }
}

/// The first 8 characters of a commit.
pub fn short(commit: &str) -> &str {
    prx_ci_shared::domain::short_sha(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(125_000), "2 min 05 s");
        assert_eq!(time(None), "—");
        let at = Timestamp {
            seconds: 1_796_078_509,
            nanos: 0,
        };
        assert_eq!(time(Some(&at)), "2026-11-30 22:41:49 UTC");
        assert_eq!(state_word(BuildState::TimedOut), "timed_out");
    }

    #[test]
    fn untrusted_text_is_escaped() {
        let markup = page(
            "<script>",
            Section::None,
            None,
            "builds",
            html! { p { "<img src=x onerror=alert(1)>" } },
        )
        .into_string();
        assert!(!markup.contains("<img src=x"), "{markup}");
        assert!(markup.contains("&lt;img src=x"));
    }

    #[test]
    fn only_signed_in_pages_with_topics_listen_for_changes() {
        let operator = Operator::authenticated("alice".into());
        let live = page(
            "B",
            Section::Builds,
            Some((&operator, "c")),
            "builds",
            html! {},
        );
        assert!(live.into_string().contains(r#"data-topics="builds""#));
        let sign_in = page("Sign in", Section::None, None, "builds", html! {}).into_string();
        assert!(!sign_in.contains("data-live"), "{sign_in}");
        let error = page("E", Section::None, Some((&operator, "c")), "", html! {}).into_string();
        assert!(!error.contains("data-live"), "{error}");
    }
}
