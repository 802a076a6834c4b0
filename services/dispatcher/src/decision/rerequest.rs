//! Re-runs requested on GitHub (pure): a person clicks "Re-run" on a check run or a check suite
//! of a commit, GitHub sends `check_run` / `check_suite` with action `rerequested`, and the
//! dispatcher rebuilds that commit *as the build it recorded for it* (docs/reruns.md).
//!
//! The webhook's text is untrusted: [`asked`] reads only the repository, the commit
//! (`head_sha`), the sender's login (display only) and, for a check run, its name (which
//! architecture, `prx-ci/<arch>`) and `external_id` (which recorded request; a selector among
//! the dispatcher's own records of that repository and commit, never a source of facts).
//! Everything the rebuild runs and is trusted with comes from the dispatcher's own record of
//! the original request ([`select`], [`Rebuild`]): its buildspec, variables, source, fork flag,
//! ordering key and push sequence. So a fork pull request's re-run is still a fork pull
//! request, and a re-run of an old default-branch push is ordered as that push: the publisher's
//! fence then never lets it move a deploy pointer back past a newer push. A commit the
//! dispatcher never built is skipped (`RERUN_NOT_DISPATCHED`).

use prx_ci_proto::v1::{self, Envelope, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, derived_event_id};
use prx_ci_shared::codebuild::backend::{StartBuild, StartedBuild};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use serde_json::Value;
use time::OffsetDateTime;

use super::{DecisionConfig, ForkPolicy, Skip, SkipReason};

/// The events whose `rerequested` action asks for a re-run.
pub const RERUN_EVENTS: [&str; 2] = ["check_run", "check_suite"];
/// The action that asks for a re-run.
pub const RERUN_ACTION: &str = "rerequested";
/// Check runs are named `prx-ci/<arch>` (as the commit statuses' contexts).
pub const CHECK_NAME_PREFIX: &str = "prx-ci/";
/// `external_id` longer than this is not a request id of ours (ignored).
const MAX_EXTERNAL_ID: usize = 128;

/// Whether webhooks of `event_name` are re-run requests (or other actions of those events).
pub fn is_rerun_event(event_name: &str) -> bool {
    RERUN_EVENTS.contains(&event_name)
}

/// What a re-run webhook asks for, read from its (untrusted) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerunAsked {
    /// `check_run` or `check_suite`.
    pub event_name: String,
    pub repository: RepoName,
    pub commit: CommitSha,
    /// `sender.login` ("" when absent): recorded, never decides anything.
    pub sender: String,
    /// The architecture of the check run re-run (`prx-ci/<arch>`); `None`: every architecture
    /// (a check suite, or a check run whose name names none).
    pub architecture: Option<Architecture>,
    /// The check run's `external_id` (the notifier sets it to the build request id), when it
    /// looks like one: only selects among the dispatcher's records of this commit.
    pub external_id: Option<String>,
}

/// The skip of a re-run webhook, with what is known of it.
fn skip_of(event_name: &str, action: &str, repository: &str, commit: &str) -> Skip {
    Skip {
        reason: SkipReason::EventTypeNotBuilt,
        detail: String::new(),
        event_name: event_name.to_owned(),
        action: action.to_owned(),
        repository: repository.to_owned(),
        commit: commit.to_owned(),
        git_ref: String::new(),
        ordering_key: None,
    }
}

