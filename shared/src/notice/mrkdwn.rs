//! Slack mrkdwn building blocks (pure): the one escaper for text, the one link builder, URL
//! component encoding, and link stripping and truncation that never break an escape.
//!
//! Every value a message shows comes from outside: the webhook (PR title, branch, author), the
//! build (exported variables: repository, PR number, image and bucket names, mappings) or
//! GitHub (commit messages). None of it may become Slack markup, so the renderer puts values
//! into text only through [`escape`] and into links only through [`link`] and the encoders
//! below; the only `<`, `>` and `|` of a rendered message are those of its own links.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

/// What an `@` before a broadcast keyword becomes: FULLWIDTH COMMERCIAL AT (U+FF20).
///
/// Slack turns a plain `@channel`, `@here` or `@everyone` (and the legacy `@group`) into a
/// notification when it parses names (`link_names`, or a text object that is not `verbatim`),
/// and `&`/`<`/`>` escaping does not touch it. A lookalike `＠` is not Slack's `@`, so no client
/// pings; unlike a zero-width joiner after the `@` it is one visible character, so readers see
/// the text was altered, nothing strips it on the way (zero-width characters are commonly
/// removed by sanitisers, which would re-arm the mention), and a truncation cannot separate it
/// from the `@` it replaces.
pub const NEUTRAL_AT: char = '\u{FF20}';

/// The words after `@` that notify a whole channel (compared ignoring ASCII case).
const BROADCASTS: [&str; 4] = ["channel", "here", "everyone", "group"];

/// Bytes percent-encoded in a link target: everything outside RFC 3986's unreserved and
/// reserved characters and `%` (so `<`, `>`, `|`, whitespace, quotes, controls and non-ASCII,
/// which could end the link or its URL), and `;`, so no `&name;` entity can form inside it.
const LINK_TARGET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'|')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b';');

/// Bytes percent-encoded in one URL component taken from a value (a path segment, a query
/// value): everything but RFC 3986's unreserved characters, so a value can add no segment,
/// query parameter or fragment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// [`COMPONENT`] keeping `/`, for a query value that is itself a path (an S3 key); `/` is
/// allowed in a query and splits nothing there.
const PATH_QUERY_VALUE: &AsciiSet = &COMPONENT.remove(b'/');

/// Escapes a value for Slack mrkdwn: `&`, `<` and `>` become `&amp;`, `&lt;` and `&gt;` (so it
/// can open no link, mention, channel or user group: `<!channel>`, `<@U123>`, `<#C123>`,
/// `<!subteam^S1>`, `<https://evil|click>` all show as typed), and the `@` of a broadcast
/// keyword becomes [`NEUTRAL_AT`] (so `@here` cannot ping either).
///
/// Every `&` of the result begins one of those three entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' if starts_broadcast(&text[i + 1..]) => out.push(NEUTRAL_AT),
            c => out.push(c),
        }
    }
    out
}

fn starts_broadcast(rest: &str) -> bool {
    BROADCASTS.iter().any(|word| {
        rest.get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word))
    })
}

/// A link `<url|label>`: the label escaped (line breaks become spaces, since a link is one
/// line), the URL made safe by [`link_target`]. Without a URL, or with an empty label, the
/// escaped label alone.
pub fn link(url: Option<&str>, label: &str) -> String {
    let label = escape(label).replace(['\n', '\r'], " ");
    match url {
        Some(url) if !url.is_empty() && !label.is_empty() => {
            format!("<{}|{label}>", link_target(url))
        }
        _ => label,
    }
}

/// A URL as the target of a link: percent-encodes what could end the link or inject into it
/// ([`LINK_TARGET`]); an already percent-encoded URL is unchanged. `&` stays as it is: the only
/// `&` left are the URL's own query separators (values are encoded by [`segment`],
/// [`query_value`] or [`path`] first), and `;` is encoded, so none begins an entity.
pub fn link_target(url: &str) -> Cow<'_, str> {
    utf8_percent_encode(url, LINK_TARGET).into()
}

/// One path segment (or a query value) from a value: `/`, `?`, `#`, `&`, `%` and the rest
/// percent-encoded.
pub fn segment(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

/// A query value that is a path (an S3 key): like [`segment`] but keeping `/`.
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, PATH_QUERY_VALUE).to_string()
}

