//! The decision table: recorded GitHub payloads (`tests/data/github/`) and variations of them,
//! each with the exact decision and, for builds, the exact variable set per architecture.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use prx_ci_dispatcher::decision::{DecisionConfig, ForkPolicy, SkipReason, decide};
use serde_json::{Value, json};

const PLAIN: &str = "version: 0.2\nenv:\n  variables:\n    PRX_SPIRE_ECR_PKG_PARAMETERS: APP=/prx/stag/Spire/app/pkg\nphases:\n  build:\n    commands:\n      - make\n";
const MULTI_ARCH: &str =
    "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\n    PRX_BUILD_AARCH64: true\n";
const ARM_ONLY: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_AARCH64: 1\n";
const ARM_PRIMARY: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\n    PRX_BUILD_AARCH64: true\n    PRX_PRIMARY_AARCH64: true\n";
const BOTH_PRIMARY: &str = "version: 0.2\nenv:\n  variables:\n    PRX_BUILD_X86_64: true\n    PRX_BUILD_AARCH64: true\n    PRX_PRIMARY_AARCH64: true\n    PRX_PRIMARY_X86_64: true\n";
const OPT_IN_BARE: &str = "env:\n  variables:\n    PRX_CI_PUBLISH: true\n";
const OPT_IN_DOUBLE: &str = "env:\n  variables:\n    PRX_CI_PUBLISH: \"true\"\n";
const OPT_IN_SINGLE: &str = "env:\n  variables:\n    PRX_CI_PUBLISH: 'true'\n";
const OPT_OUT: &str = "env:\n  variables:\n    PRX_CI_PUBLISH: false\n";
const NO_SPACE: &str = "env:\n  variables:\n    PRX_CI_PUBLISH:true\n";
const NO_MARKER: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n";

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/github")
}

fn recorded(name: &str) -> Value {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    *value
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = new;
    value
}

fn without(mut value: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap_or_else(|| panic!("{pointer}"));
    value
}

/// The decision rendered for snapshots: the skip, or every build with its environment.
fn render(event: &str, payload: &Value, buildspec: &str, config: &DecisionConfig) -> Value {
    let bytes = serde_json::to_vec(payload).unwrap();
    let skip_json = |skip: prx_ci_dispatcher::decision::Skip| {
        json!({
            "skip": skip.reason.name(),
            "detail": skip.detail,
            "repository": skip.repository,
            "commit": skip.commit,
            "ref": skip.git_ref,
            "action": skip.action,
            "ordering_key": skip.ordering_key.map(|k| k.to_string()),
        })
    };
    match decide(event, &bytes, config) {
        Err(skip) => skip_json(skip),
        Ok(plan) => match plan.builds(buildspec, config) {
            Err(skip) => skip_json(skip),
            Ok(builds) => json!({
                "build": {
                    "repository": plan.repository.to_string(),
                    "commit": plan.commit.to_string(),
                    "source_version": plan.source_version().to_string(),
                    "primary_architecture": builds.builds[0].primary_architecture.map(|a| a.as_str()),
                    "warnings": builds.warnings,
                    "clone_url": plan.clone_url,
                    "ordering_key": plan.ordering_key.to_string(),
                    "event": plan.event_name,
                    "action": plan.action,
                },
                "builds": builds
                    .builds
                    .into_iter()
                    .map(|b| json!({
                        "architecture": b.architecture.as_str(),
                        "environment": b.environment,
                    }))
                    .collect::<Vec<_>>(),
            }),
        },
    }
}

