//! The GitHub commit status a build's view calls for (pure, no I/O).

use crate::codebuild::env;
use serde::{Deserialize, Serialize};

use crate::notice::view::{BuildState, BuildView};

/// The default status context (`[notifier.statuses] context`); CodeBuild's own was
/// `AWS CodeBuild <region> (<project>)`.
pub const DEFAULT_CONTEXT: &str = "prx-ci/{arch}";

/// GitHub's limit on a status description.
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// A commit status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }
}

/// One status to write on a commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommitStatus {
    /// `owner/repo`.
    pub repository: String,
    pub sha: String,
    pub context: String,
    pub state: StatusState,
    pub description: String,
    /// The build's log link (only `http(s)` URLs; GitHub rejects others).
    pub target_url: Option<String>,
}

impl CommitStatus {
    /// What identifies the status on GitHub: only the newest state per key matters.
    pub fn key(&self) -> (String, String, String) {
        (
            self.repository.clone(),
            self.sha.clone(),
            self.context.clone(),
        )
    }
}

/// The context for a build: `{arch}`, `{region}`, `{project}` of the pattern replaced.
pub fn context(pattern: &str, view: &BuildView) -> String {
    let arch = view
        .architecture
        .map(|a| a.as_str().to_owned())
        .or_else(|| view.var(env::TARGET_ARCHITECTURE).map(str::to_owned))
        .unwrap_or_else(|| "x86_64".to_owned());
    let region = if view.region.is_empty() {
        "local"
    } else {
        &view.region
    };
    let project = if view.project.is_empty() {
        &view.backend
    } else {
        &view.project
    };
    pattern
        .replace("{arch}", &arch)
        .replace("{region}", region)
        .replace("{project}", project)
}

fn truncate(text: String) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The status the build's current view calls for; `None` before the build runs (a request
/// that never starts leaves the commit alone, like the original), without a valid commit, or
/// for a build nobody requested. `context_pattern` is the [`context`] pattern. It goes to the repository and commit the dispatcher built,
/// whatever the build exported.
pub fn desired_status(context_pattern: &str, view: &BuildView) -> Option<CommitStatus> {
    let (repository, sha) = view.requested_commit()?;
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if !repository.contains('/') {
        return None;
    }
    let phase = view.failed_phase.as_deref();
    let (state, description) = match view.effective_state() {
        BuildState::Requested if view.cancelled.is_none() => return None,
        BuildState::Requested | BuildState::InProgress => {
            (StatusState::Pending, "Build has started running".to_owned())
        }
        BuildState::Succeeded => (StatusState::Success, "Build complete".to_owned()),
        BuildState::Failed | BuildState::Fault => (
            StatusState::Failure,
            phase.map_or("Build failed".to_owned(), |p| {
                format!("Build failed in {p}")
            }),
        ),
        BuildState::TimedOut => (
            StatusState::Failure,
            phase.map_or("Build timed out".to_owned(), |p| {
                format!("Build timed out in {p}")
            }),
        ),
        BuildState::Stopped => match &view.cancelled {
            Some(c) if !c.by_commit.is_empty() => (
                StatusState::Error,
                format!(
                    "Superseded by {}",
                    c.by_commit.get(..7).unwrap_or(&c.by_commit)
                ),
            ),
            Some(_) => (StatusState::Error, "Superseded by a newer push".to_owned()),
            None => (StatusState::Error, "Build was stopped".to_owned()),
        },
    };
    let target_url = Some(view.log_url.clone())
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    Some(CommitStatus {
        repository: repository.to_owned(),
        sha: sha.to_ascii_lowercase(),
        context: context(context_pattern, view),
        state,
        description: truncate(description),
        target_url,
    })
}

#[cfg(test)]
mod tests {
    use prx_ci_proto::v1::{self, envelope::Payload};

    use super::*;
    use crate::notice::fixtures::{SHA, build_ref, completed, envelope, request, started};

