//! Whether a completed build may publish, and under which facts (pure, no I/O).
//!
//! The event log is the authority: the dispatcher's `BuildRequested` (carried on
//! `BuildCompleted.requested`) says which repository, commit, branch, architecture and pull
//! request were built, whether it is a fork, and whether it may publish. The build's own
//! variables (exported ones win over the environment in `BuildCompleted.variables`) are code the
//! build controls: they supply artifact values (label variables, the `PRX_SPIRE_*_PKG_PARAMETERS`
//! mappings, `PRX_CI_PRERELEASE`) and may turn publishing off, nothing else. A dispatcher
//! variable the build contradicts is ignored and reported (`UNTRUSTED_OVERRIDE`); when it tried
//! to turn publishing on, nothing is written.

use std::collections::HashMap;

use prx_ci_proto::v1::{self, PublishSkipReason};
use prx_ci_shared::codebuild::env;
use prx_ci_shared::codebuild::event::{is_dispatcher_variable, requested_variables};
use prx_ci_shared::domain::Architecture;

use crate::fence::Position;
use crate::mapping::BuildFacts;

/// The variable that turns publishing on.
pub const PUBLISH_VARIABLE: &str = env::CI_PUBLISH;
/// The variable of prerelease builds (artifacts pushed, parameters never written).
pub const PRERELEASE_VARIABLE: &str = env::CI_PRERELEASE;
/// The detail of each mapping's skip when the build cannot be ordered ([`Verdict::Unordered`]).
pub const UNORDERED_DETAIL: &str = "the build has no push sequence (not started by the dispatcher), so it cannot be ordered against other pushes";
/// Characters of a contradicting value quoted in a skip's detail (the rest is cut).
pub const MAX_QUOTED_CHARS: usize = 80;

/// A dispatcher variable the build contradicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable's name (`PRX_REPO`, ...).
    pub variable: String,
    /// What the build said.
    pub exported: String,
    /// What the dispatcher said ("" when it set nothing).
    pub trusted: String,
}

impl Override {
    /// The skip's detail: names the variable, says what was ignored.
    pub fn detail(&self) -> String {
        let consequence = if self.variable == PUBLISH_VARIABLE {
            "nothing is written"
        } else {
            "the build's value is ignored"
        };
        format!(
            "the build set {} to {:?}, the dispatcher to {:?}: {consequence}",
            self.variable,
            quote(&self.exported),
            quote(&self.trusted)
        )
    }
}

fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        value.to_owned()
    } else {
        let mut cut: String = value.chars().take(MAX_QUOTED_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// What happens to the build's mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Parse the mappings and write them (through the artifact check and the fence).
    Publish,
    /// Write nothing; one whole-build skip says why.
    Skip {
        reason: PublishSkipReason,
        detail: String,
    },
    /// Write nothing; the overrides already say why (the build tried to turn publishing on).
    Withheld,
    /// Nobody requested the build (started in the console), or it has no push sequence: the
    /// mappings are reported, each as unordered, and never written.
    Unordered,
}

/// The decision for one successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Repository, commit and architecture for value checks and the fence (the dispatcher's).
    pub facts: BuildFacts,
    /// The variables the mappings read: the build's, with every dispatcher variable restored to
    /// the dispatcher's value (or removed where it set none).
    pub variables: HashMap<String, String>,
    /// Contradicted dispatcher variables, by name.
    pub overrides: Vec<Override>,
    /// The primary architecture the buildspec's marker asks for (the dispatcher's
    /// `BuildRequested.primary_architecture`); `None`: the publisher's config decides
    /// ([`crate::apps::AppRules::primary_architecture`]). Never read from the build's variables.
    pub primary_architecture: Option<Architecture>,
    pub verdict: Verdict,
}

impl Decision {
    /// The build's place in the fence's order: its push and whether it is the primary
    /// architecture's build (the one a push with several architectures publishes).
    pub fn position(&self, push_sequence: u64, primary_architecture: Architecture) -> Position {
        Position::new(
            push_sequence,
            self.facts.architecture == Some(primary_architecture),
        )
    }
}

