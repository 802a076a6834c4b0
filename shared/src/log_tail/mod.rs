//! The last lines of a build's log, as `BuildCompleted.log_tail` carries them (pure): which
//! builds get one, the bounds, and the one way to make one from the end of a log
//! ([`tail_of`]), so every producer (the build-watcher reading CloudWatch Logs, the local
//! runner reading its log file) redacts ([`redact`]) and bounds it the same way.
//! docs/check-runs.md, "The log tail".

pub mod redact;

use prx_ci_proto::v1;

use crate::codebuild::build::FinalStatus;
pub use redact::Redactor;

/// Most lines a tail holds.
pub const MAX_LINES: usize = 50;
/// Most bytes a tail's lines hold together (each line counted with its line break).
pub const MAX_BYTES: usize = 8 * 1024;
/// Longest line kept, in characters; a longer one is cut and ends with [`CUT_MARK`]. At most
/// 4 bytes a character, so a line always fits in [`MAX_BYTES`].
pub const MAX_LINE_CHARS: usize = 500;
/// Longest `unavailable` reason, in characters.
pub const MAX_REASON_CHARS: usize = 300;
/// How much of the end of a log file a producer reads to make a tail: enough for
/// [`MAX_LINES`] lines of up to 1 KiB, so the tail is cut by its own bounds, not by the read.
pub const READ_BYTES: u64 = 64 * 1024;
/// Lines a producer that reads a log by lines (the build-watcher) reads beyond [`MAX_LINES`],
/// so redaction sees what comes before the kept lines (a private key's `BEGIN` line).
pub const CONTEXT_LINES: usize = 10;
/// What ends a line cut to [`MAX_LINE_CHARS`].
pub const CUT_MARK: char = '…';

/// Whether a build that ended with `status` gets a log tail: one that failed, faulted or
/// timed out. A build that succeeded needs none, and a stopped one (by hand or superseded by
/// a newer push) did not fail.
pub fn wants_tail(status: FinalStatus) -> bool {
    matches!(
        status,
        FinalStatus::Failed | FinalStatus::Fault | FinalStatus::TimedOut
    )
}

/// The tail of a log whose end is `text` (whole lines, oldest first; `earlier`: the log has,
/// or may have, lines before `text`): redacted as a whole (so a private key block spanning
/// lines is found, and a secret straddling a bound is masked before the bound cuts it), then
/// the last lines within the bounds. A producer passes more than the bounds keep when it can
/// (the build-watcher [`CONTEXT_LINES`] more lines, the runner [`READ_BYTES`]), so what is
/// kept was redacted with some context before it.
pub fn tail_of(text: &str, earlier: bool, redactor: &Redactor) -> v1::LogTail {
    let redacted = redactor.redact(text);
    let redacted = if earlier {
        redact::mask_leading_key_body(&redacted).into_owned()
    } else {
        redacted
    };
    let lines: Vec<&str> = redacted
        .trim_end_matches('\n')
        .split('\n')
        .map(str::trim_end)
        .collect();
    if lines.iter().all(|l| l.is_empty()) {
        return unavailable(if earlier {
            "the end of the log is blank"
        } else {
            "the log is empty"
        });
    }
    bounded(&lines, earlier)
}

/// The last lines of `lines` within the bounds, each cut to [`MAX_LINE_CHARS`].
fn bounded(lines: &[&str], earlier: bool) -> v1::LogTail {
    let mut kept = Vec::new();
    let mut bytes = 0;
    let mut truncated = earlier;
    for line in lines.iter().rev() {
        let (line, cut) = cap(line, MAX_LINE_CHARS);
        if kept.len() == MAX_LINES || bytes + line.len() + 1 > MAX_BYTES {
            truncated = true;
            break;
        }
        truncated |= cut;
        bytes += line.len() + 1;
        kept.push(line);
    }
    kept.reverse();
    v1::LogTail {
        lines: kept,
        truncated,
        unavailable: String::new(),
    }
}

/// The tail of a log whose end is the end of one long line, `text` (its start cut off by the
/// read, whatever follows it blank): redacted as a whole, then its last characters, starting
/// with [`CUT_MARK`]. Kept only when it is longer than [`MAX_LINE_CHARS`], so what is kept
/// never starts at the read's cut (where the end of a secret could no longer be recognized).
pub fn tail_of_line_end(text: &str, redactor: &Redactor) -> v1::LogTail {
    let redacted = redactor.redact(text);
    let line = redacted.trim_end();
    let line = line.rsplit('\n').next().unwrap_or_default();
    let count = line.chars().count();
    if line.trim().is_empty() || count <= MAX_LINE_CHARS {
        return unavailable("the end of the log is blank");
    }
    let kept: String = std::iter::once(CUT_MARK)
        .chain(line.chars().skip(count - (MAX_LINE_CHARS - 1)))
        .collect();
    v1::LogTail {
        lines: vec![kept],
        truncated: true,
        unavailable: String::new(),
    }
}

/// A tail without lines, saying why (`reason` is cut to [`MAX_REASON_CHARS`] and stripped of
/// terminal controls; it must not hold secrets: it is our own message).
pub fn unavailable(reason: impl AsRef<str>) -> v1::LogTail {
    let reason = redact::strip_terminal_controls(reason.as_ref()).replace('\n', " ");
    let (reason, _) = cap(&reason, MAX_REASON_CHARS);
    v1::LogTail {
        lines: Vec::new(),
        truncated: false,
        unavailable: if reason.trim().is_empty() {
            "unknown".to_owned()
        } else {
            reason
        },
    }
}

fn cap(text: &str, max: usize) -> (String, bool) {
    if text.chars().count() <= max {
        return (text.to_owned(), false);
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push(CUT_MARK);
    (cut, true)
}

/// A tail from another producer (the local runner's, arriving on its report), redacted with
/// `redactor` and bounded again: what reaches an event never exceeds the bounds, whoever made
/// it.
pub fn sanitize(tail: &v1::LogTail, redactor: &Redactor) -> v1::LogTail {
    if tail.lines.is_empty() {
        return unavailable(if tail.unavailable.is_empty() {
            "the log is empty"
        } else {
            &tail.unavailable
        });
    }
    let text = tail.lines.join("\n");
    let mut again = tail_of(&text, tail.truncated, redactor);
    again.truncated |= tail.truncated;
    again
}

#[cfg(test)]
mod tests;
