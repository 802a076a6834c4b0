//! A webhook that builds: its plan, the builds its buildspec asks for, their `PRX_*` variables.

use std::collections::BTreeMap;

use prx_ci_shared::codebuild::build::SourceVersion;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::{Architecture, Branch, CommitSha, OrderingKey, RepoName};

use super::{DecisionConfig, Skip, SkipReason};

/// What triggered a build, with the fields its variables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A push to the default branch.
    Push {
        git_ref: String,
        branch: Branch,
        before: String,
        after: String,
    },
    /// A pull request event with a built action.
    PullRequest {
        number: u64,
        title: String,
        head_ref: String,
        base_ref: String,
        author: String,
        action: String,
        draft: bool,
        /// The head repository differs from the base repository, or is gone (deleted fork).
        fork: bool,
        /// `before` of a `synchronize` (the previous head; "" for other actions).
        before: String,
    },
}

/// A webhook that builds, once its buildspec says how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub repository: RepoName,
    /// The exact commit built: `after` (push) or `pull_request.head.sha`.
    pub commit: CommitSha,
    /// Branch (pushes) or pull request number: the unit of ordering and supersession.
    pub ordering_key: OrderingKey,
    /// `repository.clone_url`.
    pub clone_url: String,
    pub event_name: String,
    pub action: String,
    pub trigger: Trigger,
    /// GitHub's time of the push, seconds (`repository.pushed_at` of a push,
    /// `pull_request.updated_at` of a pull request); `None` when the payload has none.
    pub pushed_at: Option<i64>,
}

/// One build to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBuild {
    pub architecture: Architecture,
    /// The exact variables of reference §2.2 for this build.
    pub environment: BTreeMap<String, String>,
    /// The architecture the buildspec's marker makes primary (`None`: no marker, or both).
    pub primary_architecture: Option<Architecture>,
}

/// The builds a buildspec asks for, and what the operator should know about its markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builds {
    pub builds: Vec<PlannedBuild>,
    /// Markers that contradict each other or ask for nothing (logged as warnings).
    pub warnings: Vec<String>,
}

impl BuildPlan {
    /// What the backend checks out: the exact commit, named with the ref it is on
    /// (`refs/heads/<branch>^{<sha>}`, `refs/pull/<N>/head^{<sha>}`; see docs/source-version.md
    /// for what builds see as `CODEBUILD_SOURCE_VERSION`).
    ///
    /// The original built `pr/<number>` for pull requests, which makes CodeBuild resolve the
    /// pull request's head when the build starts: if more commits landed meanwhile, the build
    /// compiles a newer head than the `PRX_COMMIT` it reports, its artifacts carry the wrong
    /// SHA, and the ordering fence (which assumes a build's artifacts belong to its push) would
    /// publish content of another push under this push's sequence. The commit keeps "what was
    /// built" and "what the events say was built" the same; the ref lets CodeBuild fetch only
    /// that ref, shallowly, instead of the whole history a bare SHA needs, and is where a
    /// fork's commit lives in the base repository (`repository.clone_url`).
    pub fn source_version(&self) -> SourceVersion {
        match &self.trigger {
            Trigger::Push { branch, .. } => SourceVersion::branch(branch, self.commit.clone()),
            Trigger::PullRequest { number, .. } => {
                SourceVersion::pull_request(*number, self.commit.clone())
            }
        }
    }

    /// A pull request from a fork: code nobody trusted wrote.
    pub fn is_fork(&self) -> bool {
        matches!(self.trigger, Trigger::PullRequest { fork: true, .. })
    }

    /// The branch built (`PRX_BRANCH`).
    pub fn branch(&self) -> &str {
        match &self.trigger {
            Trigger::Push { branch, .. } => branch.as_str(),
            Trigger::PullRequest { head_ref, .. } => head_ref,
        }
    }

    /// The pull request number (0 for pushes).
    pub fn pull_request(&self) -> u64 {
        match &self.trigger {
            Trigger::Push { .. } => 0,
            Trigger::PullRequest { number, .. } => *number,
        }
    }

    /// What GitHub says about this push, for its place in the push order; `received_at`
    /// (when ingress stored the webhook) stands in for a payload without GitHub's time.
    pub fn push_facts(&self, received_at: i64) -> crate::push_order::PushFacts {
        let (before, after) = match &self.trigger {
            Trigger::Push { before, after, .. } => (before.clone(), after.clone()),
            Trigger::PullRequest { before, .. } => (before.clone(), self.commit.to_string()),
        };
        crate::push_order::PushFacts {
            pushed_at: self.pushed_at.unwrap_or(received_at),
            before,
            after,
        }
    }