/// Decides what a completed build may publish: `None` when it did not succeed (failures are the
/// notifier's business); otherwise [`decide`] on its request and variables, where a build
/// without a push sequence (`push_sequence` 0) cannot be ordered, so what would publish is
/// [`Verdict::Unordered`].
pub fn assess(done: &v1::BuildCompleted, push_sequence: u64) -> Option<Decision> {
    if done.status != v1::BuildStatus::Succeeded as i32 {
        return None;
    }
    let build = done.build.clone().unwrap_or_default();
    let mut decision = decide(done.requested.as_ref(), &done.variables, &build);
    if decision.verdict == Verdict::Publish && push_sequence == 0 {
        decision.verdict = Verdict::Unordered;
    }
    Some(decision)
}

fn facts_of(build: &v1::BuildRef) -> BuildFacts {
    BuildFacts {
        repository: build.repository.clone(),
        commit: build.commit.clone(),
        architecture: Architecture::from_proto(build.architecture),
    }
}

/// The skip of a build that may not publish: prerelease, or publishing off.
fn not_publishing(variables: &HashMap<String, String>, publish: Option<&str>) -> Verdict {
    if variables.get(PRERELEASE_VARIABLE).map(String::as_str) == Some("true") {
        Verdict::Skip {
            reason: PublishSkipReason::Prerelease,
            detail: "prerelease build: artifacts were pushed, parameters are never written"
                .to_owned(),
        }
    } else {
        Verdict::Skip {
            reason: PublishSkipReason::PublishingDisabled,
            detail: format!(
                "{PUBLISH_VARIABLE} is {:?}, not \"true\"",
                publish.unwrap_or("(unset)")
            ),
        }
    }
}

