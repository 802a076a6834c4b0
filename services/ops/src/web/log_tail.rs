//! The live log of a local build (`GET /builds/<key>/log`): the log file the runner writes,
//! streamed as Server-Sent Events from an offset and followed until the build is final.
//!
//! Security: the dashboard reads only files inside `[ops] local_build_logs`. The path comes from
//! an event (`BuildRef.log_url`), so it is resolved (symbolic links, `..`) and refused unless
//! it stays inside that directory; no other path is ever opened.
//!
//! Events: `log` carries a chunk of text (JSON string, at most [`CHUNK_BYTES`] of the file, cut
//! on a character boundary) with the file offset after it as the event id, so a reconnecting
//! `EventSource` (`Last-Event-ID`) resumes where it was; `end` says the build is final and its
//! log was read to the end.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{Session, Web};
use crate::builds_projection::is_final;

/// Most bytes of the file one `log` event carries.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How often a followed log's file is looked at for new output.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why a build's log is not streamed (the text is the answer's body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogRefusal {
    #[error("no build {0} is known")]
    UnknownBuild(String),
    #[error("this build has no log yet")]
    NoLog,
    #[error("this build's log is not a local file (see the links on the build's page)")]
    NotLocal,
    #[error("the dashboard reads no local build logs ([ops] local_build_logs is not set)")]
    NotConfigured,
    #[error("the log file does not exist (yet)")]
    Missing,
    #[error("refused: the build's log is outside [ops] local_build_logs")]
    Outside,
}

impl LogRefusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Outside => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        }
    }
}

impl IntoResponse for LogRefusal {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

/// The file a `file://` log URL names: an absolute path without `..` (pure).
pub fn file_of_url(log_url: &str) -> Result<PathBuf, LogRefusal> {
    if log_url.is_empty() {
        return Err(LogRefusal::NoLog);
    }
    let path = Path::new(
        log_url
            .strip_prefix("file://")
            .ok_or(LogRefusal::NotLocal)?,
    );
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(path.to_owned())
    } else {
        Err(LogRefusal::Outside)
    }
}

/// Whether `path` is inside `root`, both already resolved (pure).
pub fn is_inside(root: &Path, path: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// The log file of `log_url` resolved on disk (symbolic links followed) when it lies inside
/// `root` (itself resolved here) and is a `.log` file; a missing file is
/// [`LogRefusal::Missing`].
pub fn resolve(root: Option<&Path>, log_url: &str) -> Result<PathBuf, LogRefusal> {
    let path = file_of_url(log_url)?;
    let root = root.ok_or(LogRefusal::NotConfigured)?;
    let root = root.canonicalize().map_err(|_| LogRefusal::NotConfigured)?;
    let resolved = match path.canonicalize() {
        Ok(resolved) => resolved,
        // Missing, or not readable: say which only for paths that would be inside.
        Err(_) => {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            return match parent {
                Some(parent) if parent.starts_with(&root) => Err(LogRefusal::Missing),
                _ => Err(LogRefusal::Outside),
            };
        }
    };
    // Only build logs: the runner's data dir also holds build records and driver scripts.
    let is_log = resolved.extension().is_some_and(|e| e == "log");
    if is_inside(&root, &resolved) && is_log && resolved.is_file() {
        Ok(resolved)
    } else {
        Err(LogRefusal::Outside)
    }
}

/// Turns bytes read in pieces into text: a character split between two reads is held back
/// until its end arrives; bytes that are not UTF-8 read as U+FFFD (pure).
#[derive(Debug, Default)]
pub struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `bytes` after what was held back, holding back an incomplete last
    /// character (at most 3 bytes).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.pending);
        let complete = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..complete]).into_owned();
        self.pending.drain(..complete);
        text
    }

    /// Bytes held back (not yet part of any text).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// What is left at the end of the file (an incomplete character reads as U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// How many bytes at the end of `bytes` start a character that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if width > back { back } else { 0 };
    }
    0
}

