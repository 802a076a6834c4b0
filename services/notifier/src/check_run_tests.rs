use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::notice::fixtures::{SHA, build_ref, completed, envelope, request, started};

use super::*;

fn view(events: Vec<(&str, Payload)>) -> BuildView {
    let mut view = BuildView::default();
    for (id, payload) in events {
        view.apply(&envelope(id, payload)).unwrap();
    }
    view
}

fn requested() -> Payload {
    Payload::BuildRequested(request())
}

fn run(view: &BuildView) -> CheckRun {
    desired_check_run(&CheckRunConfig::default(), &LinkConfig::default(), view).unwrap()
}

#[test]
fn queued_when_requested_then_in_progress_then_completed() {
    let queued = run(&view(vec![("r", requested())]));
    assert_eq!(
        (queued.status, queued.conclusion),
        (CheckStatus::Queued, None)
    );
    assert_eq!(queued.name, "prx-ci/x86_64");
    assert_eq!(queued.external_id, "req-1");
    assert_eq!(queued.head_sha, SHA);
    assert_eq!(queued.repository, "PRX/my-app");
    assert_eq!(queued.title, "Build requested, waiting to start");

    let running = run(&view(vec![("r", requested()), ("s", started())]));
    assert_eq!(running.status, CheckStatus::InProgress);
    assert_eq!(running.started_at.as_deref(), Some("2026-11-26T08:00:00Z"));
    assert_eq!(running.completed_at, None);

    let done = run(&view(vec![
        ("r", requested()),
        ("s", started()),
        ("c", completed(v1::BuildStatus::Succeeded)),
    ]));
    assert_eq!(
        (done.status, done.conclusion),
        (CheckStatus::Completed, Some(Conclusion::Success))
    );
    assert_eq!(done.title, "Build succeeded in 3m 12s");
    assert_eq!(done.completed_at.as_deref(), Some("2026-11-26T08:00:00Z"));
    // Every write names the same run.
    assert_eq!(
        (&done.name, &done.external_id, &done.head_sha),
        (&queued.name, &queued.external_id, &queued.head_sha)
    );
}

#[test]
fn conclusions_map_every_final_state() {
    let concluded = |status| status_of(&view(vec![("s", started()), ("c", completed(status))]));
    use v1::BuildStatus as S;
    assert_eq!(concluded(S::Succeeded).1, Some(Conclusion::Success));
    assert_eq!(concluded(S::Failed).1, Some(Conclusion::Failure));
    assert_eq!(concluded(S::Fault).1, Some(Conclusion::Failure));
    assert_eq!(concluded(S::TimedOut).1, Some(Conclusion::TimedOut));
    assert_eq!(concluded(S::Stopped).1, Some(Conclusion::Cancelled));
    for status in [S::Succeeded, S::Failed, S::Fault, S::TimedOut, S::Stopped] {
        assert_eq!(concluded(status).0, CheckStatus::Completed);
    }
}

#[test]
fn a_superseded_build_is_cancelled_even_before_it_ran() {
    let cancelled = Payload::BuildCancelled(v1::BuildCancelled {
        build: Some(build_ref()),
        superseded_by_commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
        ..Default::default()
    });
    for events in [
        vec![("r", requested()), ("x", cancelled.clone())],
        vec![
            ("r", requested()),
            ("s", started()),
            ("x", cancelled.clone()),
        ],
    ] {
        let run = run(&view(events));
        assert_eq!(
            (run.status, run.conclusion),
            (CheckStatus::Completed, Some(Conclusion::Cancelled))
        );
        assert_eq!(run.title, "Superseded by abcdef0");
    }
}

#[test]
fn a_build_nobody_requested_gets_no_check_run() {
    let console = Payload::BuildStarted(v1::BuildStarted {
        build: Some(build_ref()),
        ..Default::default()
    });
    let view = view(vec![("s", console)]);
    assert_eq!(
        desired_check_run(&CheckRunConfig::default(), &LinkConfig::default(), &view),
        None
    );
}

