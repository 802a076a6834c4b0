//! Console retries (pure): which requested build a build nobody requested retries, if any.
//!
//! A CodeBuild console "Retry build" starts a new build with the environment overrides of the
//! build it retries, so it carries the dispatcher's `PRX_*` variables but no push sequence. The
//! build-watcher keeps the requests of every (repository, commit, architecture) in the index
//! record [`RequestIndexRecord`] (bucket `prx_ci_build_requests`); a build nobody requested
//! whose reported environment has exactly a request's dispatcher variables ([`match_retry`]) is
//! adopted: its events carry that request and its chain, so the publisher orders it as that
//! push (through the fence, so it can never move a parameter back past a newer push).

use std::collections::BTreeMap;

use prx_ci_proto::v1;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::codebuild::event::{is_dispatcher_variable, requested_variables};
use prx_ci_shared::domain::Architecture;
use prx_ci_shared::kv::key_token;
use serde::{Deserialize, Serialize};

use crate::watched_build::{ChainData, RequestData};

/// Requests kept per (repository, commit, architecture); beyond it the lowest push sequences
/// are dropped (one commit is rarely requested more than a few times: a push, its pull
/// request, a rebuild).
pub const MAX_REQUESTS_PER_KEY: usize = 32;

/// The index key of a (repository, commit, architecture): `key_token`s joined with `.`.
/// `None` when one of them is unknown (nothing can be matched then).
pub fn index_key(repository: &str, commit: &str, architecture: i32) -> Option<String> {
    let architecture = Architecture::from_proto(architecture)?;
    if repository.is_empty() || commit.is_empty() {
        return None;
    }
    Some(format!(
        "{}.{}.{}",
        key_token(repository),
        key_token(commit),
        key_token(architecture.as_str())
    ))
}

/// One requested build, as much as adopting a retry of it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestedBuild {
    /// The normalized build id of the requested build.
    pub build_id: String,
    /// Its reference as the request gave it (the id its own events carry).
    pub build: v1::BuildRef,
    /// The event id of its BuildRequested.
    pub requested_event_id: String,
    pub request: RequestData,
    /// The chain of its events (correlation, ordering key, push sequence).
    pub chain: ChainData,
}

impl RequestedBuild {
    /// The entry of the BuildRequested `envelope` of `build_id` (normalized).
    pub fn from_request(
        build_id: &str,
        envelope: &v1::Envelope,
        request: &v1::BuildRequested,
    ) -> Self {
        Self {
            build_id: build_id.to_owned(),
            build: request.build.clone().unwrap_or_default(),
            requested_event_id: envelope.event_id.clone(),
            request: RequestData::from(request),
            chain: ChainData::caused_by(envelope),
        }
    }

    /// Its index key (see [`index_key`]).
    pub fn index_key(&self) -> Option<String> {
        index_key(
            &self.build.repository,
            &self.build.commit,
            self.build.architecture,
        )
    }

    /// The variables the dispatcher gave the build (request fields winning over its
    /// environment, as the publisher reads them).
    pub fn variables(&self) -> BTreeMap<String, String> {
        requested_variables(&self.request.to_proto(self.build.clone()))
    }
}

/// The requests of one (repository, commit, architecture) (bucket `prx_ci_build_requests`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestIndexRecord {
    /// Ordered by push sequence, then build id.
    pub requests: Vec<RequestedBuild>,
}

impl RequestIndexRecord {
    /// Adds a request (replacing an older entry of the same build). False when it is already
    /// there as given (a redelivery): nothing to write.
    pub fn record(&mut self, entry: RequestedBuild) -> bool {
        if self.requests.contains(&entry) {
            return false;
        }
        self.requests.retain(|r| r.build_id != entry.build_id);
        self.requests.push(entry);
        self.requests.sort_by(|a, b| {
            (a.chain.push_sequence, &a.build_id).cmp(&(b.chain.push_sequence, &b.build_id))
        });
        let excess = self.requests.len().saturating_sub(MAX_REQUESTS_PER_KEY);
        self.requests.drain(..excess);
        true
    }
}

