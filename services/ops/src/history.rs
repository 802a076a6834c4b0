//! Which stored events belong to a history query (pure: no I/O); [`crate::history_index`]
//! keeps the answer of every query current.
//!
//! The repository is selected by subject (`prx.webhook.*.<owner>.<repo>`,
//! `prx.*.*.<owner>.<repo>`). Within it, an event belongs to a branch / pull request / commit
//! when its own facts say so (the envelope's ordering key, the commit of its build, the ref or
//! head of its webhook payload), or when it shares the correlation id (the GitHub delivery) of an
//! event that does: a skip decision carries no ordering key, yet it is part of its push's story.

#[cfg(test)]
use std::collections::HashSet;

use prx_ci_proto::v1::{self, Envelope, envelope::Payload, history_request, ordering_key};
use prx_ci_shared::bus::envelope::build_of;
use serde::Deserialize;

/// Shortest commit prefix accepted in a query.
pub const MIN_COMMIT_PREFIX: usize = 7;

/// What part of a repository's history is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryFilter {
    /// Everything of the repository.
    All,
    Branch(String),
    PullRequest(u64),
    /// A full SHA or a prefix (lower case).
    Commit(String),
}

/// A request that makes no sense, phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFilter(pub String);

impl HistoryFilter {
    /// From the request's `oneof filter`.
    pub fn from_proto(filter: Option<&history_request::Filter>) -> Result<Self, InvalidFilter> {
        match filter {
            None => Ok(Self::All),
            Some(history_request::Filter::Branch(b)) if b.is_empty() => {
                Err(InvalidFilter("branch is empty".into()))
            }
            Some(history_request::Filter::Branch(b)) => Ok(Self::Branch(b.clone())),
            Some(history_request::Filter::PullRequest(0)) => {
                Err(InvalidFilter("pull request 0 does not exist".into()))
            }
            Some(history_request::Filter::PullRequest(n)) => Ok(Self::PullRequest(*n)),
            Some(history_request::Filter::Commit(c)) => {
                let c = c.trim().to_ascii_lowercase();
                if c.len() < MIN_COMMIT_PREFIX
                    || c.len() > 40
                    || !c.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(InvalidFilter(format!(
                        "commit must be {MIN_COMMIT_PREFIX} to 40 hex digits, not {c:?}"
                    )));
                }
                Ok(Self::Commit(c))
            }
        }
    }
}

/// What a webhook payload says about its ordering key and commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookFacts {
    pub branch: Option<String>,
    pub pull_request: Option<u64>,
    pub commit: Option<String>,
}

#[derive(Deserialize)]
struct PayloadView {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    number: Option<u64>,
    pull_request: Option<PullRequestView>,
}

#[derive(Deserialize)]
struct PullRequestView {
    number: Option<u64>,
    head: Option<HeadView>,
}

#[derive(Deserialize)]
struct HeadView {
    sha: Option<String>,
}

/// Reads the facts of a webhook (push: `ref`/`after`; pull request: number and head SHA).
/// Payloads that are not JSON, or lack the fields, give no facts.
pub fn webhook_facts(webhook: &v1::WebhookReceived) -> WebhookFacts {
    let Ok(view) = serde_json::from_slice::<PayloadView>(&webhook.payload) else {
        return WebhookFacts::default();
    };
    let mut facts = WebhookFacts::default();
    if let Some(pr) = &view.pull_request {
        facts.pull_request = pr.number.or(view.number);
        facts.commit = pr.head.as_ref().and_then(|h| h.sha.clone());
    } else {
        facts.branch = view
            .git_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("refs/heads/"))
            .map(str::to_owned);
        facts.commit = view.after.filter(|sha| sha.bytes().any(|b| b != b'0'));
    }
    facts
}

/// The commit an event is about, if any.
pub fn commit_of(payload: &Payload) -> Option<&str> {
    let commit = match payload {
        Payload::BuildSkipped(p) => p.commit.as_str(),
        other => build_of(other)?.commit.as_str(),
    };
    Some(commit).filter(|c| !c.is_empty())
}