fn cases() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    let push = recorded("push.json");
    let opened = recorded("pull_request-opened.json");
    let mut cases = vec![
        ("push_default_branch", "push", push.clone(), PLAIN),
        ("push_multi_arch", "push", push.clone(), MULTI_ARCH),
        ("push_arm_only", "push", push.clone(), ARM_ONLY),
        ("push_arm_primary", "push", push.clone(), ARM_PRIMARY),
        (
            "push_both_primary_markers",
            "push",
            push.clone(),
            BOTH_PRIMARY,
        ),
        // A push publishes whatever the buildspec says.
        ("push_opt_out_is_ignored", "push", push.clone(), OPT_OUT),
        ("push_no_marker", "push", push.clone(), NO_MARKER),
        (
            "push_non_default_branch",
            "push",
            recorded("push-non-default-branch.json"),
            PLAIN,
        ),
        ("push_tag", "push", recorded("push-tag.json"), PLAIN),
        (
            "push_branch_deleted",
            "push",
            recorded("push-branch-deleted.json"),
            PLAIN,
        ),
        (
            "push_deleted_default_branch",
            "push",
            with(
                with(push.clone(), "/deleted", json!(true)),
                "/after",
                json!("0000000000000000000000000000000000000000"),
            ),
            PLAIN,
        ),
        (
            "push_missing_after",
            "push",
            without(push.clone(), "/after"),
            PLAIN,
        ),
        (
            "push_missing_ref",
            "push",
            without(push.clone(), "/ref"),
            PLAIN,
        ),
        (
            "push_missing_default_branch",
            "push",
            without(push.clone(), "/repository/default_branch"),
            PLAIN,
        ),
        (
            "push_missing_repository",
            "push",
            without(push.clone(), "/repository"),
            PLAIN,
        ),
        (
            "push_missing_clone_url",
            "push",
            without(push.clone(), "/repository/clone_url"),
            PLAIN,
        ),
        (
            "push_bad_after",
            "push",
            with(push.clone(), "/after", json!("HEAD")),
            PLAIN,
        ),
        ("pull_request_opened", "pull_request", opened.clone(), PLAIN),
        (
            "pull_request_opened_opt_in_bare",
            "pull_request",
            opened.clone(),
            OPT_IN_BARE,
        ),
        (
            "pull_request_opened_opt_in_double",
            "pull_request",
            opened.clone(),
            OPT_IN_DOUBLE,
        ),
        (
            "pull_request_opened_opt_in_single",
            "pull_request",
            opened.clone(),
            OPT_IN_SINGLE,
        ),
        (
            "pull_request_opened_opt_out",
            "pull_request",
            opened.clone(),
            OPT_OUT,
        ),
        (
            "pull_request_opened_opt_in_without_space",
            "pull_request",
            opened.clone(),
            NO_SPACE,
        ),
        (
            "pull_request_opened_multi_arch",
            "pull_request",
            opened.clone(),
            MULTI_ARCH,
        ),
        (
            "pull_request_synchronize",
            "pull_request",
            recorded("pull_request-synchronize.json"),
            PLAIN,
        ),
        (
            "pull_request_ready_for_review",
            "pull_request",
            recorded("pull_request-ready_for_review.json"),
            PLAIN,
        ),
        (
            "pull_request_draft_opened",
            "pull_request",
            recorded("pull_request-draft-opened.json"),
            PLAIN,
        ),
        (
            "pull_request_fork",
            "pull_request",
            recorded("pull_request-fork.json"),
            PLAIN,
        ),
        (
            "pull_request_closed",
            "pull_request",
            recorded("pull_request-closed.json"),
            PLAIN,
        ),
        (
            "pull_request_no_marker",
            "pull_request",
            opened.clone(),
            NO_MARKER,
        ),
        (
            "pull_request_missing_head_sha",
            "pull_request",
            without(opened.clone(), "/pull_request/head/sha"),
            PLAIN,
        ),
        (
            "pull_request_missing_number",
            "pull_request",
            without(without(opened.clone(), "/number"), "/pull_request/number"),
            PLAIN,
        ),
        (
            "pull_request_missing_user",
            "pull_request",
            without(opened.clone(), "/pull_request/user"),
            PLAIN,
        ),
        (
            "pull_request_null_title",
            "pull_request",
            with(opened.clone(), "/pull_request/title", Value::Null),
            PLAIN,
        ),
        ("ping", "ping", recorded("ping.json"), PLAIN),
        (
            "issues",
            "issues",
            json!({"action": "opened", "repository": {"full_name": "PRX/example-app"}}),
            PLAIN,
        ),
    ];
    for action in [
        "reopened",
        "unlocked",
        "edited",
        "labeled",
        "converted_to_draft",
        "assigned",
        "review_requested",
    ] {
        let name: &'static str = Box::leak(format!("pull_request_{action}").into_boxed_str());
        cases.push((
            name,
            "pull_request",
            with(opened.clone(), "/action", json!(action)),
            PLAIN,
        ));
    }
    cases
}