/// Why a request's environment is not the reported one (the first difference, by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The build has the variable with another value.
    Differs(String),
    /// The dispatcher set it, the build does not have it.
    Missing(String),
    /// The build has a dispatcher variable the request did not set.
    Extra(String),
    /// The build checked out another source than the request's (`sourceVersion` or the
    /// repository's location), or its report does not say which.
    Source(&'static str),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Differs(name) => write!(f, "{name} differs"),
            Self::Missing(name) => write!(f, "{name} is missing"),
            Self::Extra(name) => write!(f, "{name} was not requested"),
            Self::Source(what) => write!(f, "its {what} is not the request's"),
        }
    }
}

/// Compares a build's reported environment with what a request's dispatcher set (`trusted`,
/// see [`RequestedBuild::variables`]): every dispatcher variable (a name of
/// `env::DISPATCHER_VARIABLES` or one the request set) equal, none missing, none extra. An empty
/// value counts as unset on both sides (a backend may drop empty overrides). Variables that are
/// not the dispatcher's (the project's, CodeBuild's) are not compared.
pub fn compare_environment(
    reported: &BTreeMap<String, String>,
    trusted: &BTreeMap<String, String>,
) -> Result<(), Mismatch> {
    for name in trusted.keys() {
        match (set(reported, name), set(trusted, name)) {
            (None, Some(_)) => return Err(Mismatch::Missing(name.clone())),
            (Some(a), Some(b)) if a != b => return Err(Mismatch::Differs(name.clone())),
            _ => {}
        }
    }
    for name in reported.keys() {
        if is_dispatcher_variable(name, trusted)
            && set(reported, name).is_some()
            && set(trusted, name).is_none()
        {
            return Err(Mismatch::Extra(name.clone()));
        }
    }
    Ok(())
}

/// The non-empty value of `name` in `vars`.
fn set<'a>(vars: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// What a build's report says it checked out (CodeBuild's `additional-information`
/// `source-version` and `source.location`; empty when the report does not say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedSource {
    pub version: String,
    pub location: String,
}

/// Compares what a build checked out with what the dispatcher asked for: a console "Retry
/// build" keeps the original's `sourceVersion` and source location, so a build with another
/// source (or a report silent about it) was started for something else. Parts the request
/// left empty are not compared.
pub fn compare_source(reported: &ReportedSource, request: &RequestData) -> Result<(), Mismatch> {
    if !request.source_version.is_empty() && reported.version != request.source_version {
        return Err(Mismatch::Source("sourceVersion"));
    }
    if !request.clone_url.is_empty() && reported.location != request.clone_url {
        return Err(Mismatch::Source("source location"));
    }
    Ok(())
}

/// What [`match_retry`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryMatch<'a> {
    /// The build retries `original`: the matching request with the highest push sequence
    /// (then build id). `matching` lists the build ids of every matching request, for the log
    /// (more than one: the same commit and environment was requested by several pushes).
    Adopt {
        original: &'a RequestedBuild,
        matching: Vec<String>,
    },
    /// No request has the build's environment: why not, per candidate build id.
    NoMatch { mismatches: Vec<(String, Mismatch)> },
}

/// The request a build nobody requested (`build_id`, normalized, with its reported
/// environment and source) retries, among the requests of its repository, commit and
/// architecture.
pub fn match_retry<'a>(
    build_id: &str,
    reported: &BTreeMap<String, String>,
    source: &ReportedSource,
    candidates: &'a [RequestedBuild],
) -> RetryMatch<'a> {
    let mut matching: Vec<&RequestedBuild> = Vec::new();
    let mut mismatches = Vec::new();
    for candidate in candidates.iter().filter(|c| c.build_id != build_id) {
        let same = compare_source(source, &candidate.request)
            .and_then(|()| compare_environment(reported, &candidate.variables()));
        match same {
            Ok(()) => matching.push(candidate),
            Err(why) => mismatches.push((candidate.build_id.clone(), why)),
        }
    }
    let original = matching.iter().copied().max_by(|a, b| {
        (a.chain.push_sequence, &a.build_id).cmp(&(b.chain.push_sequence, &b.build_id))
    });
    match original {
        Some(original) => RetryMatch::Adopt {
            original,
            matching: matching.iter().map(|c| c.build_id.clone()).collect(),
        },
        None => RetryMatch::NoMatch { mismatches },
    }
}

