//! A build's log file (`builds/<uuid>.log`) and the runner's `[prx-ci]` lines in it.
//!
//! The log also holds the output of git and the build shell. The runner's lines are best
//! effort: the log is for people, and failing to write it never fails a build.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

use anyhow::Context as _;
use prx_ci_proto::v1;
use prx_ci_shared::log_tail::{self, Redactor};
use time::OffsetDateTime;

use prx_ci_shared::codebuild::build::format_codebuild_time;

/// The log of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLog {
    pub path: String,
}

impl BuildLog {
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into() }
    }

    /// Appends a runner line stamped now.
    pub fn line(&self, message: &str) {
        let line = runner_line(OffsetDateTime::now_utc(), message);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(err) = written {
            tracing::warn!(log_path = %self.path, error = %err, "cannot write the build log");
        }
    }

    /// Opens the log for appending (created if missing), e.g. as a child's stdout.
    pub fn open(&self) -> anyhow::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open the build log {}", self.path))
    }
}

impl BuildLog {
    /// The last lines of the log, redacted with `redactor` and bounded
    /// ([`log_tail::tail_of`]), for the final report of a build that did not succeed. Reads at
    /// most [`log_tail::READ_BYTES`] from the end (a line cut by that read is left out, unless
    /// nothing else follows it: then its end is kept, [`log_tail::tail_of_line_end`]); a log
    /// that cannot be read gives a tail marked unavailable.
    pub fn tail(&self, redactor: &Redactor) -> v1::LogTail {
        match read_end(&self.path, log_tail::READ_BYTES) {
            Ok(end) if end.earlier && end.whole_lines().trim().is_empty() => {
                log_tail::tail_of_line_end(&end.text, redactor)
            }
            Ok(end) => log_tail::tail_of(end.whole_lines(), end.earlier, redactor),
            Err(err) => log_tail::unavailable(format!("cannot read the build log: {err}")),
        }
    }
}

/// The end of a log file as read.
#[derive(Debug)]
struct LogEnd {
    /// What was read, as text.
    text: String,
    /// Where its first whole line starts (0 when the read began with the file).
    first_whole: usize,
    /// The file has more before `text`.
    earlier: bool,
}

impl LogEnd {
    /// The whole lines read: the first line, cut by the read, is left out (its rest could
    /// hold the end of a secret that can no longer be recognized).
    fn whole_lines(&self) -> &str {
        &self.text[self.first_whole..]
    }
}

/// The last `max` bytes of the file at `path`.
fn read_end(path: &str, max: u64) -> std::io::Result<LogEnd> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let first_whole = if start == 0 {
        0
    } else {
        text.find('\n').map_or(text.len(), |at| at + 1)
    };
    Ok(LogEnd {
        text,
        first_whole,
        earlier: start > 0,
    })
}

/// A runner line of the log: `[prx-ci] <CodeBuild time> <message>`.
fn runner_line(at: OffsetDateTime, message: &str) -> String {
    format!("[prx-ci] {} {message}\n", format_codebuild_time(at))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn runner_lines_are_stamped_like_codebuild() {
        assert_eq!(
            runner_line(datetime!(2017-09-01 16:12:29 UTC), "Entering phase BUILD"),
            "[prx-ci] Sep 1, 2017 4:12:29 PM Entering phase BUILD\n"
        );
    }

    #[test]
    fn lines_are_appended_after_the_output_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let log = BuildLog::new(path.display().to_string());
        log.line("first");
        log.open().unwrap().write_all(b"build output\n").unwrap();
        log.line("second");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("[prx-ci] ") && lines[0].ends_with(" first"));
        assert_eq!(lines[1], "build output");
        assert!(lines[2].starts_with("[prx-ci] ") && lines[2].ends_with(" second"));
    }

    #[test]
    fn the_tail_is_the_redacted_end_of_the_log_from_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let log = BuildLog::new(path.display().to_string());
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(&format!(
                "output line {i:04} with some padding to make it long\n"
            ));
        }
        text.push_str("deploying with hunter2hunter2\n");
        std::fs::write(&path, &text).unwrap();
        let tail = log.tail(&Redactor::new(["hunter2hunter2".to_owned()]));
        assert_eq!(tail.lines.len(), log_tail::MAX_LINES);
        assert_eq!(tail.lines.last().unwrap(), "deploying with [REDACTED]");
        assert_eq!(
            tail.lines[0],
            "output line 2951 with some padding to make it long"
        );
        assert!(tail.truncated);

        let end = read_end(&path.display().to_string(), 60).unwrap();
        assert!(end.earlier);
        assert_eq!(
            end.whole_lines(),
            "deploying with hunter2hunter2\n",
            "the cut line is left out"
        );
    }

    #[test]
    fn a_log_ending_in_one_line_longer_than_the_read_keeps_that_lines_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let log = BuildLog::new(path.display().to_string());
        let long = "x".repeat(usize::try_from(log_tail::READ_BYTES).unwrap() * 2);
        std::fs::write(
            &path,
            format!("start\n{long} token=hunter2hunter2 the end\n\n"),
        )
        .unwrap();
        let tail = log.tail(&Redactor::default());
        assert_eq!(tail.unavailable, "");
        assert_eq!(tail.lines.len(), 1);
        let line = &tail.lines[0];
        assert!(line.starts_with(log_tail::CUT_MARK), "{line}");
        assert!(line.ends_with(" token=[REDACTED] the end"), "{line}");
        assert_eq!(line.chars().count(), log_tail::MAX_LINE_CHARS);
        assert!(tail.truncated);
    }

    #[test]
    fn a_missing_log_gives_an_unavailable_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::new(dir.path().join("none.log").display().to_string());
        let tail = log.tail(&Redactor::default());
        assert!(tail.lines.is_empty());
        assert!(
            tail.unavailable.starts_with("cannot read the build log: "),
            "{}",
            tail.unavailable
        );
    }

    #[test]
    fn an_unwritable_log_is_not_an_error_for_runner_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::new(dir.path().join("missing/b.log").display().to_string());
        log.line("dropped");
        assert!(log.open().is_err());
    }
}