    fn status(events: Vec<(&str, Payload)>) -> Option<CommitStatus> {
        let mut view = BuildView::default();
        for (id, payload) in events {
            view.apply(&envelope(id, payload)).unwrap();
        }
        desired_status(DEFAULT_CONTEXT, &view)
    }

    #[test]
    fn pending_then_final_with_context_and_url() {
        let requested = Payload::BuildRequested(v1::BuildRequested {
            build: Some(build_ref()),
            ..Default::default()
        });
        assert_eq!(status(vec![("r", requested.clone())]), None);
        let pending = status(vec![("r", requested.clone()), ("s", started())]).unwrap();
        assert_eq!(pending.state, StatusState::Pending);
        assert_eq!(pending.description, "Build has started running");
        assert_eq!(pending.context, "prx-ci/x86_64");
        assert_eq!(pending.sha, SHA);
        assert_eq!(
            pending.target_url.as_deref(),
            Some("https://example.test/log")
        );
        let done = status(vec![
            ("s", started()),
            ("c", completed(v1::BuildStatus::Succeeded)),
        ])
        .unwrap();
        assert_eq!(
            (done.state, done.description.as_str()),
            (StatusState::Success, "Build complete")
        );
    }

    #[test]
    fn failures_stops_and_supersessions_say_so() {
        let failed = Payload::BuildCompleted(v1::BuildCompleted {
            requested: Some(request()),
            build: Some(build_ref()),
            status: v1::BuildStatus::Failed as i32,
            failed_phase: "BUILD".into(),
            ..Default::default()
        });
        let s = status(vec![("f", failed)]).unwrap();
        assert_eq!(
            (s.state, s.description.as_str()),
            (StatusState::Failure, "Build failed in BUILD")
        );
        let s = status(vec![("x", completed(v1::BuildStatus::Stopped))]).unwrap();
        assert_eq!(
            (s.state, s.description.as_str()),
            (StatusState::Error, "Build was stopped")
        );
        let cancelled = Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(build_ref()),
            superseded_by_commit: "abcdef0123456789abcdef0123456789abcdef01".into(),
            ..Default::default()
        });
        let s = status(vec![("s", started()), ("c", cancelled)]).unwrap();
        assert_eq!(
            (s.state, s.description.as_str()),
            (StatusState::Error, "Superseded by abcdef0")
        );
    }

    #[test]
    fn context_patterns_and_local_urls() {
        let mut view = BuildView::default();
        view.apply(&envelope("s", started())).unwrap();
        assert_eq!(
            context("AWS CodeBuild {region} ({project})", &view),
            "AWS CodeBuild us-east-1 (infrastructure-ci-Runner2)"
        );
        view.log_url = "file:///tmp/prx-ci/logs/b.log".into();
        let s = desired_status(DEFAULT_CONTEXT, &view).unwrap();
        assert_eq!(s.target_url, None);
    }

    #[test]
    fn statuses_go_to_the_requested_commit_only() {
        let lying: std::collections::HashMap<String, String> = [
            ("PRX_REPO", "Evil/other"),
            ("PRX_COMMIT", "89abcdef0123456789abcdef0123456789abcdef"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let done = |requested| {
            Payload::BuildCompleted(v1::BuildCompleted {
                requested,
                build: Some(build_ref()),
                status: v1::BuildStatus::Succeeded as i32,
                variables: lying.clone(),
                exported_variables: lying.clone(),
                ..Default::default()
            })
        };
        let s = status(vec![("c", done(Some(request())))]).unwrap();
        assert_eq!((s.repository.as_str(), s.sha.as_str()), ("PRX/my-app", SHA));
        // Started in the console: nothing vouches for the commit, so no status at all.
        let console = Payload::BuildStarted(v1::BuildStarted {
            build: Some(build_ref()),
            ..Default::default()
        });
        assert_eq!(status(vec![("s", console), ("c", done(None))]), None);
    }
}