/// Decides what a successful build may publish. `requested` is `BuildCompleted.requested`,
/// `variables` the build's variables (`BuildCompleted.variables`), `build` its reference.
pub fn decide(
    requested: Option<&v1::BuildRequested>,
    variables: &HashMap<String, String>,
    build: &v1::BuildRef,
) -> Decision {
    let Some(request) = requested else {
        // Nothing vouches for the build: what it says about itself is shown, never acted on.
        let publish = variables.get(PUBLISH_VARIABLE).map(String::as_str);
        let verdict = if publish == Some("true") {
            Verdict::Unordered
        } else {
            not_publishing(variables, publish)
        };
        return Decision {
            facts: facts_of(build),
            variables: variables.clone(),
            overrides: Vec::new(),
            primary_architecture: None,
            verdict,
        };
    };
    let trusted = requested_variables(request);
    let dispatcher_publish = trusted.get(PUBLISH_VARIABLE).map(String::as_str);
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let mut overrides = Vec::new();
    for name in names {
        if !is_dispatcher_variable(name, &trusted) {
            continue;
        }
        let exported = variables[name].as_str();
        let said = trusted.get(name).map_or("", String::as_str);
        // Turning publishing off is the one thing a build may decide for itself.
        let downgrade = name == PUBLISH_VARIABLE && said == "true";
        if exported != said && !downgrade {
            overrides.push(Override {
                variable: name.clone(),
                exported: exported.to_owned(),
                trusted: said.to_owned(),
            });
        }
    }
    let mut effective = variables.clone();
    for o in &overrides {
        effective.remove(&o.variable);
    }
    for (name, value) in &trusted {
        if name != PUBLISH_VARIABLE {
            effective.insert(name.clone(), value.clone());
        }
    }
    let build_publish = variables.get(PUBLISH_VARIABLE).map(String::as_str);
    let verdict = if request.fork {
        Verdict::Skip {
            reason: PublishSkipReason::Fork,
            detail: format!(
                "pull request #{} comes from a fork: its builds never publish",
                request.pull_request
            ),
        }
    } else if overrides.iter().any(|o| o.variable == PUBLISH_VARIABLE) {
        Verdict::Withheld
    } else if dispatcher_publish != Some("true") {
        not_publishing(&effective, dispatcher_publish)
    } else if build_publish != Some("true") {
        // Publishing needs the build's word too: its reported environment carries the
        // dispatcher's `true` unless the build exported something else (or reported nothing).
        not_publishing(&effective, build_publish)
    } else {
        Verdict::Publish
    };
    Decision {
        facts: facts_of(request.build.as_ref().unwrap_or(build)),
        variables: effective,
        overrides,
        primary_architecture: Architecture::from_proto(request.primary_architecture),
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const OTHER_SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn build_ref() -> v1::BuildRef {
        v1::BuildRef {
            build_id: "p:1".into(),
            repository: "PRX/app".into(),
            commit: SHA.into(),
            architecture: v1::Architecture::Aarch64 as i32,
            ..Default::default()
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The dispatcher's environment of a push (publish) or a pull request (`publish` as given).
    fn request(pull_request: u64, publish: &str) -> v1::BuildRequested {
        let mut environment = vars(&[
            (env::REPO, "PRX/app"),
            (env::COMMIT, SHA),
            (env::BRANCH, "feature"),
            (env::TARGET_ARCHITECTURE, "aarch64"),
            (env::CI_PUBLISH, publish),
        ]);
        if pull_request != 0 {
            environment.insert(env::GITHUB_PR.into(), pull_request.to_string());
        }
        v1::BuildRequested {
            build: Some(build_ref()),
            environment,
            branch: "feature".into(),
            pull_request,
            ..Default::default()
        }
    }

    /// What the build reports: the dispatcher's environment, then its exports.
    fn reported(
        request: &v1::BuildRequested,
        exported: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let mut all = request.environment.clone();
        all.extend(vars(exported));
        all
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.overrides.iter().map(|o| o.variable.as_str()).collect()
    }

    #[test]
    fn a_push_publishes_under_the_dispatchers_facts() {
        let r = request(0, "true");
        let d = decide(Some(&r), &reported(&r, &[("APP", "x")]), &build_ref());
        assert_eq!(d.verdict, Verdict::Publish);
        assert!(d.overrides.is_empty());
        assert_eq!(d.facts.repository, "PRX/app");
        assert_eq!(d.facts.commit, SHA);
        assert_eq!(d.facts.architecture, Some(Architecture::Aarch64));
        assert_eq!(d.variables["APP"], "x");
    }

    #[test]
    fn an_opted_in_same_repo_pull_request_publishes() {
        let r = request(12, "true");
        let d = decide(Some(&r), &reported(&r, &[]), &build_ref());
        assert_eq!(d.verdict, Verdict::Publish);
        assert!(d.overrides.is_empty());
    }

    #[test]
    fn a_pull_request_exporting_publish_true_is_withheld_and_named() {
        let r = request(12, "false");
        let d = decide(
            Some(&r),
            &reported(&r, &[(env::CI_PUBLISH, "true")]),
            &build_ref(),
        );
        assert_eq!(d.verdict, Verdict::Withheld);
        assert_eq!(names(&d), [env::CI_PUBLISH]);
        let detail = d.overrides[0].detail();
        assert!(detail.contains(env::CI_PUBLISH), "{detail}");
        assert!(detail.contains("nothing is written"), "{detail}");
    }

    #[test]
    fn a_build_may_turn_publishing_off_but_not_on() {
        let r = request(0, "true");
        for off in ["false", "", "yes"] {
            let d = decide(
                Some(&r),
                &reported(&r, &[(env::CI_PUBLISH, off)]),
                &build_ref(),
            );
            assert!(d.overrides.is_empty(), "{off:?} is a downgrade");
            assert!(
                matches!(
                    d.verdict,
                    Verdict::Skip {
                        reason: PublishSkipReason::PublishingDisabled,
                        ..
                    }
                ),
                "{:?}",
                d.verdict
            );
        }
        // Without the build's word at all (no reported environment), nothing is written either.
        let d = decide(Some(&r), &vars(&[("APP", "x")]), &build_ref());
        assert!(matches!(d.verdict, Verdict::Skip { .. }), "{:?}", d.verdict);
        // A pull request the dispatcher did not let publish stays off, prerelease or not.
        let pr = request(12, "false");
        let d = decide(
            Some(&pr),
            &reported(&pr, &[(env::CI_PRERELEASE, "true")]),
            &build_ref(),
        );
        assert!(matches!(
            d.verdict,
            Verdict::Skip {
                reason: PublishSkipReason::Prerelease,
                ..
            }
        ));
    }

    #[test]
    fn identity_overrides_are_reported_and_replaced_by_the_dispatchers_values() {
        let r = request(12, "true");
        let d = decide(
            Some(&r),
            &reported(
                &r,
                &[
                    (env::REPO, "Evil/other"),
                    (env::COMMIT, OTHER_SHA),
                    (env::BRANCH, "main"),
                    (env::TARGET_ARCHITECTURE, "x86_64"),
                    (env::GITHUB_PR, "13"),
                    (env::GITHUB_BEFORE, OTHER_SHA),
                    ("APP", "github/evil/other:x"),
                ],
            ),
            &build_ref(),
        );
        assert_eq!(
            names(&d),
            [
                env::BRANCH,
                env::COMMIT,
                env::GITHUB_BEFORE,
                env::GITHUB_PR,
                env::REPO,
                env::TARGET_ARCHITECTURE
            ]
        );
        // Publishing goes on, under the dispatcher's facts only.
        assert_eq!(d.verdict, Verdict::Publish);
        assert_eq!(d.facts.repository, "PRX/app");
        assert_eq!(d.facts.commit, SHA);
        assert_eq!(d.facts.architecture, Some(Architecture::Aarch64));
        assert_eq!(d.variables[env::REPO], "PRX/app");
        assert_eq!(d.variables[env::COMMIT], SHA);
        assert_eq!(d.variables[env::GITHUB_PR], "12");
        assert!(!d.variables.contains_key(env::GITHUB_BEFORE));
        assert_eq!(d.variables["APP"], "github/evil/other:x");
        let detail = d.overrides[4].detail();
        assert!(
            detail.contains(env::REPO) && detail.contains("Evil/other"),
            "{detail}"
        );
    }

    #[test]
    fn the_request_fields_win_over_its_environment() {
        // An older dispatcher's environment, or a build reference the request corrected.
        let mut r = request(0, "true");
        r.environment.remove(env::BRANCH);
        let d = decide(
            Some(&r),
            &reported(&r, &[(env::BRANCH, "main")]),
            &build_ref(),
        );
        assert_eq!(names(&d), [env::BRANCH]);
        // Equal values are no contradiction, nor an empty value for a variable nobody set.
        let d = decide(
            Some(&r),
            &reported(&r, &[(env::BRANCH, "feature"), (env::GITHUB_PR, "")]),
            &build_ref(),
        );
        assert!(d.overrides.is_empty(), "{:?}", d.overrides);
    }

    #[test]
    fn other_dispatcher_variables_are_the_dispatchers_too() {
        let mut r = request(0, "true");
        r.environment
            .insert(env::APPLICATION_CODE_BUCKET.into(), "prx-code".into());
        let d = decide(
            Some(&r),
            &reported(&r, &[(env::APPLICATION_CODE_BUCKET, "evil-bucket")]),
            &build_ref(),
        );
        assert_eq!(names(&d), [env::APPLICATION_CODE_BUCKET]);
        assert_eq!(d.variables[env::APPLICATION_CODE_BUCKET], "prx-code");
    }

    #[test]
    fn forks_never_publish() {
        let mut r = request(12, "false");
        r.fork = true;
        let d = decide(
            Some(&r),
            &reported(&r, &[(env::CI_PUBLISH, "true")]),
            &build_ref(),
        );
        assert!(
            matches!(&d.verdict, Verdict::Skip { reason: PublishSkipReason::Fork, detail } if detail.contains("#12")),
            "{:?}",
            d.verdict
        );
        assert_eq!(names(&d), [env::CI_PUBLISH]);
        // Even if a dispatcher ever said `true` for one.
        let mut r = request(12, "true");
        r.fork = true;
        let d = decide(Some(&r), &reported(&r, &[]), &build_ref());
        assert!(matches!(
            d.verdict,
            Verdict::Skip {
                reason: PublishSkipReason::Fork,
                ..
            }
        ));
    }

    #[test]
    fn builds_nobody_requested_are_unordered_under_their_reference() {
        let exported = vars(&[
            (env::CI_PUBLISH, "true"),
            (env::REPO, "Evil/other"),
            (env::COMMIT, OTHER_SHA),
            (env::TARGET_ARCHITECTURE, "x86_64"),
        ]);
        let d = decide(None, &exported, &build_ref());
        assert_eq!(d.verdict, Verdict::Unordered);
        assert!(d.overrides.is_empty());
        assert_eq!(d.facts.repository, "PRX/app");
        assert_eq!(d.facts.commit, SHA);
        assert_eq!(d.facts.architecture, Some(Architecture::Aarch64));
        let d = decide(None, &vars(&[(env::CI_PUBLISH, "false")]), &build_ref());
        assert!(matches!(
            d.verdict,
            Verdict::Skip {
                reason: PublishSkipReason::PublishingDisabled,
                ..
            }
        ));
    }

    #[test]
    fn long_values_are_cut_in_the_detail() {
        let o = Override {
            variable: env::REPO.into(),
            exported: "x".repeat(500),
            trusted: "PRX/app".into(),
        };
        assert!(o.detail().chars().count() < 200, "{}", o.detail());
    }

    fn completed(
        status: v1::BuildStatus,
        requested: Option<v1::BuildRequested>,
    ) -> v1::BuildCompleted {
        let variables = requested
            .as_ref()
            .map(|r| r.environment.clone())
            .unwrap_or_default();
        v1::BuildCompleted {
            build: Some(build_ref()),
            status: status as i32,
            variables,
            requested,
            ..Default::default()
        }
    }

    #[test]
    fn only_successful_builds_are_assessed() {
        for status in [
            v1::BuildStatus::Failed,
            v1::BuildStatus::Stopped,
            v1::BuildStatus::Unspecified,
        ] {
            assert_eq!(
                assess(&completed(status, Some(request(0, "true"))), 7),
                None
            );
        }
        let d = assess(
            &completed(v1::BuildStatus::Succeeded, Some(request(0, "true"))),
            7,
        )
        .unwrap();
        assert_eq!(d.verdict, Verdict::Publish);
    }

    #[test]
    fn a_publishing_build_without_a_push_sequence_is_unordered() {
        let done = completed(v1::BuildStatus::Succeeded, Some(request(0, "true")));
        assert_eq!(assess(&done, 0).unwrap().verdict, Verdict::Unordered);
        // A build that may not publish keeps its own skip, sequence or not.
        let off = completed(v1::BuildStatus::Succeeded, Some(request(0, "false")));
        for sequence in [0, 7] {
            assert!(matches!(
                assess(&off, sequence).unwrap().verdict,
                Verdict::Skip {
                    reason: PublishSkipReason::PublishingDisabled,
                    ..
                }
            ));
        }
    }

    #[test]
    fn the_position_ranks_the_primary_architecture_first() {
        let d = assess(
            &completed(v1::BuildStatus::Succeeded, Some(request(0, "true"))),
            9,
        )
        .unwrap();
        assert_eq!(d.facts.architecture, Some(Architecture::Aarch64));
        assert_eq!(d.position(9, Architecture::Aarch64), Position::new(9, true));
        assert_eq!(d.position(9, Architecture::X86_64), Position::new(9, false));
        let unknown = Decision {
            facts: BuildFacts::default(),
            ..d
        };
        assert_eq!(
            unknown.position(9, Architecture::X86_64),
            Position::new(9, false)
        );
    }

    #[test]
    fn the_primary_architecture_marker_comes_from_the_request_only() {
        let mut r = request(0, "true");
        let d = decide(Some(&r), &reported(&r, &[]), &build_ref());
        assert_eq!(d.primary_architecture, None);
        r.primary_architecture = v1::Architecture::Aarch64 as i32;
        // The build exporting another marker changes nothing.
        let d = decide(
            Some(&r),
            &reported(&r, &[("PRX_PRIMARY_X86_64", "true")]),
            &build_ref(),
        );
        assert_eq!(d.primary_architecture, Some(Architecture::Aarch64));
        assert_eq!(d.position(9, Architecture::Aarch64), Position::new(9, true));
        // Nobody requested it: no marker, whatever it exports.
        let d = decide(
            None,
            &vars(&[(env::CI_PUBLISH, "true"), ("PRX_PRIMARY_AARCH64", "true")]),
            &build_ref(),
        );
        assert_eq!(d.primary_architecture, None);
    }
}