/// Decides whether a `check_run` / `check_suite` webhook asks for a re-run, and of what.
/// Other actions (`created`, `completed`, `requested`, `requested_action`) build nothing
/// (`EVENT_TYPE_NOT_BUILT`): pushes and pull requests start builds, not their checks.
pub fn asked(
    event_name: &str,
    payload: &[u8],
    config: &DecisionConfig,
) -> Result<RerunAsked, Skip> {
    let mut skip = skip_of(event_name, "", "", "");
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return Err(malformed(skip, "payload is not a JSON object")),
        Err(err) => return Err(malformed(skip, format!("payload is not JSON: {err}"))),
    };
    let str_at = |path: &[&str]| -> Option<&str> {
        path.iter()
            .try_fold(&value, |v, key| v.get(key))
            .and_then(Value::as_str)
    };
    // `check_run` or `check_suite`: the object the event is about.
    let object = event_name;
    skip.action = str_at(&["action"]).unwrap_or_default().to_owned();
    skip.repository = str_at(&["repository", "full_name"])
        .unwrap_or_default()
        .to_owned();
    skip.commit = str_at(&[object, "head_sha"]).unwrap_or_default().to_owned();
    if !is_rerun_event(event_name) {
        skip.detail = format!("{event_name:?} is not a re-run event");
        return Err(skip);
    }
    if skip.action != RERUN_ACTION {
        skip.detail = format!(
            "{event_name} action {:?} is not built (only {RERUN_ACTION:?}, a re-run request)",
            skip.action
        );
        return Err(skip);
    }
    let repository = match RepoName::parse(&skip.repository) {
        Ok(repository) => repository,
        Err(_) if skip.repository.is_empty() => {
            return Err(malformed(skip, "missing repository.full_name"));
        }
        Err(err) => return Err(malformed(skip, err.to_string())),
    };
    if !config.owner_allowed(repository.owner()) {
        skip.reason = SkipReason::OwnerNotAllowed;
        skip.detail = format!(
            "owner {:?} is not in allowed_owners {:?}",
            repository.owner(),
            config.allowed_owners
        );
        return Err(skip);
    }
    let commit = match CommitSha::parse(&skip.commit) {
        Ok(commit) => commit,
        Err(_) if skip.commit.is_empty() => {
            return Err(malformed(skip, format!("missing {object}.head_sha")));
        }
        Err(err) => return Err(malformed(skip, format!("{object}.head_sha: {err}"))),
    };
    let (architecture, external_id) = if event_name == "check_run" {
        let architecture = str_at(&["check_run", "name"])
            .and_then(|name| name.strip_prefix(CHECK_NAME_PREFIX))
            .and_then(Architecture::parse);
        let external_id = str_at(&["check_run", "external_id"])
            .filter(|id| !id.is_empty() && id.len() <= MAX_EXTERNAL_ID)
            .map(str::to_owned);
        (architecture, external_id)
    } else {
        (None, None)
    };
    Ok(RerunAsked {
        event_name: event_name.to_owned(),
        repository,
        commit,
        sender: str_at(&["sender", "login"])
            .unwrap_or_default()
            .chars()
            .take(100)
            .collect(),
        architecture,
        external_id,
    })
}

fn malformed(mut skip: Skip, detail: impl Into<String>) -> Skip {
    skip.reason = SkipReason::MalformedPayload;
    skip.detail = detail.into();
    skip
}

impl RerunAsked {
    /// The skip of this request (reason and detail to be set).
    fn skip(&self, reason: SkipReason, detail: String) -> Skip {
        Skip {
            reason,
            detail,
            ..skip_of(
                &self.event_name,
                RERUN_ACTION,
                &self.repository.to_string(),
                self.commit.as_str(),
            )
        }
    }
}

/// One architecture's rebuild: the recorded original request it repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuild {
    pub architecture: Architecture,
    /// The `BuildRequested` envelope the dispatcher recorded for the original build.
    original: Envelope,
    original_request: v1::BuildRequested,
}

/// A recorded `BuildRequested` of `asked`'s repository and commit, with its architecture.
fn recorded_of<'a>(
    asked: &RerunAsked,
    envelope: &'a Envelope,
) -> Option<(&'a v1::BuildRequested, Architecture)> {
    let Some(Payload::BuildRequested(request)) = &envelope.payload else {
        return None;
    };
    let build = request.build.as_ref()?;
    let same_repository = build
        .repository
        .eq_ignore_ascii_case(&asked.repository.to_string());
    let same_commit = build.commit.eq_ignore_ascii_case(asked.commit.as_str());
    if !same_repository || !same_commit || build.build_request_id.is_empty() {
        return None;
    }
    Some((request, Architecture::from_proto(build.architecture)?))
}

