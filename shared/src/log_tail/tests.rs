use super::*;

fn lines(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn only_builds_that_failed_get_a_tail() {
    assert!(wants_tail(FinalStatus::Failed));
    assert!(wants_tail(FinalStatus::Fault));
    assert!(wants_tail(FinalStatus::TimedOut));
    assert!(!wants_tail(FinalStatus::Succeeded));
    assert!(!wants_tail(FinalStatus::Stopped));
}

#[test]
fn a_short_log_is_kept_whole() {
    let tail = tail_of("one\ntwo\n\nthree  \n", false, &Redactor::default());
    assert_eq!(tail.lines, ["one", "two", "", "three"]);
    assert!(!tail.truncated);
    assert_eq!(tail.unavailable, "");
}

#[test]
fn the_last_lines_are_kept_and_the_cut_is_said() {
    let tail = tail_of(&lines(120), false, &Redactor::default());
    assert_eq!(tail.lines.len(), MAX_LINES);
    assert_eq!(tail.lines[0], "line 71");
    assert_eq!(tail.lines[MAX_LINES - 1], "line 120");
    assert!(tail.truncated);
    // Exactly the bound: nothing cut, unless the log has more before the text.
    let tail = tail_of(&lines(MAX_LINES), false, &Redactor::default());
    assert!(!tail.truncated);
    assert!(tail_of(&lines(3), true, &Redactor::default()).truncated);
}

#[test]
fn lines_are_cut_to_their_bound_and_the_tail_to_its_bytes() {
    let long = "é".repeat(MAX_LINE_CHARS + 10);
    let tail = tail_of(&format!("short\n{long}\n"), false, &Redactor::default());
    assert_eq!(tail.lines[0], "short");
    assert_eq!(tail.lines[1].chars().count(), MAX_LINE_CHARS);
    assert!(tail.lines[1].ends_with(CUT_MARK));
    assert!(tail.truncated);
    // 40 lines of 400 bytes: the byte bound keeps fewer than 50.
    let wide: String = (0..40)
        .map(|i| format!("{i:03}{}\n", "x".repeat(397)))
        .collect();
    let tail = tail_of(&wide, false, &Redactor::default());
    let bytes: usize = tail.lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= MAX_BYTES, "{bytes}");
    assert_eq!(tail.lines.len(), MAX_BYTES / 401);
    assert!(tail.lines.last().unwrap().starts_with("039"));
    assert!(tail.truncated);
}

#[test]
fn the_tail_is_redacted_before_it_is_cut() {
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\nBBBB\n-----END PRIVATE KEY-----";
    let text = format!(
        "{}{key}\necho ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n",
        lines(60)
    );
    let tail = tail_of(&text, false, &Redactor::default());
    assert_eq!(tail.lines[tail.lines.len() - 2], "[REDACTED PRIVATE KEY]");
    assert_eq!(tail.lines[tail.lines.len() - 1], "echo [REDACTED]");
    assert!(tail.lines.iter().all(|l| !l.contains("AAAA")));
}

#[test]
fn a_token_straddling_a_lines_character_bound_is_masked_before_the_line_is_cut() {
    // The token spans characters 491-530: cut first, its first 8 characters would be kept,
    // too few to be recognized.
    let token = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8";
    let text = format!("{} {token} tail\n", "x".repeat(490));
    let tail = tail_of(&text, false, &Redactor::default());
    let line = &tail.lines[0];
    assert_eq!(line.chars().count(), MAX_LINE_CHARS);
    assert!(!line.contains("ghp_"), "{line}");
    assert!(
        line.starts_with(&format!("{} [REDACTE", "x".repeat(490))),
        "{line}"
    );
}

#[test]
fn a_key_straddling_the_byte_bound_is_masked_before_the_bound_cuts_it() {
    // The key's BEGIN line is before the last 8 KiB, its body (no END: the build was killed)
    // fills them: cut first, the body would be kept without its BEGIN line.
    let body: String = (0..20)
        .map(|i| format!("key material line {i:02} {}\n", "m".repeat(420)))
        .collect();
    let text = format!("step 1\n-----BEGIN EC PRIVATE KEY-----\n{body}");
    assert!(body.len() > MAX_BYTES);
    let tail = tail_of(&text, false, &Redactor::default());
    assert_eq!(tail.lines, ["step 1", "[REDACTED PRIVATE KEY]"]);
}

#[test]
fn a_key_body_without_its_markers_at_the_start_of_a_cut_text_is_masked() {
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
    let text = format!("{body}\n{body}\nnpm ERR! signal SIGKILL\n");
    let tail = tail_of(&text, true, &Redactor::default());
    assert_eq!(
        tail.lines,
        ["[REDACTED PRIVATE KEY]", "npm ERR! signal SIGKILL"]
    );
    // At the start of a whole log it is not the rest of a key (nothing was cut before it).
    let tail = tail_of(&text, false, &Redactor::default());
    assert_eq!(tail.lines[0], body);
}

#[test]
fn the_end_of_one_long_line_keeps_its_last_characters() {
    let text = format!("{} AKIAIOSFODNN7EXAMPLE the end\n\n", "y".repeat(2_000));
    let tail = tail_of_line_end(&text, &Redactor::default());
    let line = &tail.lines[0];
    assert_eq!(line.chars().count(), MAX_LINE_CHARS);
    assert!(line.starts_with(CUT_MARK), "{line}");
    assert!(line.ends_with("y [REDACTED] the end"), "{line}");
    assert!(tail.truncated);
    // A line no longer than the bound may start where the read cut it: not kept.
    let short = tail_of_line_end("...hp_abc123 end\n", &Redactor::default());
    assert!(short.lines.is_empty());
    assert_eq!(short.unavailable, "the end of the log is blank");
}

#[test]
fn an_empty_log_says_so() {
    let tail = tail_of("\n\n", false, &Redactor::default());
    assert!(tail.lines.is_empty());
    assert_eq!(tail.unavailable, "the log is empty");
    assert_eq!(
        unavailable("no\nstream \x1b[1mhere").unavailable,
        "no stream here"
    );
    assert_eq!(
        unavailable("x".repeat(1000)).unavailable.chars().count(),
        MAX_REASON_CHARS
    );
}

#[test]
fn a_tail_from_another_producer_is_redacted_and_bounded_again() {
    let foreign = v1::LogTail {
        lines: (0..200)
            .map(|i| format!("{i} token=abc{i} {}", "y".repeat(900)))
            .collect(),
        truncated: false,
        unavailable: String::new(),
    };
    let tail = sanitize(&foreign, &Redactor::default());
    assert!(tail.lines.len() <= MAX_LINES);
    assert!(tail.lines.iter().map(|l| l.len() + 1).sum::<usize>() <= MAX_BYTES);
    assert!(tail.lines.iter().all(|l| l.contains("token=[REDACTED]")));
    assert!(tail.lines.last().unwrap().starts_with("199 "));
    assert!(tail.truncated);
    let missing = v1::LogTail {
        unavailable: "cannot read the build log".into(),
        ..Default::default()
    };
    assert_eq!(
        sanitize(&missing, &Redactor::default()).unavailable,
        "cannot read the build log"
    );
    let kept = v1::LogTail {
        lines: vec!["a".into()],
        truncated: true,
        unavailable: String::new(),
    };
    assert!(sanitize(&kept, &Redactor::default()).truncated);
}