/// Where a (re)connecting reader starts: the offset of its `Last-Event-ID`, else 0.
pub fn start_offset(headers: &HeaderMap) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /builds/<key>/log`: the build's local log as Server-Sent Events (see the module docs).
pub async fn stream(
    State(web): State<Web>,
    _session: Session,
    UrlPath(key): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let log_url = {
        let projection = web.projection.read().await;
        match projection.build(&key) {
            Some((view, _)) => view.build.map(|b| b.log_url).unwrap_or_default(),
            None => return LogRefusal::UnknownBuild(key).into_response(),
        }
    };
    // A log not written yet is waited for; every open of the file checks its path again.
    match resolve(web.local_build_logs.as_deref(), &log_url) {
        Ok(_) | Err(LogRefusal::Missing) => {}
        Err(refusal) => {
            tracing::info!(build = %key, reason = %refusal, "dashboard: build log not streamed");
            return refusal.into_response();
        }
    }
    let tail = Tail {
        web,
        key,
        log_url,
        offset: start_offset(&headers),
        chunks: Utf8Chunks::default(),
        ended: false,
    };
    let events = futures::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), tail))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The state of one streamed log.
struct Tail {
    web: Web,
    key: String,
    log_url: String,
    /// The file offset read up to.
    offset: u64,
    chunks: Utf8Chunks,
    ended: bool,
}

impl Tail {
    /// The next event; `None` after `end`, when the file cannot be read, or when the service
    /// stops (a followed log must not hold the server's graceful shutdown).
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            // Final before the read: whatever the build wrote before it ended is then read.
            let was_final = self.build_is_final().await;
            let bytes = match self.read().await {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::info!(build = %self.key, error = %err, "dashboard: build log unreadable");
                    return None;
                }
            };
            if !bytes.is_empty() {
                self.offset += bytes.len() as u64;
                let text = self.chunks.push(&bytes);
                if !text.is_empty() {
                    return Some(self.text_event(text));
                }
                continue;
            }
            if was_final {
                self.ended = true;
                let rest = self.chunks.finish();
                if !rest.is_empty() {
                    self.ended = false;
                    return Some(self.text_event(rest));
                }
                return Some(Event::default().event("end").data("the build is final"));
            }
            tokio::select! {
                () = self.web.shutdown.cancelled() => return None,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    fn text_event(&self, text: String) -> Event {
        let resume_at = self.offset - self.chunks.pending() as u64;
        Event::default()
            .event("log")
            .id(resume_at.to_string())
            .json_data(text)
            .unwrap_or_default()
    }

    async fn build_is_final(&self) -> bool {
        let projection = self.web.projection.read().await;
        // A build the projection forgot finished long ago.
        projection
            .build(&self.key)
            .is_none_or(|(view, _)| is_final(view.state()))
    }

    /// Up to [`CHUNK_BYTES`] from the offset (none at the end of the file, or while the file
    /// does not exist).
    async fn read(&self) -> std::io::Result<Vec<u8>> {
        let path = match resolve(self.web.local_build_logs.as_deref(), &self.log_url) {
            Ok(path) => path,
            Err(LogRefusal::Missing) => return Ok(Vec::new()),
            Err(refusal) => return Err(std::io::Error::other(refusal)),
        };
        let mut file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        if len <= self.offset {
            return Ok(Vec::new());
        }
        file.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let want = usize::try_from(len - self.offset).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
        let mut bytes = vec![0; want];
        let mut filled = 0;
        while filled < want {
            let n = file.read(&mut bytes[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        bytes.truncate(filled);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_absolute_file_urls_name_a_file() {
        assert_eq!(
            file_of_url("file:///data/runner/builds/b.log"),
            Ok(PathBuf::from("/data/runner/builds/b.log"))
        );
        assert_eq!(file_of_url(""), Err(LogRefusal::NoLog));
        assert_eq!(
            file_of_url("https://console.aws.amazon.com/x"),
            Err(LogRefusal::NotLocal)
        );
        for bad in [
            "file://relative/b.log",
            "file:///data/runner/../../etc/passwd",
        ] {
            assert_eq!(file_of_url(bad), Err(LogRefusal::Outside), "{bad}");
        }
    }

    #[test]
    fn inside_means_strictly_below_the_root() {
        let root = Path::new("/data/runner");
        assert!(is_inside(root, Path::new("/data/runner/builds/b.log")));
        assert!(!is_inside(root, Path::new("/data/runner")));
        assert!(!is_inside(root, Path::new("/data/runner-other/b.log")));
        assert!(!is_inside(root, Path::new("/etc/passwd")));
    }

    #[test]
    fn files_outside_the_root_or_reached_through_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runner");
        std::fs::create_dir_all(root.join("builds")).unwrap();
        let log = root.join("builds/b.log");
        std::fs::write(&log, "hello").unwrap();
        let outside = dir.path().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        let url = |p: &Path| format!("file://{}", p.display());

        assert_eq!(
            resolve(Some(&root), &url(&log)),
            Ok(log.canonicalize().unwrap())
        );
        assert_eq!(resolve(None, &url(&log)), Err(LogRefusal::NotConfigured));
        assert_eq!(
            resolve(Some(&root), &url(&outside)),
            Err(LogRefusal::Outside)
        );
        assert_eq!(
            resolve(Some(&root), &url(&root.join("builds/later.log"))),
            Err(LogRefusal::Missing)
        );
        assert_eq!(
            resolve(Some(&root), &url(&dir.path().join("nope/x.log"))),
            Err(LogRefusal::Outside)
        );
        // A build's record and driver script beside its log are not logs.
        let record = root.join("builds/b.json");
        std::fs::write(&record, "{\"environment\": {}}").unwrap();
        assert_eq!(
            resolve(Some(&root), &url(&record)),
            Err(LogRefusal::Outside)
        );
        // A directory inside is not a log.
        assert_eq!(
            resolve(Some(&root), &url(&root.join("builds"))),
            Err(LogRefusal::Outside)
        );
        #[cfg(unix)]
        {
            let link = root.join("builds/link.log");
            std::os::unix::fs::symlink(&outside, &link).unwrap();
            assert_eq!(resolve(Some(&root), &url(&link)), Err(LogRefusal::Outside));
        }
        assert_eq!(LogRefusal::Outside.status(), StatusCode::FORBIDDEN);
        assert_eq!(LogRefusal::Missing.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn characters_split_between_reads_are_held_back() {
        let text = "a→é😀z";
        let bytes = text.as_bytes();
        // Every split point gives the same text back, with nothing lost or doubled.
        for cut in 0..=bytes.len() {
            let mut chunks = Utf8Chunks::default();
            let mut out = chunks.push(&bytes[..cut]);
            assert!(chunks.pending() <= 3);
            out.push_str(&chunks.push(&bytes[cut..]));
            assert_eq!(chunks.pending(), 0);
            assert_eq!(out, text, "cut at {cut}");
        }
        // Byte by byte too.
        let mut chunks = Utf8Chunks::default();
        let out: String = bytes.iter().map(|b| chunks.push(&[*b])).collect();
        assert_eq!(out, text);
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_replacement_characters() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.push(b"ok \xff\xfe end"), "ok \u{fffd}\u{fffd} end");
        // An incomplete character at the end of the file.
        assert_eq!(chunks.push(b"x\xe2\x82"), "x");
        assert_eq!(chunks.pending(), 2);
        assert_eq!(chunks.finish(), "\u{fffd}");
        assert_eq!(chunks.pending(), 0);
    }

    #[test]
    fn a_reconnecting_reader_resumes_at_its_last_event_id() {
        let mut headers = HeaderMap::new();
        assert_eq!(start_offset(&headers), 0);
        headers.insert("last-event-id", "1234".parse().unwrap());
        assert_eq!(start_offset(&headers), 1234);
        headers.insert("last-event-id", "junk".parse().unwrap());
        assert_eq!(start_offset(&headers), 0);
    }
}
