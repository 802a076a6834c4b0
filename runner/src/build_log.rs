//! A build's log file (`builds/<uuid>.log`) and the runner's `[prx-ci]` lines in it.
//!
//! The log also holds the output of git and the build shell. The runner's lines are best
//! effort: the log is for people, and failing to write it never fails a build.

use std::io::Write as _;

use anyhow::Context as _;
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
    fn an_unwritable_log_is_not_an_error_for_runner_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::new(dir.path().join("missing/b.log").display().to_string());
        log.line("dropped");
        assert!(log.open().is_err());
    }
}