#[test]
fn decision_table() {
    let config = DecisionConfig::default();
    for (name, event, payload, buildspec) in cases() {
        let rendered = render(event, &payload, buildspec, &config);
        insta::assert_yaml_snapshot!(name, rendered);
    }
}

fn env_of(event: &str, payload: &Value, buildspec: &str) -> Vec<BTreeMap<String, String>> {
    let config = DecisionConfig::default();
    let plan = decide(event, &serde_json::to_vec(payload).unwrap(), &config).unwrap();
    plan.builds(buildspec, &config)
        .unwrap()
        .builds
        .into_iter()
        .map(|b| b.environment)
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn default_branch_push_variables_are_exactly_the_originals() {
    let push = recorded("push.json");
    assert_eq!(
        env_of("push", &push, PLAIN),
        [map(&[
            ("PRX_REPO", "PRX/example-app"),
            ("PRX_COMMIT", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"),
            ("PRX_BRANCH", "main"),
            ("PRX_CI_PUBLISH", "true"),
            (
                "PRX_GITHUB_BEFORE",
                "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
            ),
            (
                "PRX_GITHUB_AFTER",
                "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
            ),
            ("PRX_TARGET_ARCHITECTURE", "x86_64"),
        ])]
    );
}

#[test]
fn pull_request_variables_are_exactly_the_originals() {
    let pr = recorded("pull_request-opened.json");
    let p = |ptr: &str| pr.pointer(ptr).unwrap().as_str().unwrap().to_owned();
    let expected = |publish: &str, arch: &str| {
        map(&[
            ("PRX_REPO", "PRX/example-app"),
            ("PRX_COMMIT", &p("/pull_request/head/sha")),
            ("PRX_BRANCH", &p("/pull_request/head/ref")),
            ("PRX_CI_PUBLISH", publish),
            ("PRX_GITHUB_PR", "142"),
            ("PRX_GITHUB_PR_TITLE", &p("/pull_request/title")),
            ("PRX_GITHUB_PR_BASE_BRANCH", &p("/pull_request/base/ref")),
            ("PRX_GITHUB_PR_AUTHOR", &p("/pull_request/user/login")),
            ("PRX_GITHUB_ACTION", "opened"),
            ("PRX_TARGET_ARCHITECTURE", arch),
        ])
    };
    assert_eq!(
        env_of("pull_request", &pr, PLAIN),
        [expected("false", "x86_64")]
    );
    for spec in [OPT_IN_BARE, OPT_IN_DOUBLE, OPT_IN_SINGLE] {
        assert_eq!(
            env_of("pull_request", &pr, spec),
            [expected("true", "x86_64")]
        );
    }
    for spec in [OPT_OUT, NO_SPACE] {
        assert_eq!(
            env_of("pull_request", &pr, spec),
            [expected("false", "x86_64")]
        );
    }
    assert_eq!(
        env_of("pull_request", &pr, MULTI_ARCH),
        [expected("false", "x86_64"), expected("false", "aarch64")]
    );
}

#[test]
fn drafts_build_and_forks_are_skipped_unless_configured() {
    let draft = recorded("pull_request-draft-opened.json");
    assert_eq!(draft["pull_request"]["draft"], json!(true));
    assert_eq!(env_of("pull_request", &draft, PLAIN).len(), 1);
    let fork = recorded("pull_request-fork.json");
    let body = serde_json::to_vec(&fork).unwrap();
    let skip = decide("pull_request", &body, &DecisionConfig::default()).unwrap_err();
    assert_eq!(skip.reason, SkipReason::Fork);
    assert!(
        skip.detail.contains("outside-contrib/example-app"),
        "{}",
        skip.detail
    );
    let config = DecisionConfig {
        fork_pull_requests: ForkPolicy::Build,
        ..DecisionConfig::default()
    };
    let plan = decide("pull_request", &body, &config).unwrap();
    assert!(plan.is_fork());
    // The base repository is cloned; the fork's head commit is built through the base
    // repository's pull request ref, where GitHub keeps it.
    assert_eq!(plan.repository.to_string(), "PRX/example-app");
    assert_eq!(
        plan.clone_url,
        fork["repository"]["clone_url"].as_str().unwrap()
    );
    let head = fork["pull_request"]["head"]["sha"].as_str().unwrap();
    assert_eq!(
        plan.source_version().to_string(),
        format!("refs/pull/{}/head^{{{head}}}", fork["number"])
    );
    // Its buildspec's opt-in counts for nothing.
    let builds = plan
        .builds("PRX_\nPRX_CI_PUBLISH: true\n", &config)
        .unwrap()
        .builds;
    assert_eq!(builds[0].environment["PRX_CI_PUBLISH"], "false");
}

#[test]
fn owner_allow_list_applies_to_recorded_payloads() {
    let config = DecisionConfig {
        allowed_owners: vec!["someone-else".into()],
        ..DecisionConfig::default()
    };
    for (event, file) in [
        ("push", "push.json"),
        ("pull_request", "pull_request-opened.json"),
    ] {
        let payload = std::fs::read(data_dir().join(file)).unwrap();
        let skip = decide(event, &payload, &config).unwrap_err();
        assert_eq!(skip.reason, SkipReason::OwnerNotAllowed, "{file}");
    }
    let config = DecisionConfig {
        allowed_owners: vec!["prx".into()],
        ..DecisionConfig::default()
    };
    assert!(
        decide(
            "push",
            &std::fs::read(data_dir().join("push.json")).unwrap(),
            &config
        )
        .is_ok()
    );
}

#[test]
fn configured_strings_replace_the_prx_defaults() {
    let config = DecisionConfig {
        marker: "ACME_".into(),
        x86_64_marker: "ACME_X86".into(),
        aarch64_marker: "ACME_ARM".into(),
        primary_x86_64_marker: "ACME_MAIN_X86".into(),
        primary_aarch64_marker: "ACME_MAIN_ARM".into(),
        publish_opt_in: vec!["publish-prs: yes".into()],
        allowed_owners: vec![],
        fork_pull_requests: Default::default(),
    };
    let pr = serde_json::to_vec(&recorded("pull_request-opened.json")).unwrap();
    let plan = decide("pull_request", &pr, &config).unwrap();
    assert_eq!(
        plan.builds("PRX_BUILD_AARCH64", &config)
            .unwrap_err()
            .reason,
        SkipReason::NoMarker
    );
    let builds = plan
        .builds("ACME_ARM\nACME_MAIN_ARM\npublish-prs: yes", &config)
        .unwrap()
        .builds;
    assert_eq!(builds.len(), 1);
    assert_eq!(
        builds[0].primary_architecture,
        Some(prx_ci_shared::domain::Architecture::Aarch64)
    );
    assert_eq!(builds[0].environment["PRX_TARGET_ARCHITECTURE"], "aarch64");
    assert_eq!(builds[0].environment["PRX_CI_PUBLISH"], "true");
}

/// JSON values that reach the fields the decision reads.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("refs/heads/main"),
            Just("refs/tags/v1"),
            Just("main"),
            Just("push"),
            Just("opened"),
            Just("synchronize"),
            Just("PRX/app"),
            Just("0000000000000000000000000000000000000000"),
            Just("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let keys = prop_oneof![
        Just("ref"),
        Just("before"),
        Just("after"),
        Just("deleted"),
        Just("action"),
        Just("number"),
        Just("repository"),
        Just("full_name"),
        Just("default_branch"),
        Just("clone_url"),
        Just("pull_request"),
        Just("head"),
        Just("base"),
        Just("sha"),
        Just("user"),
        Just("login"),
        Just("title"),
        Just("draft"),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #[test]
    fn the_decision_never_panics(
        event in prop_oneof![Just("push"), Just("pull_request"), Just("issues")],
        payload in arbitrary_json(),
        buildspec in any::<String>(),
    ) {
        let config = DecisionConfig::default();
        if let Ok(plan) = decide(event, &serde_json::to_vec(&payload).unwrap(), &config)
            && let Ok(builds) = plan.builds(&buildspec, &config)
        {
            let builds = builds.builds;
            prop_assert!(!builds.is_empty() && builds.len() <= 2);
            for build in builds {
                prop_assert_eq!(&build.environment["PRX_COMMIT"], plan.commit.as_str());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decide("push", &bytes, &DecisionConfig::default());
        let _ = decide("pull_request", &bytes, &DecisionConfig::default());
    }
}