/// Which builds a re-run repeats, from the dispatcher's own records: `recorded`, the
/// `BuildRequested` envelopes it recorded for the commit's pushes and pull requests (its commit
/// index), and `named`, the recorded request the check run's `external_id` names (or, on a
/// redelivery, the one the first attempt re-ran), if any.
///
/// Records of another repository or commit are ignored. The push re-run is `named`'s when it is
/// a record of this commit, else the commit's newest push (highest push sequence); its builds
/// are taken one per architecture (originals before re-runs), only the check run's
/// architecture when its name or its named request says which. The fork policy in force applies (`fork_pull_requests = "skip"`
/// skips a fork pull request's re-run as it would skip the pull request).
pub fn select(
    asked: &RerunAsked,
    recorded: &[Envelope],
    named: Option<&Envelope>,
    config: &DecisionConfig,
) -> Result<Vec<Rebuild>, Skip> {
    let candidates: Vec<&Envelope> = named
        .into_iter()
        .chain(recorded)
        .filter(|e| recorded_of(asked, e).is_some())
        .collect();
    let named = named.filter(|e| recorded_of(asked, e).is_some());
    // A check run whose name names no architecture (`[notifier.checks] name` configured
    // otherwise) is the named request's.
    let wanted = asked
        .architecture
        .or_else(|| named.and_then(|e| recorded_of(asked, e)).map(|(_, a)| a));
    let push = named.or_else(|| {
        candidates
            .iter()
            .copied()
            .max_by(|a, b| (a.push_sequence, &a.event_id).cmp(&(b.push_sequence, &b.event_id)))
    });
    let Some(push) = push else {
        return Err(asked.skip(
            SkipReason::RerunNotDispatched,
            format!(
                "the dispatcher has no record of building {} at {}; a re-run rebuilds only what \
                 a push or pull request built",
                asked.repository, asked.commit
            ),
        ));
    };
    let mut builds: Vec<Rebuild> = Vec::new();
    // Originals first (no re-run marker), so each architecture repeats the push's own request.
    let mut of_push: Vec<&Envelope> = candidates
        .iter()
        .copied()
        .filter(|e| e.push_sequence == push.push_sequence && e.ordering_key == push.ordering_key)
        .collect();
    of_push.sort_by_key(|e| match &e.payload {
        Some(Payload::BuildRequested(r)) => r.rerun_request.is_some() || r.rerun > 0,
        _ => true,
    });
    for envelope in of_push {
        let Some((request, architecture)) = recorded_of(asked, envelope) else {
            continue;
        };
        if wanted.is_some_and(|a| a != architecture)
            || builds.iter().any(|b| b.architecture == architecture)
        {
            continue;
        }
        builds.push(Rebuild {
            architecture,
            original: envelope.clone(),
            original_request: request.clone(),
        });
    }
    builds.sort_by_key(|b| b.architecture);
    if builds.is_empty() {
        let architecture = wanted.map_or("", Architecture::as_str);
        return Err(asked.skip(
            SkipReason::RerunNotDispatched,
            format!(
                "the dispatcher has no record of building {} at {} for {architecture}",
                asked.repository, asked.commit
            ),
        ));
    }
    if builds.iter().any(|b| b.original_request.fork)
        && config.fork_pull_requests == ForkPolicy::Skip
    {
        let mut skip = asked.skip(
            SkipReason::Fork,
            format!(
                "re-run of a pull request from a fork (#{}); fork_pull_requests = \"skip\"",
                builds[0].original_request.pull_request
            ),
        );
        skip.ordering_key = push
            .ordering_key
            .as_ref()
            .and_then(prx_ci_shared::domain::OrderingKey::from_proto);
        return Err(skip);
    }
    Ok(builds)
}

