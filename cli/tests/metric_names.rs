//! Every metric the alert rules (`deploy/prometheus/alerts.yml`) and the Grafana board
//! (`deploy/grafana/prx-ci.json`) read is exported by the running services: the system
//! `prx-ci up` runs (every service, one registry, served on the webhook listener's `/metrics`)
//! is started against a real nats-server, before any webhook, and each name the expressions use
//! must have a series there. A name that only appears after its first event would make a rule
//! silently never fire (or miss that first event), so it fails here too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Local;
use prx_ci_shared::testing::wait_until;

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The PromQL expressions of every rule in `alerts.yml`.
fn alert_expressions() -> Vec<(String, String)> {
    let path = repository_file("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = vec![];
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule name")
                .to_owned();
            out.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// The PromQL expressions of the board: every panel target and templating query.
fn board_expressions() -> Vec<(String, String)> {
    let path = repository_file("deploy/grafana/prx-ci.json");
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = vec![];
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            out.push((
                format!("panel {title:?}"),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    for variable in board["templating"]["list"].as_array().expect("templating") {
        if let Some(definition) = variable["definition"].as_str() {
            let name = variable["name"].as_str().unwrap_or_default();
            out.push((format!("variable {name}"), template_selector(definition)));
        }
    }
    out
}

/// The PromQL part of a Grafana template query: `label_values(<selector>, <label>)` selects
/// with `<selector>` (`label_values(<label>)` with nothing); other queries are PromQL.
fn template_selector(query: &str) -> String {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        Some(arguments) => arguments
            .rsplit_once(',')
            .map_or(String::new(), |(selector, _label)| selector.to_owned()),
        None => query.to_owned(),
    }
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The metric names a PromQL expression selects: every identifier outside strings, label
/// matchers (`{...}`), ranges (`[...]`) and label lists (`by (...)`), that is neither a
/// function (followed by `(`), an aggregation, a keyword nor a Grafana variable (`$name`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    fn skip_to(chars: &[char], mut i: usize, close: char) -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                i = skip_string(chars, i);
            } else {
                i += 1;
            }
        }
        i + 1
    }
    fn skip_string(chars: &[char], start: usize) -> usize {
        let quote = chars[start];
        let mut i = start + 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_to(&chars, i + 1, '}');
        } else if c == '[' {
            i = skip_to(&chars, i + 1, ']');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`0.95`, `1e3`, `5m`).
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_to(&chars, next + 1, ')');
                }
            } else if AGGREGATIONS.contains(&lower.as_str())
                || OPERATORS.contains(&lower.as_str())
                || chars.get(next) == Some(&'(')
            {
                // An aggregation, keyword or function.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_tokenizer_finds_the_metric_names_of_an_expression() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"max by (consumer) (min_over_time(a_pending{job=~"$job", x="} b"}[15m])) > 0
               and on (consumer) sum without (le) (rate(b_total[$__rate_interval] offset 5m)) / 1e3"#
        ),
        ["a_pending", "b_total"]
    );
    assert_eq!(
        names(r#"histogram_quantile(0.95, sum by (le) (rate(c_bucket[5m]))) > bool 120"#),
        ["c_bucket"]
    );
    assert_eq!(
        names(&template_selector(
            r#"label_values({__name__=~"prx_ci_.+"}, job)"#
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&template_selector("label_values(e_total{a=\"b\"}, job)")),
        ["e_total"]
    );
    assert!(names(&template_selector("label_values(job)")).is_empty());
    assert_eq!(names("up == 0 unless d:recorded"), ["d:recorded", "up"]);
}

/// The names of the series in an exposition text (`name{labels} value` or `name value`).
fn exported_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Scrapes `url` (exposition text).
async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of each series (`name{labels}` as exported).
fn series_values(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn every_metric_of_the_alert_rules_and_the_board_is_exported_from_the_start() {
    let mut used: Vec<(String, String)> = vec![];
    for (source, expr) in alert_expressions()
        .into_iter()
        .map(|(name, expr)| (format!("alert {name}"), expr))
        .chain(board_expressions())
    {
        let names = metric_names(&expr);
        for name in names {
            used.push((name, source.clone()));
        }
    }
    assert!(
        used.iter().any(|(_, s)| s.starts_with("alert "))
            && used.iter().any(|(_, s)| s.starts_with("panel ")),
        "no names found: {used:?}"
    );

    let local = Local::start().await;
    let metrics_url = local.url.replace("/webhooks/github", "/metrics");
    // The consumer loops start in the background: wait until their series are there, and
    // print what is still missing while waiting (the timeout's panic follows the last list).
    let last_missing = std::sync::Mutex::new(String::new());
    wait_until(
        Duration::from_secs(30),
        "every metric the rules and the board read to be exported (missing: printed above)",
        || {
            let metrics_url = metrics_url.clone();
            let used = &used;
            let last_missing = &last_missing;
            async move {
                let exported = exported_series(&scrape(&metrics_url).await);
                let missing: Vec<String> = used
                    .iter()
                    .filter(|(name, _)| !exported.contains(name))
                    .map(|(name, source)| format!("{name} ({source})"))
                    .collect();
                let text = missing.join("\n  ");
                let mut last = last_missing.lock().unwrap();
                if !missing.is_empty() && *last != text {
                    eprintln!("metrics the rules or the board read, not exported yet:\n  {text}");
                    *last = text;
                }
                missing.is_empty().then_some(())
            }
        },
    )
    .await;
    local.system.stop().await.unwrap();
}

/// The demo's two pushes move the series the rules and the board read: builds started and how
/// long after their webhook, transitions, the applied parameter, handled messages.
#[tokio::test]
async fn the_demo_moves_the_series_the_rules_read() {
    let local = Local::start().await;
    local.run_demo().await;
    // Counters move right after the events the scenario waited for: wait for them too.
    let metrics_url = local.url.replace("/webhooks/github", "/metrics");
    let last_wrong = std::sync::Mutex::new(String::new());
    wait_until(
        Duration::from_secs(30),
        "the series to reach the demo's counts (what is off: printed above)",
        || {
            let metrics_url = metrics_url.clone();
            let last_wrong = &last_wrong;
            async move {
        let values = series_values(&scrape(&metrics_url).await);
        let value = |series: &str| values.get(series).copied().unwrap_or(-1.0);
        let builds_started: f64 = values
            .iter()
            .filter(|(series, _)| series.starts_with("prx_ci_dispatcher_builds_started_total{"))
            .map(|(_, value)| value)
            .sum();
        let expected = [
            ("builds started", builds_started, 2.0),
            (
                "webhook-to-start observations, one per build started",
                value("prx_ci_dispatcher_webhook_to_start_seconds_count"),
                2.0,
            ),
            (
                "builds completed",
                value(r#"prx_ci_build_watcher_transitions_total{kind="completed"}"#),
                2.0,
            ),
            (
                "parameters applied",
                value(r#"prx_ci_publisher_parameters_total{outcome="applied"}"#),
                1.0,
            ),
            (
                "webhooks the dispatcher acked",
                value(r#"prx_ci_consumer_messages_total{consumer="dispatcher",outcome="acked"}"#),
                2.0,
            ),
            (
                "messages the dispatcher parked",
                value(r#"prx_ci_consumer_messages_total{consumer="dispatcher",outcome="parked"}"#),
                0.0,
            ),
            (
                "fence lost after write",
                value("prx_ci_publisher_fence_lost_after_write_total"),
                0.0,
            ),
        ];
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(_, got, want)| got != want)
            .collect();
        if wrong.is_empty() {
            assert!(value("prx_ci_dispatcher_webhook_to_start_seconds_sum") > 0.0);
            return Some(());
        }
        let text = format!("(what, got, expected): {wrong:?}");
        let mut last = last_wrong.lock().unwrap();
        if *last != text {
            eprintln!("{text}");
            *last = text;
        }
        None
            }
        },
    )
    .await;
    local.system.stop().await.unwrap();
}