/// What an event says about itself: its branch, pull request and commit (lower case), from
/// the envelope's ordering key and build, or from a webhook's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnFacts {
    pub branch: Option<String>,
    pub pull_request: Option<u64>,
    pub commit: Option<String>,
}

/// The facts of `envelope` (`None` without a payload: it belongs to no branch, PR or commit).
pub fn own_facts(envelope: &Envelope) -> Option<OwnFacts> {
    let payload = envelope.payload.as_ref()?;
    let (branch, pull_request, commit) = match payload {
        Payload::WebhookReceived(w) => {
            let facts = webhook_facts(w);
            (facts.branch, facts.pull_request, facts.commit)
        }
        other => {
            let lane = envelope.ordering_key.as_ref().and_then(|k| k.lane.as_ref());
            let (branch, pr) = match lane {
                Some(ordering_key::Lane::Branch(b)) => (Some(b.clone()), None),
                Some(ordering_key::Lane::PullRequest(n)) => (None, Some(*n)),
                None => (None, None),
            };
            (branch, pr, commit_of(other).map(str::to_owned))
        }
    };
    Some(OwnFacts {
        branch,
        pull_request,
        commit: commit.map(|c| c.to_ascii_lowercase()),
    })
}

#[cfg(test)]
fn matches_own_facts(filter: &HistoryFilter, envelope: &Envelope) -> bool {
    let Some(facts) = own_facts(envelope) else {
        return false;
    };
    match filter {
        HistoryFilter::All => true,
        HistoryFilter::Branch(b) => facts.branch.as_deref() == Some(b.as_str()),
        HistoryFilter::PullRequest(n) => facts.pull_request == Some(*n),
        HistoryFilter::Commit(prefix) => {
            facts.commit.is_some_and(|c| c.starts_with(prefix.as_str()))
        }
    }
}