/// Why a recorded request cannot be repeated.
#[derive(Debug, thiserror::Error)]
#[error("the recorded request of the build to re-run cannot be repeated: {0}")]
pub struct Unrepeatable(String);

impl Rebuild {
    /// The recorded original `BuildRequested` envelope.
    pub fn original(&self) -> &Envelope {
        &self.original
    }

    /// What the backend is asked to start: the original request exactly (buildspec,
    /// variables, source, trust), under the new request id.
    pub fn start_request(&self, request_id: &str) -> Result<StartBuild, Unrepeatable> {
        let request = &self.original_request;
        let build = request.build.clone().unwrap_or_default();
        let repository =
            RepoName::parse(&build.repository).map_err(|e| Unrepeatable(e.to_string()))?;
        let commit = CommitSha::parse(&build.commit).map_err(|e| Unrepeatable(e.to_string()))?;
        Ok(StartBuild {
            request_id: request_id.to_owned(),
            repository,
            commit,
            architecture: self.architecture,
            clone_url: request.clone_url.clone(),
            source_version: request.source_version.clone(),
            buildspec: request.buildspec.clone(),
            environment: self.environment(request_id).into_iter().collect(),
            untrusted: request.fork,
        })
    }

    fn environment(&self, request_id: &str) -> std::collections::HashMap<String, String> {
        let mut environment = self.original_request.environment.clone();
        environment.insert(env::CI_REQUEST_ID.to_owned(), request_id.to_owned());
        environment
    }