    /// A skip of this plan (after the buildspec lookup).
    pub fn skip(&self, reason: SkipReason, detail: impl Into<String>) -> Skip {
        Skip {
            reason,
            detail: detail.into(),
            event_name: self.event_name.clone(),
            action: self.action.clone(),
            repository: self.repository.to_string(),
            commit: self.commit.to_string(),
            git_ref: match &self.trigger {
                Trigger::Push { git_ref, .. } => git_ref.clone(),
                Trigger::PullRequest { .. } => String::new(),
            },
            ordering_key: Some(self.ordering_key.clone()),
        }
    }

    /// The builds the buildspec asks for, or why none: the marker must be present; the
    /// architecture markers select architectures by presence (none = one x86_64 build); the
    /// primary markers name the primary architecture by presence (see [`primary_architecture`]).
    pub fn builds(&self, buildspec: &str, config: &DecisionConfig) -> Result<Builds, Skip> {
        if !buildspec.contains(&config.marker) {
            return Err(self.skip(
                SkipReason::NoMarker,
                format!("buildspec.yml does not contain {:?}", config.marker),
            ));
        }
        let mut architectures = Vec::with_capacity(2);
        if buildspec.contains(&config.x86_64_marker) {
            architectures.push(Architecture::X86_64);
        }
        if buildspec.contains(&config.aarch64_marker) {
            architectures.push(Architecture::Aarch64);
        }
        if architectures.is_empty() {
            architectures.push(Architecture::X86_64);
        }
        let (primary, mut warnings) = primary_architecture(buildspec, config);
        if let Some(primary) = primary
            && !architectures.contains(&primary)
        {
            warnings.push(format!(
                "buildspec.yml makes {primary} the primary architecture but builds no {primary} \
                 image (add {:?} to build it)",
                config.build_marker(primary)
            ));
        }
        let publish = match &self.trigger {
            // Forced: a default-branch push always publishes, whatever the buildspec says.
            Trigger::Push { .. } => true,
            // A fork controls its buildspec text: its opt-in counts for nothing.
            Trigger::PullRequest { fork: true, .. } => false,
            // String matching, not YAML: exactly the original's opt-in.
            Trigger::PullRequest { .. } => config
                .publish_opt_in
                .iter()
                .any(|opt_in| buildspec.contains(opt_in.as_str())),
        };
        let builds = architectures
            .into_iter()
            .map(|architecture| PlannedBuild {
                architecture,
                environment: self.environment(architecture, publish),
                primary_architecture: primary,
            })
            .collect();
        Ok(Builds { builds, warnings })
    }

    fn environment(&self, architecture: Architecture, publish: bool) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |name: &str, value: &str| {
            env.insert(name.to_owned(), value.to_owned());
        };
        set(env::REPO, &self.repository.to_string());
        set(env::COMMIT, self.commit.as_str());
        set(env::CI_PUBLISH, if publish { "true" } else { "false" });
        set(env::TARGET_ARCHITECTURE, architecture.as_str());
        match &self.trigger {
            Trigger::Push {
                branch,
                before,
                after,
                ..
            } => {
                set(env::BRANCH, branch.as_str());
                set(env::GITHUB_BEFORE, before);
                set(env::GITHUB_AFTER, after);
            }
            Trigger::PullRequest {
                number,
                title,
                head_ref,
                base_ref,
                author,
                action,
                ..
            } => {
                set(env::BRANCH, head_ref);
                set(env::GITHUB_PR, &number.to_string());
                set(env::GITHUB_PR_TITLE, title);
                set(env::GITHUB_PR_BASE_BRANCH, base_ref);
                set(env::GITHUB_PR_AUTHOR, author);
                set(env::GITHUB_ACTION, action);
            }
        }
        env
    }
}