#[test]
fn details_link_the_dashboard_then_the_console_then_the_log() {
    let mut view = view(vec![("r", requested())]);
    assert_eq!(
        details_url(
            &view,
            &LinkConfig::default(),
            Some("https://ci.example.org/")
        )
        .as_deref(),
        Some("https://ci.example.org/builds/req-1")
    );
    let links = LinkConfig {
        account_id: Some("123456789012".into()),
        ..LinkConfig::default()
    };
    assert!(
        details_url(&view, &links, None)
            .unwrap()
            .starts_with("https://us-east-1.console.aws.amazon.com/codesuite/codebuild/"),
    );
    // No account known: no console link; the log's web address.
    assert_eq!(
        details_url(&view, &LinkConfig::default(), None).as_deref(),
        Some("https://example.test/log")
    );
    // A local build's file log is no web address: no link at all.
    view.backend = "local".into();
    view.log_url = "file:///tmp/prx-ci/logs/b.log".into();
    assert_eq!(details_url(&view, &links, None), None);
}

#[test]
fn markup_in_build_values_is_escaped_and_fences_cannot_be_closed() {
    assert_eq!(
        escape("[x](https://evil) @team <b>*"),
        "\\[x\\]\\(https\\://evil\\) \\@team \\<b\\>\\*"
    );
    // GitHub renders `$...$` as math; a right-to-left override or a zero-width space would
    // make text read other than it is.
    assert_eq!(escape("$x^2$"), "\\$x^2\\$");
    assert_eq!(escape("main\u{202E}gnp.exe\u{200B}"), "maingnp\\.exe");
    let fenced = fenced("a ``` b\n````\nc");
    assert!(fenced.starts_with("`````text\n"), "{fenced}");
    assert!(fenced.ends_with("\n`````\n"), "{fenced}");
}

#[test]
fn the_body_carries_every_field_github_needs() {
    let done = run(&view(vec![
        ("r", requested()),
        ("s", started()),
        ("c", completed(v1::BuildStatus::Failed)),
    ]));
    let body = done.body();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["conclusion"], "failure");
    assert_eq!(body["external_id"], "req-1");
    assert_eq!(body["name"], "prx-ci/x86_64");
    assert_eq!(body["head_sha"], SHA);
    assert_eq!(body["details_url"], "https://example.test/log");
    assert!(
        body["output"]["summary"]
            .as_str()
            .unwrap()
            .contains("### Log")
    );
    let queued = run(&view(vec![("r", requested())])).body();
    assert!(queued.get("conclusion").is_none());
    assert!(queued.get("completed_at").is_none());
}

#[test]
fn a_huge_summary_is_cut_to_githubs_limit() {
    let mut view = view(vec![("r", requested())]);
    view.failed_phase = Some("BUILD".into());
    view.failure_message = Some("x".repeat(MAX_SUMMARY_BYTES * 2));
    let summary = summary(&view);
    assert_eq!(summary.len(), MAX_SUMMARY_BYTES);
    assert!(summary.ends_with('…'));
}

#[test]
fn the_limit_is_in_bytes_and_a_cut_never_splits_a_character() {
    // Two bytes a character: under the limit in characters, twice over it in bytes.
    let mut view = view(vec![("r", requested())]);
    view.failed_phase = Some("BUILD".into());
    view.failure_message = Some("é".repeat(MAX_SUMMARY_BYTES - 1_000));
    let summary = summary(&view);
    assert!(summary.len() <= MAX_SUMMARY_BYTES, "{}", summary.len());
    assert!(summary.len() > MAX_SUMMARY_BYTES - 4);
    assert!(summary.ends_with("é…"));
    // Three bytes a character, cut at every offset near the limit.
    for extra in 0..4 {
        let text = format!(
            "{}{}",
            "a".repeat(extra),
            "€".repeat(MAX_SUMMARY_BYTES / 3 + 1)
        );
        let cut = truncate(&text, MAX_SUMMARY_BYTES);
        assert!(
            cut.len() <= MAX_SUMMARY_BYTES && cut.ends_with('…'),
            "{extra}"
        );
    }
    assert_eq!(truncate("ab€", 5), "ab€");
    assert_eq!(truncate("ab€c", 5), "ab…");
    assert_eq!(truncate("a€cd", 5), "a…");
}