/// The lane a build's reported environment names: `PRX_GITHUB_PR` for a pull request's
/// build, else `PRX_BRANCH`. Pure.
fn reported_lane(reported: &BTreeMap<String, String>) -> (Option<u64>, Option<&str>) {
    let pull_request = set(reported, env::GITHUB_PR).and_then(|n| n.parse().ok());
    match pull_request {
        Some(n) => (Some(n), None),
        None => (None, set(reported, env::BRANCH)),
    }
}

/// Whether a request is of the lane `lane` (see [`reported_lane`]).
fn same_lane(request: &RequestData, lane: (Option<u64>, Option<&str>)) -> bool {
    match lane {
        (Some(n), _) => request.pull_request == n,
        (None, Some(branch)) => request.pull_request == 0 && request.branch == branch,
        (None, None) => false,
    }
}

/// Shadow mode: the shadow request (`BuildRequested.shadow`) whose build the original
/// system's build `build_id` (unrequested, with its reported environment) is, among the
/// requests of its repository, commit and architecture. Variables are not compared (a
/// disagreement is what the shadow report is for). Rule: among shadow requests of the lane
/// the original's `PRX_GITHUB_PR` / `PRX_BRANCH` names (all shadow requests when none is of
/// it), the newest push (highest push sequence, then request id). So when one commit is
/// pushed twice to one lane, every original build of it lands in the newest push's chain.
/// Pure.
pub fn match_shadow<'a>(
    build_id: &str,
    reported: &BTreeMap<String, String>,
    candidates: &'a [RequestedBuild],
) -> Option<&'a RequestedBuild> {
    let shadow: Vec<&RequestedBuild> = candidates
        .iter()
        .filter(|c| c.request.shadow && c.build_id != build_id)
        .collect();
    let lane = reported_lane(reported);
    let of_lane: Vec<&RequestedBuild> = shadow
        .iter()
        .copied()
        .filter(|c| same_lane(&c.request, lane))
        .collect();
    let pool = if of_lane.is_empty() { shadow } else { of_lane };
    pool.into_iter().max_by(|a, b| {
        (a.chain.push_sequence, &a.build.build_request_id)
            .cmp(&(b.chain.push_sequence, &b.build.build_request_id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1";

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A push of `main` at `push_sequence` with `before` as its `PRX_GITHUB_BEFORE`.
    fn request(build_id: &str, push_sequence: u64, before: &str) -> RequestedBuild {
        RequestedBuild {
            build_id: build_id.into(),
            build: v1::BuildRef {
                build_id: format!("arn:aws:codebuild:us-east-1:1:build/{build_id}"),
                build_request_id: format!("req-{build_id}"),
                repository: "PRX/app".into(),
                commit: SHA.into(),
                architecture: v1::Architecture::X8664 as i32,
                ..Default::default()
            },
            requested_event_id: format!("evt-{build_id}"),
            request: RequestData {
                environment: vars(&[
                    ("PRX_REPO", "PRX/app"),
                    ("PRX_COMMIT", SHA),
                    ("PRX_BRANCH", "main"),
                    ("PRX_CI_PUBLISH", "true"),
                    ("PRX_TARGET_ARCHITECTURE", "x86_64"),
                    ("PRX_GITHUB_BEFORE", before),
                    ("PRX_GITHUB_AFTER", SHA),
                ]),
                branch: "main".into(),
                event_name: "push".into(),
                clone_url: "https://github.com/PRX/app.git".into(),
                source_version: format!("refs/heads/main^{{{SHA}}}"),
                ..Default::default()
            },
            chain: ChainData {
                correlation_id: format!("delivery-{build_id}"),
                causation_id: format!("evt-{build_id}"),
                repository: "PRX/app".into(),
                branch: Some("main".into()),
                pull_request: None,
                push_sequence,
            },
        }
    }

    /// What CodeBuild reports for a build of `request`: its overrides and the project's own
    /// variables.
    fn reported(request: &RequestedBuild) -> BTreeMap<String, String> {
        let mut env = request.request.environment.clone();
        env.insert("PRX_AWS_ACCOUNT_ID".into(), "123456789012".into());
        env.insert("PRX_APPLICATION_CODE_BUCKET".into(), "bucket".into());
        env.insert("APP_SETTING".into(), "x".into());
        env
    }

    /// The source CodeBuild reports for a build of `request` (a retry keeps it).
    fn source(request: &RequestedBuild) -> ReportedSource {
        ReportedSource {
            version: request.request.source_version.clone(),
            location: request.request.clone_url.clone(),
        }
    }

    #[test]
    fn index_keys_need_repository_commit_and_architecture() {
        let key = index_key("PRX/app", SHA, v1::Architecture::Aarch64 as i32).unwrap();
        assert_eq!(key, format!("PRX=2Fapp.{SHA}.aarch64"));
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        );
        assert_ne!(
            Some(key),
            index_key("PRX/app", SHA, v1::Architecture::X8664 as i32)
        );
        assert_eq!(index_key("", SHA, 1), None);
        assert_eq!(index_key("PRX/app", "", 1), None);
        assert_eq!(
            index_key("PRX/app", SHA, v1::Architecture::Unspecified as i32),
            None
        );
        assert_eq!(
            request("p:1", 5, "b").index_key(),
            index_key("PRX/app", SHA, v1::Architecture::X8664 as i32)
        );
    }

    #[test]
    fn the_index_record_is_idempotent_ordered_and_bounded() {
        let mut index = RequestIndexRecord::default();
        assert!(index.record(request("p:2", 20, "b")));
        assert!(index.record(request("p:1", 10, "a")));
        assert!(!index.record(request("p:1", 10, "a")), "a redelivery");
        // The same build again with other data replaces its entry.
        assert!(index.record(request("p:1", 11, "a")));
        let order: Vec<_> = index
            .requests
            .iter()
            .map(|r| (r.build_id.as_str(), r.chain.push_sequence))
            .collect();
        assert_eq!(order, [("p:1", 11), ("p:2", 20)]);
        for n in 0..(MAX_REQUESTS_PER_KEY as u64 + 5) {
            index.record(request(&format!("q:{n}"), 100 + n, "c"));
        }
        assert_eq!(index.requests.len(), MAX_REQUESTS_PER_KEY);
        assert_eq!(
            index.requests[0].chain.push_sequence, 105,
            "the oldest went"
        );
    }

    #[test]
    fn environments_match_on_dispatcher_variables_only() {
        let original = request("p:1", 10, "a");
        let trusted = original.variables();
        assert_eq!(trusted["PRX_GITHUB_BEFORE"], "a");
        assert_eq!(compare_environment(&reported(&original), &trusted), Ok(()));

        let with = |name: &str, value: &str| {
            let mut env = reported(&original);
            env.insert(name.into(), value.into());
            env
        };
        let without = |name: &str| {
            let mut env = reported(&original);
            env.remove(name);
            env
        };
        // The project's and CodeBuild's variables are not the dispatcher's.
        assert_eq!(
            compare_environment(&with("PRX_AWS_ACCOUNT_ID", "other"), &trusted),
            Ok(())
        );
        assert_eq!(
            compare_environment(&with("CODEBUILD_X", "1"), &trusted),
            Ok(())
        );
        // An operator who changed a dispatcher variable started another build.
        assert_eq!(
            compare_environment(&with("PRX_CI_PUBLISH", "false"), &trusted),
            Err(Mismatch::Differs("PRX_CI_PUBLISH".into()))
        );
        assert_eq!(
            compare_environment(&without("PRX_GITHUB_BEFORE"), &trusted),
            Err(Mismatch::Missing("PRX_GITHUB_BEFORE".into()))
        );
        assert_eq!(
            compare_environment(&with("PRX_GITHUB_PR", "7"), &trusted),
            Err(Mismatch::Extra("PRX_GITHUB_PR".into()))
        );
        // A variable the request set, whatever its name, is the dispatcher's.
        let mut custom = original.clone();
        custom
            .request
            .environment
            .insert("PRX_CUSTOM".into(), "1".into());
        let custom_trusted = custom.variables();
        assert_eq!(
            compare_environment(&reported(&original), &custom_trusted),
            Err(Mismatch::Missing("PRX_CUSTOM".into()))
        );
        assert_eq!(
            compare_environment(&with("PRX_CUSTOM", "2"), &custom_trusted),
            Err(Mismatch::Differs("PRX_CUSTOM".into()))
        );
        // An empty value is no value, on either side.
        let mut empty = original.clone();
        empty
            .request
            .environment
            .insert("PRX_GITHUB_PR_TITLE".into(), String::new());
        assert_eq!(
            compare_environment(&reported(&original), &empty.variables()),
            Ok(())
        );
        assert_eq!(
            compare_environment(&with("PRX_GITHUB_PR_TITLE", ""), &trusted),
            Ok(())
        );
        // The request's own fields win over its environment (what the publisher trusts).
        let mut stale = original.clone();
        stale
            .request
            .environment
            .insert("PRX_REPO".into(), "PRX/stale".into());
        assert_eq!(
            compare_environment(&reported(&original), &stale.variables()),
            Ok(())
        );
    }

    #[test]
    fn a_retry_adopts_the_newest_matching_request() {
        let older = request("p:1", 10, "a");
        let newer = request("p:2", 20, "a");
        let other = request("p:3", 30, "z");
        let candidates = [older.clone(), other.clone(), newer.clone()];

        match match_retry("p:9", &reported(&older), &source(&older), &candidates) {
            RetryMatch::Adopt { original, matching } => {
                assert_eq!(original.build_id, "p:2", "highest push sequence");
                assert_eq!(matching, ["p:1", "p:2"]);
            }
            other => panic!("{other:?}"),
        }
        match match_retry("p:9", &reported(&other), &source(&other), &candidates) {
            RetryMatch::Adopt { original, matching } => {
                assert_eq!(original.build_id, "p:3");
                assert_eq!(matching, ["p:3"]);
            }
            other => panic!("{other:?}"),
        }
        // Ties on the push sequence break on the build id, whatever the order listed.
        let twin = request("p:0", 20, "a");
        for list in [[newer.clone(), twin.clone()], [twin.clone(), newer.clone()]] {
            let RetryMatch::Adopt { original, .. } =
                match_retry("p:9", &reported(&newer), &source(&newer), &list)
            else {
                panic!("no match")
            };
            assert_eq!(original.build_id, "p:2");
        }
    }

    #[test]
    fn a_build_matching_nothing_is_not_adopted() {
        let original = request("p:1", 10, "a");
        let mut changed = reported(&original);
        changed.insert("PRX_CI_PUBLISH".into(), "false".into());
        assert_eq!(
            match_retry(
                "p:9",
                &changed,
                &source(&original),
                std::slice::from_ref(&original)
            ),
            RetryMatch::NoMatch {
                mismatches: vec![("p:1".into(), Mismatch::Differs("PRX_CI_PUBLISH".into()))]
            }
        );
        assert_eq!(
            match_retry("p:9", &reported(&original), &source(&original), &[]),
            RetryMatch::NoMatch { mismatches: vec![] }
        );
        // A build is never a retry of itself.
        assert_eq!(
            match_retry(
                "p:1",
                &reported(&original),
                &source(&original),
                std::slice::from_ref(&original)
            ),
            RetryMatch::NoMatch { mismatches: vec![] }
        );
        assert_eq!(
            Mismatch::Extra("PRX_GITHUB_PR".into()).to_string(),
            "PRX_GITHUB_PR was not requested"
        );
    }

    #[test]
    fn a_build_of_another_source_is_not_adopted() {
        // A hand-started build with the request's exact overrides but another commit, ref or
        // repository checked out is not a retry: its artifacts would carry the request's commit.
        let original = request("p:1", 10, "a");
        let env = reported(&original);
        let cases = [
            (
                ReportedSource {
                    version: SHA.into(),
                    ..source(&original)
                },
                "sourceVersion",
            ),
            (
                ReportedSource {
                    version: "refs/heads/other".into(),
                    ..source(&original)
                },
                "sourceVersion",
            ),
            (
                ReportedSource {
                    location: "https://github.com/evil/app.git".into(),
                    ..source(&original)
                },
                "source location",
            ),
            (ReportedSource::default(), "sourceVersion"),
        ];
        for (reported_source, what) in cases {
            assert_eq!(
                match_retry(
                    "p:9",
                    &env,
                    &reported_source,
                    std::slice::from_ref(&original)
                ),
                RetryMatch::NoMatch {
                    mismatches: vec![("p:1".into(), Mismatch::Source(what))]
                },
                "{reported_source:?}"
            );
        }
        assert_eq!(
            Mismatch::Source("sourceVersion").to_string(),
            "its sourceVersion is not the request's"
        );
        // A request from before the field existed compares only what it has.
        let mut old = original.clone();
        old.request.source_version.clear();
        old.request.clone_url.clear();
        assert!(matches!(
            match_retry(
                "p:9",
                &env,
                &ReportedSource::default(),
                std::slice::from_ref(&old)
            ),
            RetryMatch::Adopt { .. }
        ));
    }

    fn shadow_request(build_id: &str, push_sequence: u64) -> RequestedBuild {
        let mut r = request(build_id, push_sequence, "b");
        r.request.shadow = true;
        r
    }

    #[test]
    fn an_original_build_is_matched_to_the_newest_shadow_request_of_its_lane_whatever_its_variables()
     {
        let older = shadow_request("shadow:1", 3);
        let newer = shadow_request("shadow:2", 7);
        let live = request("p:live", 9, "b");
        let mut on_pr = shadow_request("shadow:pr", 11);
        on_pr.request.branch = "feature".into();
        on_pr.request.pull_request = 12;
        let candidates = [older.clone(), newer.clone(), live.clone(), on_pr.clone()];
        // The original's variables disagree with every request: still matched.
        let mut reported = reported(&older);
        reported.insert("PRX_CI_PUBLISH".into(), "false".into());
        reported.insert("PRX_GITHUB_BEFORE".into(), "zzz".into());
        assert_eq!(
            match_shadow("arn:orig", &reported, &candidates).map(|c| &c.build_id),
            Some(&newer.build_id),
            "the newest push of the branch; never a live request, never the PR's"
        );
        let mut pr_build = reported.clone();
        pr_build.insert("PRX_GITHUB_PR".into(), "12".into());
        assert_eq!(
            match_shadow("arn:orig", &pr_build, &candidates).map(|c| &c.build_id),
            Some(&on_pr.build_id)
        );
        // A lane no request has: the newest shadow request of the commit (the report shows
        // the branch disagreeing).
        let mut elsewhere = reported.clone();
        elsewhere.insert("PRX_BRANCH".into(), "other".into());
        assert_eq!(
            match_shadow("arn:orig", &elsewhere, &candidates).map(|c| &c.build_id),
            Some(&on_pr.build_id)
        );
        assert_eq!(match_shadow("arn:orig", &reported, &[live]), None);
        assert_eq!(match_shadow("arn:orig", &reported, &[]), None);
    }
}