/// The primary architecture a buildspec's markers name, by presence as the architecture
/// markers (`PRX_PRIMARY_X86_64`, `PRX_PRIMARY_AARCH64`): one marker names it; none leaves it to
/// the publisher's configuration; both are a contradiction, so neither counts, with a warning.
/// (The configuration refuses markers that contain one another, so `PRX_BUILD_*` and
/// `PRX_PRIMARY_*` are never read for each other.)
pub fn primary_architecture(
    buildspec: &str,
    config: &DecisionConfig,
) -> (Option<Architecture>, Vec<String>) {
    let x86_64 = buildspec.contains(&config.primary_x86_64_marker);
    let aarch64 = buildspec.contains(&config.primary_aarch64_marker);
    match (x86_64, aarch64) {
        (true, false) => (Some(Architecture::X86_64), Vec::new()),
        (false, true) => (Some(Architecture::Aarch64), Vec::new()),
        (false, false) => (None, Vec::new()),
        (true, true) => (
            None,
            vec![format!(
                "buildspec.yml contains both {:?} and {:?}; neither counts, the publisher's \
                 configured primary architecture applies",
                config.primary_x86_64_marker, config.primary_aarch64_marker
            )],
        ),
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::codebuild::env;
    use prx_ci_shared::domain::Architecture;
    use serde_json::Value;

    use super::super::fixtures::*;
    use super::super::{DecisionConfig, ForkPolicy, SkipReason, decide};

    #[test]
    fn built_forks_never_publish_whatever_their_buildspec_says() {
        let config = DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..DecisionConfig::default()
        };
        let fork = pull_request_from(
            "synchronize",
            serde_json::json!({"full_name": "outsider/app"}),
        );
        let plan = decide("pull_request", &fork, &config).unwrap();
        assert!(plan.is_fork());
        let builds = plan
            .builds(
                "PRX_\nenv:\n  variables:\n    PRX_CI_PUBLISH: true\n",
                &config,
            )
            .unwrap()
            .builds;
        assert_eq!(builds[0].environment[env::CI_PUBLISH], "false");
    }

    #[test]
    fn github_time_and_chain_of_the_push() {
        let config = DecisionConfig::default();
        let mut body: Value = serde_json::from_slice(&push("refs/heads/main", SHA_A)).unwrap();
        body["repository"]["pushed_at"] = serde_json::json!(1_764_142_800);
        let plan = decide("push", body.to_string().as_bytes(), &config).unwrap();
        let facts = plan.push_facts(99);
        assert_eq!(facts.pushed_at, 1_764_142_800);
        assert_eq!(
            (facts.before.as_str(), facts.after.as_str()),
            (SHA_B, SHA_A)
        );
        // No time in the payload: when ingress stored it.
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        assert_eq!(plan.push_facts(99).pushed_at, 99);
        // Pull requests: `updated_at`, and the synchronize chain.
        let plan = decide("pull_request", &pull_request("synchronize"), &config).unwrap();
        let facts = plan.push_facts(99);
        assert_eq!(facts.pushed_at, 1_795_678_862);
        assert_eq!(
            (facts.before.as_str(), facts.after.as_str()),
            (SHA_B, SHA_A)
        );
        let opened = decide("pull_request", &pull_request("opened"), &config).unwrap();
        assert_eq!(opened.push_facts(99).before, "");
    }

    #[test]
    fn default_branch_push_builds_the_after_sha() {
        let plan = decide(
            "push",
            &push("refs/heads/main", SHA_A),
            &DecisionConfig::default(),
        )
        .unwrap();
        assert_eq!(plan.commit.as_str(), SHA_A);
        assert_eq!(
            plan.source_version().to_string(),
            format!("refs/heads/main^{{{SHA_A}}}")
        );
        assert_eq!(plan.ordering_key.to_string(), "PRX/app@main");
        let builds = plan
            .builds("PRX_", &DecisionConfig::default())
            .unwrap()
            .builds;
        assert_eq!(builds.len(), 1);
        let env = &builds[0].environment;
        assert_eq!(env[env::CI_PUBLISH], "true");
        assert_eq!(env[env::BRANCH], "main");
        assert_eq!(env[env::GITHUB_BEFORE], SHA_B);
        assert_eq!(env[env::GITHUB_AFTER], SHA_A);
        assert!(!env.contains_key(env::GITHUB_PR));
    }

    #[test]
    fn publish_opt_in_is_literal() {
        let config = DecisionConfig::default();
        let plan = decide("pull_request", &pull_request("opened"), &config).unwrap();
        let publish = |spec: &str| {
            plan.builds(spec, &config).unwrap().builds[0].environment[env::CI_PUBLISH].clone()
        };
        assert_eq!(
            publish("env:\n  variables:\n    PRX_CI_PUBLISH: true\n"),
            "true"
        );
        assert_eq!(publish("PRX_CI_PUBLISH: \"true\""), "true");
        assert_eq!(publish("PRX_CI_PUBLISH: 'true'"), "true");
        assert_eq!(publish("PRX_CI_PUBLISH: false"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH:true"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH:  true"), "false");
        assert_eq!(publish("PRX_CI_PUBLISH: True"), "false");
        assert_eq!(publish("PRX_OTHER: 1"), "false");
    }

    #[test]
    fn architecture_markers_select_builds() {
        let config = DecisionConfig::default();
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        let arches = |spec: &str| {
            plan.builds(spec, &config)
                .unwrap()
                .builds
                .into_iter()
                .map(|b| b.environment[env::TARGET_ARCHITECTURE].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(arches("PRX_X"), ["x86_64"]);
        assert_eq!(arches("PRX_BUILD_AARCH64: 1"), ["aarch64"]);
        assert_eq!(
            arches("PRX_BUILD_AARCH64\nPRX_BUILD_X86_64"),
            ["x86_64", "aarch64"]
        );
        assert_eq!(arches("PRX_BUILD_X86_64: false"), ["x86_64"]);
        assert_eq!(
            reason(plan.builds("version: 0.2", &config).map(|_| plan.clone())),
            SkipReason::NoMarker
        );
    }

    #[test]
    fn pull_requests_build_their_head_through_the_pull_request_ref() {
        let config = DecisionConfig {
            fork_pull_requests: ForkPolicy::Build,
            ..DecisionConfig::default()
        };
        let expected = format!("refs/pull/7/head^{{{SHA_A}}}");
        let plan = decide("pull_request", &pull_request("synchronize"), &config).unwrap();
        assert_eq!(plan.source_version().to_string(), expected);
        assert_eq!(plan.source_version().commit(), Some(&plan.commit));
        // A fork's commit is only under the base repository's pull request ref.
        let fork = pull_request_from("opened", serde_json::json!({"full_name": "outsider/app"}));
        let plan = decide("pull_request", &fork, &config).unwrap();
        assert_eq!(plan.source_version().to_string(), expected);
    }

    #[test]
    fn primary_markers_name_the_primary_architecture() {
        let config = DecisionConfig::default();
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        let primary = |spec: &str| {
            let builds = plan.builds(spec, &config).unwrap();
            let primaries: Vec<_> = builds
                .builds
                .iter()
                .map(|b| b.primary_architecture)
                .collect();
            assert!(primaries.windows(2).all(|w| w[0] == w[1]), "{primaries:?}");
            (primaries[0], builds.warnings)
        };
        let both = "PRX_BUILD_X86_64: 1\nPRX_BUILD_AARCH64: 1\n";
        // Each marker, by presence (the value is ignored, as for the build markers).
        assert_eq!(
            primary(&format!("{both}PRX_PRIMARY_AARCH64: true")),
            (Some(Architecture::Aarch64), vec![])
        );
        assert_eq!(
            primary(&format!("{both}PRX_PRIMARY_X86_64: false")),
            (Some(Architecture::X86_64), vec![])
        );
        // None: the publisher's configuration decides.
        assert_eq!(primary(both), (None, vec![]));
        // Both: neither counts, and the decision says so.
        let (choice, warnings) = primary(&format!(
            "{both}PRX_PRIMARY_X86_64: 1\nPRX_PRIMARY_AARCH64: 1"
        ));
        assert_eq!(choice, None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("both \"PRX_PRIMARY_X86_64\" and \"PRX_PRIMARY_AARCH64\""),
            "{warnings:?}"
        );
        // A primary that is not built is kept (harmless) and named in a warning.
        let (choice, warnings) = primary("PRX_PRIMARY_AARCH64: 1");
        assert_eq!(choice, Some(Architecture::Aarch64));
        assert!(
            warnings[0].contains("builds no aarch64 image"),
            "{warnings:?}"
        );
    }

    #[test]
    fn build_and_primary_markers_are_not_read_for_each_other() {
        let config = DecisionConfig::default();
        let plan = decide("push", &push("refs/heads/main", SHA_A), &config).unwrap();
        // A primary marker requests no build: one x86_64 build, as without markers.
        let builds = plan.builds("PRX_PRIMARY_AARCH64: 1", &config).unwrap();
        let arches: Vec<_> = builds.builds.iter().map(|b| b.architecture).collect();
        assert_eq!(arches, [Architecture::X86_64]);
        // A build marker names no primary.
        let builds = plan
            .builds("PRX_BUILD_AARCH64: 1\nPRX_BUILD_X86_64: 1", &config)
            .unwrap();
        assert!(
            builds
                .builds
                .iter()
                .all(|b| b.primary_architecture.is_none())
        );
        assert!(builds.warnings.is_empty());
        // The same with every marker written without its value.
        let builds = plan
            .builds("PRX_BUILD_AARCH64 PRX_PRIMARY_X86_64", &config)
            .unwrap();
        let arches: Vec<_> = builds.builds.iter().map(|b| b.architecture).collect();
        assert_eq!(arches, [Architecture::Aarch64]);
        assert_eq!(
            builds.builds[0].primary_architecture,
            Some(Architecture::X86_64)
        );
    }
}