    /// The `BuildRequested` announcing `started`: the original's request and its ordering key
    /// and push sequence (so it is ordered as the original push), in the chain of the re-run
    /// webhook `cause` (its correlation, caused by it), marked with who asked
    /// ([`v1::RerunRequest`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "the announcement's facts, each once"
    )]
    pub fn requested(
        &self,
        cause: &Envelope,
        dispatch_id: &str,
        request_id: &str,
        asked: &RerunAsked,
        delivery_id: &str,
        started: StartedBuild,
        shadow: bool,
        at: OffsetDateTime,
    ) -> Envelope {
        let original_build = self.original_request.build.clone().unwrap_or_default();
        let chain = Chain {
            correlation_id: cause.correlation_id.clone(),
            causation_id: cause.event_id.clone(),
            ordering_key: self.original.ordering_key.clone(),
            push_sequence: self.original.push_sequence,
        };
        let mut request = self.original_request.clone();
        request.environment = self.environment(request_id);
        request.rerun = 0;
        request.shadow = shadow;
        request.rerun_request = Some(v1::RerunRequest {
            event_name: asked.event_name.clone(),
            requested_by: asked.sender.clone(),
            delivery_id: delivery_id.to_owned(),
            original_request_id: original_build.build_request_id.clone(),
            original_build_id: original_build.build_id.clone(),
        });
        request.build = Some(v1::BuildRef {
            build_id: started.build_id,
            build_request_id: request_id.to_owned(),
            backend: started.backend,
            project: started.project,
            region: started.region,
            log_url: started.log_url,
            retry_of: original_build.build_id.clone(),
            shadowed: false,
            ..original_build
        });
        chain.envelope_at(
            derived_event_id(
                dispatch_id,
                &["build.requested", self.architecture.as_str()],
            ),
            at,
            Payload::BuildRequested(request),
        )
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::domain::{Branch, OrderingKey};

    use super::super::fixtures::{SHA_A, SHA_B};
    use super::*;

    const AT: OffsetDateTime = time::macros::datetime!(2026-11-30 12:00 UTC);

    fn check_run(action: &str, name: &str, external_id: Option<&str>) -> Vec<u8> {
        serde_json::json!({
            "action": action,
            "check_run": {
                "head_sha": SHA_A,
                "name": name,
                "external_id": external_id,
                // Untrusted text that must decide nothing.
                "pull_requests": [{"number": 99, "head": {"ref": "evil"}}],
                "check_suite": {"head_branch": "main"},
            },
            "repository": {"full_name": "PRX/app", "clone_url": "https://evil.example/app.git"},
            "sender": {"login": "octo"},
        })
        .to_string()
        .into_bytes()
    }

    fn check_suite(action: &str) -> Vec<u8> {
        serde_json::json!({
            "action": action,
            "check_suite": {"head_sha": SHA_A, "head_branch": "main"},
            "repository": {"full_name": "PRX/app"},
            "sender": {"login": "hubot"},
        })
        .to_string()
        .into_bytes()
    }

    /// The dispatcher's recorded `BuildRequested` of `commit` for `architecture` at
    /// `push_sequence` (a default-branch push, or a fork pull request).
    fn recorded(
        commit: &str,
        architecture: Architecture,
        push_sequence: u64,
        fork: bool,
    ) -> Envelope {
        let repository = RepoName::parse("PRX/app").unwrap();
        let key = if fork {
            OrderingKey::pull_request(repository, 8)
        } else {
            OrderingKey::branch(repository, Branch::new("main").unwrap())
        };
        let request_id = format!("req-{push_sequence}-{architecture}");
        Chain {
            correlation_id: format!("delivery-{push_sequence}"),
            causation_id: format!("webhook-{push_sequence}"),
            ..Chain::default()
        }
        .with_ordering(&key, push_sequence)
        .envelope_at(
            format!("requested-{push_sequence}-{architecture}"),
            AT,
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(v1::BuildRef {
                    build_id: format!("fake:{push_sequence}-{architecture}"),
                    build_request_id: request_id.clone(),
                    repository: "PRX/app".into(),
                    commit: commit.into(),
                    architecture: architecture.to_proto() as i32,
                    backend: "fake".into(),
                    ..v1::BuildRef::default()
                }),
                environment: [
                    ("PRX_CI_PUBLISH".to_owned(), (!fork).to_string()),
                    (env::CI_REQUEST_ID.to_owned(), request_id),
                ]
                .into(),
                buildspec: "version: 0.2\n# PRX_\n".into(),
                clone_url: "https://github.com/PRX/app.git".into(),
                source_version: format!("refs/heads/main^{{{commit}}}"),
                event_name: if fork { "pull_request" } else { "push" }.into(),
                fork,
                branch: "main".into(),
                pull_request: if fork { 8 } else { 0 },
                ..v1::BuildRequested::default()
            }),
        )
    }

    fn asked_run(name: &str, external_id: Option<&str>) -> RerunAsked {
        asked(
            "check_run",
            &check_run("rerequested", name, external_id),
            &DecisionConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn only_rerequested_checks_ask_for_a_rerun_and_only_commit_repository_sender_are_read() {
        let config = DecisionConfig::default();
        let run = asked_run("prx-ci/aarch64", Some("req-1"));
        assert_eq!(run.event_name, "check_run");
        assert_eq!(run.repository.to_string(), "PRX/app");
        assert_eq!(run.commit.as_str(), SHA_A);
        assert_eq!(run.sender, "octo");
        assert_eq!(run.architecture, Some(Architecture::Aarch64));
        assert_eq!(run.external_id.as_deref(), Some("req-1"));
        assert_eq!(asked_run("CodeBuild", None).architecture, None);
        assert_eq!(asked_run("prx-ci/sparc", None).architecture, None);
        let suite = asked("check_suite", &check_suite("rerequested"), &config).unwrap();
        assert_eq!((suite.architecture, suite.external_id), (None, None));
        assert_eq!(suite.sender, "hubot");

        for (event, body) in [
            ("check_run", check_run("created", "prx-ci/x86_64", None)),
            ("check_run", check_run("completed", "prx-ci/x86_64", None)),
            (
                "check_run",
                check_run("requested_action", "prx-ci/x86_64", None),
            ),
            ("check_suite", check_suite("requested")),
            ("check_suite", check_suite("completed")),
        ] {
            let skip = asked(event, &body, &config).unwrap_err();
            assert_eq!(skip.reason, SkipReason::EventTypeNotBuilt, "{event}");
            assert_eq!(skip.commit, SHA_A);
            assert!(skip.detail.contains("rerequested"), "{}", skip.detail);
        }
        let mut no_sha: Value = serde_json::from_slice(&check_suite("rerequested")).unwrap();
        no_sha["check_suite"]["head_sha"] = Value::Null;
        let skip = asked("check_suite", no_sha.to_string().as_bytes(), &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::MalformedPayload);
        assert_eq!(skip.detail, "missing check_suite.head_sha");
        let skip = asked("check_run", b"[]", &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::MalformedPayload);
        let others = DecisionConfig {
            allowed_owners: vec!["other".into()],
            ..DecisionConfig::default()
        };
        let skip = asked("check_suite", &check_suite("rerequested"), &others).unwrap_err();
        assert_eq!(skip.reason, SkipReason::OwnerNotAllowed);
    }

    #[test]
    fn a_commit_the_dispatcher_never_built_is_not_rerun() {
        let config = DecisionConfig::default();
        let run = asked_run("prx-ci/x86_64", Some("req-5-x86_64"));
        let skip = select(&run, &[], None, &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::RerunNotDispatched);
        assert!(skip.detail.contains(SHA_A), "{}", skip.detail);
        assert_eq!(
            skip.to_proto().reason,
            v1::SkipReason::RerunNotDispatched as i32
        );
        // Records of another commit (or a named request of another commit) do not count.
        let other = recorded(SHA_B, Architecture::X86_64, 5, false);
        let skip = select(&run, std::slice::from_ref(&other), Some(&other), &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::RerunNotDispatched);
        // The commit was built, but not for the architecture the check run names.
        let x86 = recorded(SHA_A, Architecture::X86_64, 5, false);
        let arm = asked_run("prx-ci/aarch64", None);
        let skip = select(&arm, &[x86], None, &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::RerunNotDispatched);
        assert!(skip.detail.ends_with("for aarch64"), "{}", skip.detail);
    }

    #[test]
    fn the_rerun_repeats_the_newest_push_of_the_commit_or_the_named_one_per_architecture() {
        let config = DecisionConfig::default();
        let records = [
            recorded(SHA_A, Architecture::X86_64, 5, false),
            recorded(SHA_A, Architecture::Aarch64, 5, false),
            recorded(SHA_A, Architecture::X86_64, 9, false),
            recorded(SHA_A, Architecture::Aarch64, 9, false),
        ];
        let suite = asked("check_suite", &check_suite("rerequested"), &config).unwrap();
        let builds = select(&suite, &records, None, &config).unwrap();
        let chosen: Vec<(Architecture, u64)> = builds
            .iter()
            .map(|b| (b.architecture, b.original().push_sequence))
            .collect();
        assert_eq!(
            chosen,
            [(Architecture::X86_64, 9), (Architecture::Aarch64, 9)]
        );
        // The check run of one architecture, naming the older push's request.
        let run = asked_run("prx-ci/aarch64", Some("req-5-aarch64"));
        let named = &records[0]; // what the handler read through the pointer of req-5-...
        let builds = select(&run, &records, Some(named), &config).unwrap();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].architecture, Architecture::Aarch64);
        assert_eq!(builds[0].original().push_sequence, 5);
        assert_eq!(builds[0].original().event_id, "requested-5-aarch64");
        // A check run named otherwise: the named request's architecture only.
        let run = asked_run("CI (x86_64, us-east-1)", Some("req-5-x86_64"));
        let builds = select(&run, &records, Some(named), &config).unwrap();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].original().event_id, "requested-5-x86_64");
        // Nothing named and no architecture in the name: every architecture.
        let run = asked_run("CI", None);
        assert_eq!(select(&run, &records, None, &config).unwrap().len(), 2);
    }

    #[test]
    fn a_fork_rerun_stays_a_fork_and_follows_the_fork_policy_in_force() {
        let build = DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..DecisionConfig::default()
        };
        let fork = recorded(SHA_A, Architecture::X86_64, 7, true);
        let run = asked_run("prx-ci/x86_64", None);
        let [rebuild] = select(&run, std::slice::from_ref(&fork), None, &build)
            .unwrap()
            .try_into()
            .unwrap();
        let start = rebuild.start_request("req-new").unwrap();
        assert!(start.untrusted, "still built in the untrusted project");
        assert_eq!(start.environment["PRX_CI_PUBLISH"], "false");
        assert_eq!(
            start.clone_url, "https://github.com/PRX/app.git",
            "not the payload's"
        );
        let skip = select(&run, &[fork], None, &DecisionConfig::default()).unwrap_err();
        assert_eq!(skip.reason, SkipReason::Fork);
        assert_eq!(skip.ordering_key.unwrap().to_string(), "PRX/app#8");
    }

    #[test]
    fn the_rebuild_is_the_original_request_ordered_as_its_push_and_marked_as_asked() {
        let config = DecisionConfig::default();
        let original = recorded(SHA_A, Architecture::X86_64, 5, false);
        let run = asked_run("prx-ci/x86_64", None);
        let [rebuild] = select(&run, std::slice::from_ref(&original), None, &config)
            .unwrap()
            .try_into()
            .unwrap();
        let start = rebuild.start_request("req-new").unwrap();
        assert_eq!(start.request_id, "req-new");
        assert_eq!(start.environment[env::CI_REQUEST_ID], "req-new");
        assert_eq!(start.environment["PRX_CI_PUBLISH"], "true");
        assert_eq!(start.buildspec, "version: 0.2\n# PRX_\n");
        assert_eq!(start.source_version, format!("refs/heads/main^{{{SHA_A}}}"));
        assert!(!start.untrusted);

        let cause = Envelope {
            event_id: "webhook-rerun".into(),
            correlation_id: "delivery-rerun".into(),
            ..Envelope::default()
        };
        let started = StartedBuild {
            build_id: "fake:new".into(),
            backend: "fake".into(),
            project: "p".into(),
            region: String::new(),
            log_url: "http://fake/new".into(),
        };
        let envelope = rebuild.requested(
            &cause,
            "github-delivery:rerun",
            "req-new",
            &run,
            "rerun",
            started,
            false,
            AT,
        );
        assert_eq!(envelope.push_sequence, 5, "ordered as the original push");
        assert_eq!(envelope.ordering_key, original.ordering_key);
        assert_eq!(envelope.correlation_id, "delivery-rerun");
        assert_eq!(envelope.causation_id, "webhook-rerun");
        assert_eq!(
            envelope.event_id,
            derived_event_id("github-delivery:rerun", &["build.requested", "x86_64"])
        );
        let Some(Payload::BuildRequested(request)) = envelope.payload else {
            panic!("not a BuildRequested")
        };
        let build = request.build.clone().unwrap();
        assert_eq!(build.build_id, "fake:new");
        assert_eq!(build.build_request_id, "req-new");
        assert_eq!(build.retry_of, "fake:5-x86_64");
        assert_eq!(build.commit, SHA_A);
        assert_eq!(request.environment[env::CI_REQUEST_ID], "req-new");
        assert_eq!((request.event_name.as_str(), request.fork), ("push", false));
        assert_eq!(request.rerun, 0);
        assert_eq!(
            request.rerun_request,
            Some(v1::RerunRequest {
                event_name: "check_run".into(),
                requested_by: "octo".into(),
                delivery_id: "rerun".into(),
                original_request_id: "req-5-x86_64".into(),
                original_build_id: "fake:5-x86_64".into(),
            })
        );
    }
}