/// A `/`-separated path from a value (`owner/repo`, an ECR repository name), each segment
/// encoded; `None` when a segment is empty, `.` or `..` (which would climb out of the page the
/// link is for).
pub fn path(value: &str) -> Option<String> {
    value
        .split('/')
        .map(|s| (!s.is_empty() && s != "." && s != "..").then(|| segment(s)))
        .collect::<Option<Vec<_>>>()
        .map(|segments| segments.join("/"))
}

/// Replaces every `<url|label>` on one line with `f(url, label)` (the original's
/// `/<.+?\|(.+?)>/g`).
pub fn replace_links(text: &str, f: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let line = &after[..line_end];
        let link = line
            .get(1..)
            .and_then(|l| l.find('|'))
            .map(|p| p + 1)
            .and_then(|bar| {
                // The label has at least one character (of any width).
                let first = line[bar + 1..].chars().next()?.len_utf8();
                let from = bar + 1 + first;
                Some((bar, line[from..].find('>')? + from))
            });
        match link {
            Some((bar, close)) => {
                out.push_str(&rest[..start]);
                out.push_str(&f(&line[..bar], &line[bar + 1..close]));
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cuts `text` to at most `max` characters (never inside one) and, when the cut falls inside
/// an escape (`&am`, `&l`), before that escape, so the end never shows a broken entity.
pub fn truncate(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    if cut.len() < text.len()
        && let Some(amp) = cut.rfind('&')
    {
        let tail = &cut[amp + 1..];
        if ["amp;", "lt;", "gt;"]
            .iter()
            .any(|entity| entity.len() > tail.len() && entity.starts_with(tail))
        {
            cut.truncate(amp);
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What Slack shows for escaped text (its three entities decoded).
    fn shown(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    fn has_broadcast(text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        BROADCASTS
            .iter()
            .any(|word| lower.contains(&format!("@{word}")))
    }

    /// Every `&` begins `&amp;`, `&lt;` or `&gt;`.
    fn entities_whole(text: &str) -> bool {
        text.match_indices('&').all(|(i, _)| {
            ["&amp;", "&lt;", "&gt;"]
                .iter()
                .any(|e| text[i..].starts_with(e))
        })
    }

    /// Text made of the tokens an attacker would try, and anything else.
    fn hostile() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("<!channel>".to_owned()),
            Just("<!here>".to_owned()),
            Just("<!everyone>".to_owned()),
            Just("<@U123>".to_owned()),
            Just("<#C123>".to_owned()),
            Just("<!subteam^S123|team>".to_owned()),
            Just("<https://evil.example|click>".to_owned()),
            Just("@here".to_owned()),
            Just("@Channel".to_owned()),
            Just("@EVERYONE".to_owned()),
            Just("@".to_owned()),
            Just("&".to_owned()),
            Just("&lt;".to_owned()),
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("|".to_owned()),
            Just(";".to_owned()),
            Just("\n".to_owned()),
            any::<char>().prop_map(String::from),
            "[a-z]{1,6}",
        ];
        prop::collection::vec(token, 0..12).prop_map(|parts| parts.concat())
    }

    #[test]
    fn escaping_neutralises_markup_and_broadcasts() {
        assert_eq!(escape("a <b> & c"), "a &lt;b&gt; &amp; c");
        assert_eq!(
            escape("<!channel> <@U123> <#C1> <!subteam^S1|x>"),
            "&lt;!channel&gt; &lt;@U123&gt; &lt;#C1&gt; &lt;!subteam^S1|x&gt;"
        );
        assert_eq!(
            escape("@here @Channel @everyone @group mail@example.com @hereby"),
            "＠here ＠Channel ＠everyone ＠group mail@example.com ＠hereby"
        );
        assert_eq!(escape("&lt;"), "&amp;lt;");
    }

    #[test]
    fn links_carry_no_markup_in_their_label_or_target() {
        assert_eq!(
            link(Some("https://x.test/a?b=1&c=2"), "<!here> & @here"),
            "<https://x.test/a?b=1&c=2|&lt;!here&gt; &amp; ＠here>"
        );
        assert_eq!(
            link(Some("https://x.test/a|b>c <d>;e\n"), "l"),
            "<https://x.test/a%7Cb%3Ec%20%3Cd%3E%3Be%0A|l>"
        );
        assert_eq!(
            link(Some("https://x.test/%3A"), "l"),
            "<https://x.test/%3A|l>"
        );
        assert_eq!(link(None, "<b>"), "&lt;b&gt;");
        assert_eq!(link(Some(""), "b"), "b");
        assert_eq!(link(Some("https://x.test"), ""), "");
        assert_eq!(link(Some("https://x.test"), "a\nb"), "<https://x.test|a b>");
    }

    #[test]
    fn components_cannot_add_segments_queries_or_climb() {
        assert_eq!(segment("a/b?c#d&e=%"), "a%2Fb%3Fc%23d%26e%3D%25");
        assert_eq!(query_value("GitHub/PRX/x y&z"), "GitHub/PRX/x%20y%26z");
        assert_eq!(path("PRX/my-app").as_deref(), Some("PRX/my-app"));
        assert_eq!(path("a b/c?d").as_deref(), Some("a%20b/c%3Fd"));
        for bad in ["", "/a", "a/", "a//b", "../evil", "a/./b", ".."] {
            assert_eq!(path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn truncation_never_cuts_an_escape_in_half() {
        let text = "ab&amp;cd";
        assert_eq!(truncate(text, 2), "ab");
        for max in 3..=6 {
            assert_eq!(truncate(text, max), "ab", "max {max}");
        }
        assert_eq!(truncate(text, 7), "ab&amp;");
        assert_eq!(truncate("x&lt;", 4), "x");
        assert_eq!(truncate("x&lt;", 5), "x&lt;");
        assert_eq!(truncate("é&gt;é", 2), "é");
        assert_eq!(truncate("short", 3000), "short");
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_markup_and_shows_what_was_typed(text in hostile()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.contains('<') && !escaped.contains('>'));
            prop_assert!(!escaped.contains("<!") && !escaped.contains("<@"));
            prop_assert!(!has_broadcast(&escaped), "{escaped:?}");
            prop_assert!(entities_whole(&escaped), "{escaped:?}");
            prop_assert_eq!(
                shown(&escaped).replace(NEUTRAL_AT, "@"),
                text.replace(NEUTRAL_AT, "@")
            );
        }

        #[test]
        fn a_link_is_one_link_to_its_url(url in hostile(), label in hostile()) {
            let url = format!("https://x.test/{url}");
            let rendered = link(Some(&url), &label);
            if label.is_empty() {
                prop_assert_eq!(rendered, "");
            } else {
                // Exactly our own `<`, `|` (the first) and `>`.
                prop_assert!(rendered.starts_with("<https://x.test/"));
                prop_assert!(rendered.ends_with('>'));
                prop_assert_eq!(rendered.matches('<').count(), 1);
                prop_assert_eq!(rendered.matches('>').count(), 1);
                let inner = &rendered[1..rendered.len() - 1];
                let (target, shown_label) = inner.split_once('|').unwrap();
                prop_assert!(!target.contains([';', ' ', '\n']));
                prop_assert!(!has_broadcast(shown_label));
                prop_assert!(entities_whole(shown_label));
                prop_assert_eq!(
                    shown(shown_label).replace(NEUTRAL_AT, "@"),
                    label.replace(NEUTRAL_AT, "@").replace(['\n', '\r'], " ")
                );
                // The guard's link reader finds the same link.
                let read = replace_links(&rendered, |u, l| format!("{u}\u{0}{l}"));
                prop_assert_eq!(read, format!("{target}\u{0}{shown_label}"));
            }
        }

        #[test]
        fn truncating_escaped_text_keeps_every_escape_whole(
            text in hostile(),
            max in 0usize..40,
        ) {
            let cut = truncate(&escape(&text), max);
            prop_assert!(cut.chars().count() <= max);
            prop_assert!(entities_whole(&cut), "{cut:?}");
            prop_assert!(escape(&text).starts_with(&cut));
        }
    }
}