/// The indexes of `events` (already one repository, in order) that belong to `filter`: the
/// definition [`crate::history_index::HistoryIndex::select`] answers without reading the
/// repository's other events (its tests check it against this).
#[cfg(test)]
pub fn select<'a>(
    filter: &HistoryFilter,
    events: impl IntoIterator<Item = &'a Envelope> + Clone,
) -> Vec<usize> {
    if *filter == HistoryFilter::All {
        return events.into_iter().enumerate().map(|(i, _)| i).collect();
    }
    let correlations: HashSet<&str> = events
        .clone()
        .into_iter()
        .filter(|e| !e.correlation_id.is_empty() && matches_own_facts(filter, e))
        .map(|e| e.correlation_id.as_str())
        .collect();
    events
        .into_iter()
        .enumerate()
        .filter(|(_, e)| {
            correlations.contains(e.correlation_id.as_str()) || matches_own_facts(filter, e)
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(delivery: &str, event: &str, json: &str) -> Envelope {
        Envelope {
            event_id: delivery.into(),
            correlation_id: delivery.into(),
            payload: Some(Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery.into(),
                event_name: event.into(),
                payload: json.as_bytes().to_vec().into(),
                repository: "PRX/app".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn derived(delivery: &str, lane: Option<ordering_key::Lane>, payload: Payload) -> Envelope {
        Envelope {
            event_id: format!("{delivery}-{}", rand_suffix(&payload)),
            correlation_id: delivery.into(),
            ordering_key: lane.map(|lane| v1::OrderingKey {
                repository: "PRX/app".into(),
                lane: Some(lane),
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn rand_suffix(payload: &Payload) -> &'static str {
        prx_ci_shared::bus::subject::EventKind::of(payload).name()
    }

    fn requested(commit: &str) -> Payload {
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(v1::BuildRef {
                commit: commit.into(),
                repository: "PRX/app".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn story() -> Vec<Envelope> {
        let main = ordering_key::Lane::Branch("main".into());
        vec![
            webhook(
                "d1",
                "push",
                r#"{"ref":"refs/heads/main","after":"aaaaaaa111","before":"0000"}"#,
            ),
            webhook(
                "d2",
                "push",
                r#"{"ref":"refs/heads/feature/x","after":"bbbbbbb222"}"#,
            ),
            webhook(
                "d3",
                "pull_request",
                r#"{"action":"opened","number":7,"pull_request":{"number":7,"head":{"sha":"ccccccc333","ref":"feature/x"}}}"#,
            ),
            derived("d1", Some(main.clone()), requested("aaaaaaa111")),
            // A skip carries no ordering key: it joins its push through the correlation id.
            derived(
                "d2",
                None,
                Payload::BuildSkipped(v1::BuildSkipped {
                    repository: "PRX/app".into(),
                    commit: "bbbbbbb222".into(),
                    ..Default::default()
                }),
            ),
            derived(
                "d3",
                Some(ordering_key::Lane::PullRequest(7)),
                requested("ccccccc333"),
            ),
            derived(
                "d1",
                Some(main),
                Payload::PublishApplied(v1::PublishApplied::default()),
            ),
            webhook("d4", "push", "not json"),
        ]
    }

    fn ids(filter: &HistoryFilter) -> Vec<String> {
        let events = story();
        select(filter, &events)
            .into_iter()
            .map(|i| {
                let e = &events[i];
                format!(
                    "{}:{}",
                    e.correlation_id,
                    rand_suffix(e.payload.as_ref().unwrap())
                )
            })
            .collect()
    }

    #[test]
    fn branch_history_runs_from_delivery_to_publish() {
        assert_eq!(
            ids(&HistoryFilter::Branch("main".into())),
            [
                "d1:webhook.received",
                "d1:build.requested",
                "d1:publish.applied"
            ]
        );
        assert_eq!(
            ids(&HistoryFilter::Branch("feature/x".into())),
            ["d2:webhook.received", "d2:build.skipped"]
        );
    }

    #[test]
    fn pull_request_and_commit_histories() {
        assert_eq!(
            ids(&HistoryFilter::PullRequest(7)),
            ["d3:webhook.received", "d3:build.requested"]
        );
        assert_eq!(
            ids(&HistoryFilter::Commit("bbbbbbb".into())),
            ["d2:webhook.received", "d2:build.skipped"]
        );
        assert!(ids(&HistoryFilter::Commit("ddddddd".into())).is_empty());
        assert_eq!(ids(&HistoryFilter::All).len(), 8);
    }

    #[test]
    fn filters_are_validated() {
        use history_request::Filter;
        assert_eq!(HistoryFilter::from_proto(None).unwrap(), HistoryFilter::All);
        assert!(HistoryFilter::from_proto(Some(&Filter::Commit("abc".into()))).is_err());
        assert!(HistoryFilter::from_proto(Some(&Filter::Commit("xyzxyzxyz".into()))).is_err());
        assert!(HistoryFilter::from_proto(Some(&Filter::Branch(String::new()))).is_err());
        assert!(HistoryFilter::from_proto(Some(&Filter::PullRequest(0))).is_err());
        assert_eq!(
            HistoryFilter::from_proto(Some(&Filter::Commit("ABCDEF12".into()))).unwrap(),
            HistoryFilter::Commit("abcdef12".into())
        );
    }

    #[test]
    fn webhook_facts_ignore_tags_and_deletions() {
        let tag = webhook("t", "push", r#"{"ref":"refs/tags/v1","after":"abc"}"#);
        let Some(Payload::WebhookReceived(w)) = &tag.payload else {
            unreachable!()
        };
        assert_eq!(webhook_facts(w).branch, None);
        let deleted = webhook(
            "x",
            "push",
            r#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000"}"#,
        );
        let Some(Payload::WebhookReceived(w)) = &deleted.payload else {
            unreachable!()
        };
        assert_eq!(webhook_facts(w).branch.as_deref(), Some("x"));
        assert_eq!(webhook_facts(w).commit, None);
    }
}