#[test]
fn the_log_tail_fits_githubs_limit_in_bytes() {
    // 50 lines of 150 three-byte characters: 22,500 bytes, 7,500 characters.
    let lines: Vec<String> = (0..50)
        .map(|i| format!("{i:02} {}", "€".repeat(150)))
        .collect();
    let mut view = failed_with_tail(lines, true);
    view.failed_phase = Some("BUILD".into());
    view.failure_message = Some("x".repeat(MAX_SUMMARY_BYTES - 10_000));
    let text = summary(&view);
    assert!(text.len() <= MAX_SUMMARY_BYTES, "{}", text.len());
    assert!(!text.ends_with('…'), "cut whole lines, not the text");
    assert!(text.contains(&format!("49 {}\n```", "€".repeat(150))));
    assert!(!text.contains(&format!("00 {}", "€".repeat(150))));
}

fn failed_with_tail(lines: Vec<String>, truncated: bool) -> BuildView {
    let mut view = view(vec![
        ("r", requested()),
        ("s", started()),
        ("c", completed(v1::BuildStatus::Failed)),
    ]);
    view.log_tail = Some(prx_ci_shared::notice::view::LogTailView {
        lines,
        truncated,
        unavailable: None,
    });
    view
}

#[test]
fn the_log_tail_is_fenced_so_no_line_of_it_can_close_the_block() {
    let lines = vec![
        "```".to_owned(),
        "``````` still inside".to_owned(),
        "~~~".to_owned(),
        "## not a heading".to_owned(),
    ];
    let text = summary(&failed_with_tail(lines.clone(), false));
    let (_, log) = text.split_once("### Log").unwrap();
    assert!(
        log.contains("The whole log, secrets masked:"),
        "a tail its producer says is whole: {log}"
    );
    let fence = "`".repeat(8);
    let block = format!("{fence}text\n{}\n{fence}\n", lines.join("\n"));
    assert!(log.ends_with(&block), "{log}");
    // A succeeded build shows no log section, tail or not.
    let mut succeeded = failed_with_tail(lines, false);
    succeeded.state = BuildState::Succeeded;
    assert!(!summary(&succeeded).contains("### Log"));
}

#[test]
fn a_cut_tail_says_so_and_an_unavailable_one_says_why() {
    let text = summary(&failed_with_tail(vec!["last".into()], true));
    assert!(
        text.contains("The last 1 line, secrets masked (any earlier lines are not shown"),
        "{text}"
    );
    let mut view = failed_with_tail(Vec::new(), false);
    view.log_tail.as_mut().unwrap().unavailable = Some("reading [it](x) failed".into());
    let text = summary(&view);
    assert!(
        text.ends_with("Its last lines are unavailable: reading \\[it\\]\\(x\\) failed.\n"),
        "{text}"
    );
}

#[test]
fn the_log_tail_gives_up_its_earliest_lines_to_stay_within_githubs_limit() {
    let lines: Vec<String> = (0..50)
        .map(|i| format!("{i:02} {}", "y".repeat(150)))
        .collect();
    let mut view = failed_with_tail(lines, false);
    view.failed_phase = Some("BUILD".into());
    // Leaves room for about 20 of the 50 lines.
    view.failure_message = Some("x".repeat(MAX_SUMMARY_BYTES - 3_500));
    let text = summary(&view);
    assert!(text.len() <= MAX_SUMMARY_BYTES);
    assert!(!text.ends_with('…'), "cut whole lines, not the text");
    assert!(text.contains(&format!("49 {}\n```", "y".repeat(150))));
    assert!(!text.contains(&format!("00 {}", "y".repeat(150))));
    assert!(text.contains("secrets masked (any earlier lines are not shown"));
}

#[test]
fn invisible_characters_are_dropped_by_the_shared_list() {
    assert_eq!(escape("a\u{E0041}\u{E007F}\u{202E}\u{200B}b"), "ab");
}
