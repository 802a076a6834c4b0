//! Snapshots of the rendered Slack message, built from real event sequences folded into a
//! build view (the same path the service takes).

mod fakes;

use std::collections::HashMap;

use proptest::prelude::*;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::Chain;
use prx_ci_shared::bus::envelope::timestamp;
use prx_ci_shared::notice::console_links::LinkConfig;
use prx_ci_shared::notice::fixtures::{self, SHA};
use prx_ci_shared::notice::render::{self, MAX_SECTION_CHARS, SlackMessage};
use prx_ci_shared::notice::render::{CommitSummary, CommitsCache};
use prx_ci_shared::notice::view::{BuildState, BuildView, Cancellation, PublishView};
use time::macros::datetime;

const BEFORE: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const NEWER: &str = "abcdef0123456789abcdef0123456789abcdef01";

fn links() -> LinkConfig {
    LinkConfig {
        sso_start_url: Some("https://d-906713e952.awsapps.com/start".into()),
        sso_role_name: "AdministratorAccess".into(),
        account_id: None,
    }
}

fn build_ref() -> v1::BuildRef {
    v1::BuildRef {
        log_url: "https://us-east-1.console.aws.amazon.com/cloudwatch/home#logsV2:log-groups"
            .into(),
        ..fixtures::build_ref()
    }
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn push_env() -> HashMap<String, String> {
    vars(&[
        ("PRX_REPO", "PRX/my-app"),
        ("PRX_COMMIT", SHA),
        ("PRX_BRANCH", "main"),
        ("PRX_CI_PUBLISH", "true"),
        ("PRX_GITHUB_BEFORE", BEFORE),
        ("PRX_GITHUB_AFTER", SHA),
        ("PRX_TARGET_ARCHITECTURE", "x86_64"),
    ])
}

fn pr_env() -> HashMap<String, String> {
    vars(&[
        ("PRX_REPO", "PRX/my-app"),
        ("PRX_COMMIT", SHA),
        ("PRX_BRANCH", "feature/faster-feeds"),
        ("PRX_CI_PUBLISH", "false"),
        ("PRX_GITHUB_PR", "582"),
        ("PRX_GITHUB_PR_TITLE", "Make feeds <faster> & smaller"),
        ("PRX_GITHUB_PR_BASE_BRANCH", "main"),
        ("PRX_GITHUB_PR_AUTHOR", "octocat"),
        ("PRX_GITHUB_ACTION", "synchronize"),
        ("PRX_TARGET_ARCHITECTURE", "x86_64"),
    ])
}

fn project_env() -> HashMap<String, String> {
    vars(&[
        ("PRX_AWS_ACCOUNT_ID", "123456789012"),
        (
            "PRX_APPLICATION_CODE_BUCKET",
            "prx-us-east-1-application-code",
        ),
    ])
}

struct Build {
    view: BuildView,
    next: u32,
}

impl Build {
    fn new() -> Self {
        Self {
            view: BuildView::default(),
            next: 0,
        }
    }

    fn apply(&mut self, payload: Payload) -> &mut Self {
        self.next += 1;
        let envelope = Chain::starting("delivery-1").envelope_at(
            format!("event-{}", self.next),
            datetime!(2026-11-26 08:00 UTC),
            payload,
        );
        assert!(self.view.apply(&envelope).unwrap());
        self
    }

    fn requested(&mut self, environment: HashMap<String, String>) -> &mut Self {
        self.apply(Payload::BuildRequested(v1::BuildRequested {
            build: Some(build_ref()),
            environment,
            event_name: "push".into(),
            ..Default::default()
        }))
    }

    fn started(&mut self) -> &mut Self {
        self.apply(Payload::BuildStarted(v1::BuildStarted {
            requested: None,
            build: Some(build_ref()),
            started_at: Some(timestamp(datetime!(2026-11-26 08:00 UTC))),
            environment: project_env(),
        }))
    }

    fn phase(&mut self, completed: &str, status: &str, current: &str, message: &str) -> &mut Self {
        self.apply(Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(build_ref()),
            completed_phase: completed.into(),
            completed_phase_status: status.into(),
            current_phase: current.into(),
            message: message.into(),
            duration_ms: 12_000,
            ..Default::default()
        }))
    }

    fn completed(
        &mut self,
        status: v1::BuildStatus,
        exported: HashMap<String, String>,
        failed_phase: &str,
        failure_message: &str,
    ) -> &mut Self {
        self.apply(Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(build_ref()),
            status: status as i32,
            exported_variables: exported,
            failed_phase: failed_phase.into(),
            failure_message: failure_message.into(),
            duration_ms: 192_000,
            ..Default::default()
        }))
    }
}

fn commits(n: usize, total: u64) -> CommitsCache {
    CommitsCache::Loaded {
        commits: (0..n)
            .map(|i| CommitSummary {
                sha: format!("{i:02x}{}", &SHA[2..]),
                author: if i % 2 == 0 { "octocat" } else { "kookster" }.into(),
                message: format!("Change number {i}\n\nWith a body that is not shown."),
            })
            .collect(),
        total,
    }
}

/// The snapshot text: colour, fallback, then the section as Slack shows it.
fn shown(message: &SlackMessage) -> String {
    format!(
        "color: {}\ntext: {}\nchars: {}\n---\n{}\n",
        message.color(),
        message.text,
        message.mrkdwn().chars().count(),
        message.mrkdwn()
    )
}

#[test]
fn push_build_in_progress() {
    let mut build = Build::new();
    build
        .requested(push_env())
        .started()
        .phase("INSTALL", "SUCCEEDED", "PRE_BUILD", "")
        .phase("PRE_BUILD", "SUCCEEDED", "BUILD", "");
    let message = render::render(&build.view, Some(&commits(3, 3)), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn push_build_requested_before_it_runs() {
    let mut build = Build::new();
    build.requested(push_env());
    let message = render::render(&build.view, Some(&commits(1, 1)), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn push_build_succeeded_with_ecr_and_s3_lines_and_publishes() {
    let mut build = Build::new();
    build
        .requested(push_env())
        .started()
        .phase("BUILD", "SUCCEEDED", "POST_BUILD", "")
        .completed(
            v1::BuildStatus::Succeeded,
            vars(&[
                (
                    "PRX_SPIRE_ECR_PKG_PARAMETERS",
                    "RAILS_APP=/prx/stag/Spire/MyApp/pkg/docker-image-tag;BROKEN",
                ),
                ("RAILS_APP", &format!("github/prx/my-app:{SHA}-x86_64")),
                (
                    "PRX_SPIRE_S3_PKG_PARAMETERS",
                    "LAMBDA_ZIP=/prx/stag/Spire/MyApp/pkg/s3-object-key",
                ),
                (
                    "LAMBDA_ZIP",
                    &format!("GitHub/PRX/my-app/{SHA}/LAMBDA_ZIP.zip"),
                ),
            ]),
            "",
            "",
        )
        .apply(Payload::PublishApplied(v1::PublishApplied {
            parameter: "/prx/stag/Spire/MyApp/pkg/docker-image-tag".into(),
            value: format!("github/prx/my-app:{SHA}-x86_64"),
            kind: v1::ArtifactKind::EcrImage as i32,
            label: "RAILS_APP".into(),
            build: Some(build_ref()),
            version: 7,
            shadow: false,
        }))
        .apply(Payload::PublishSkipped(v1::PublishSkipped {
            parameter: "/prx/stag/Spire/MyApp/pkg/s3-object-key".into(),
            value: format!("GitHub/PRX/my-app/{SHA}/LAMBDA_ZIP.zip"),
            kind: v1::ArtifactKind::S3Object as i32,
            label: "LAMBDA_ZIP".into(),
            build: Some(build_ref()),
            reason: v1::PublishSkipReason::Superseded as i32,
            superseded_by_commit: NEWER.into(),
            ..Default::default()
        }));
    let message = render::render(&build.view, Some(&commits(2, 2)), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn push_build_failed_in_a_named_phase() {
    let mut build = Build::new();
    build
        .requested(push_env())
        .started()
        .phase("PRE_BUILD", "SUCCEEDED", "BUILD", "")
        .phase(
            "BUILD",
            "FAILED",
            "POST_BUILD",
            "Error while executing command: docker build .\nReason: exit status 2",
        )
        .completed(v1::BuildStatus::Failed, HashMap::new(), "", "");
    let message = render::render(&build.view, Some(&commits(1, 1)), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn pull_request_build() {
    let mut build = Build::new();
    build.requested(pr_env()).started().completed(
        v1::BuildStatus::Succeeded,
        HashMap::new(),
        "",
        "",
    );
    let message = render::render(&build.view, None, &links());
    insta::assert_snapshot!(shown(&message));
    // The whole payload, as the Web API receives it.
    insta::assert_yaml_snapshot!(message);
}

#[test]
fn superseded_build() {
    let mut build = Build::new();
    build
        .requested(pr_env())
        .started()
        .phase("INSTALL", "SUCCEEDED", "BUILD", "")
        .apply(Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(build_ref()),
            superseded_by_sequence: 42,
            superseded_by_commit: NEWER.into(),
            superseded_by_event_id: "webhook-42".into(),
        }));
    let message = render::render(&build.view, None, &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn push_with_more_commits_than_fit() {
    let mut build = Build::new();
    build.requested(push_env()).started();
    let message = render::render(&build.view, Some(&commits(16, 40)), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn push_whose_commit_list_is_unavailable() {
    let mut build = Build::new();
    build.requested(push_env()).started();
    let unavailable = CommitsCache::Unavailable {
        reason: "GitHub answered 502".into(),
    };
    let message = render::render(&build.view, Some(&unavailable), &links());
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn message_over_3000_characters_loses_its_links_first() {
    let mut build = Build::new();
    build.requested(push_env()).started();
    // 16 commits with ~100-character messages: over the limit with links, under without.
    let long = CommitsCache::Loaded {
        commits: (0..16)
            .map(|i| CommitSummary {
                sha: format!("{i:02x}{}", &SHA[2..]),
                author: "octocat".into(),
                message: format!("{i:02} {}", "Refactor the feed renderer. ".repeat(4)),
            })
            .collect(),
        total: 16,
    };
    let message = render::render(&build.view, Some(&long), &links());
    let text = message.mrkdwn();
    assert!(text.chars().count() <= MAX_SECTION_CHARS);
    assert!(!text.contains("https://"), "links were stripped");
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn message_over_3000_characters_without_links_is_truncated() {
    let mut build = Build::new();
    build.requested(push_env()).started();
    let huge = CommitsCache::Loaded {
        commits: (0..16)
            .map(|i| CommitSummary {
                sha: format!("{i:02x}{}", &SHA[2..]),
                author: "octocat".into(),
                message: format!("{i:02} {}", "Ünïcode everywhere. ".repeat(12)),
            })
            .collect(),
        total: 16,
    };
    let message = render::render(&build.view, Some(&huge), &links());
    assert_eq!(message.mrkdwn().chars().count(), MAX_SECTION_CHARS);
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn local_build_renders_with_a_file_log_link() {
    let local = v1::BuildRef {
        build_id: "local:0b5e2d7a".into(),
        build_request_id: "req-9".into(),
        repository: "PRX/my-app".into(),
        commit: SHA.into(),
        architecture: v1::Architecture::Aarch64 as i32,
        backend: "local".into(),
        project: "local".into(),
        region: String::new(),
        log_url: "file:///var/lib/prx-ci/logs/local-0b5e2d7a.log".into(),
        retry_of: String::new(),
        shadowed: false,
    };
    let mut build = Build::new();
    build.apply(Payload::BuildRequested(v1::BuildRequested {
        build: Some(local.clone()),
        environment: push_env(),
        ..Default::default()
    }));
    build.apply(Payload::BuildCompleted(v1::BuildCompleted {
        build: Some(local),
        status: v1::BuildStatus::Succeeded as i32,
        duration_ms: 4_200,
        exported_variables: vars(&[
            (
                "PRX_SPIRE_ECR_PKG_PARAMETERS",
                "APP=/prx/stag/Spire/MyApp/pkg/docker-image-tag",
            ),
            ("APP", &format!("github/prx/my-app:{SHA}-aarch64")),
        ]),
        ..Default::default()
    }));
    let message = render::render(&build.view, None, &LinkConfig::default());
    insta::assert_snapshot!(shown(&message));
    insta::assert_snapshot!("local_build_log_text", message.to_log_text());
}

/// What an attacker would put in every value: a broadcast, a user mention, a plain-text
/// broadcast and a forged link. (Every other form, `<#C1>`, `<!subteam^S1>`, `@everyone`, is
/// in the property test below and in `mrkdwn`'s.)
const HOSTILE: &str = "<!channel> <@U123> @here <https://evil|click>";

/// Where the links of the test builds may go.
const ALLOWED: [&str; 3] = [
    "https://github.com/PRX/my-app/",
    "https://us-east-1.console.aws.amazon.com/",
    "https://d-906713e952.awsapps.com/start/#/console?",
];

/// Console links without the deep-link wrapper: much shorter, so a message whose every value
/// is hostile stays under the limit and keeps its links.
fn direct_links() -> LinkConfig {
    LinkConfig::default()
}

/// Checks the section and the fallback text: no mention, no forged link, no broken escape.
fn assert_inert(message: &SlackMessage, allowed: &[&str]) {
    fakes::assert_inert(message.mrkdwn(), allowed);
    fakes::assert_inert(&message.text, allowed);
    assert!(message.mrkdwn().chars().count() <= MAX_SECTION_CHARS);
}

/// The labels of the message's links.
fn link_labels(message: &SlackMessage) -> Vec<String> {
    fakes::parse_mrkdwn(message.mrkdwn())
        .links
        .into_iter()
        .map(|(_, label)| label)
        .collect()
}

/// Every variable the notifier reads, as a build's export, set to `value`.
fn exported_everywhere(value: &str) -> HashMap<String, String> {
    let image = format!("github/prx/{value}:{SHA}-x86_64");
    let mut exported = vars(&[
        ("PRX_REPO", value),
        ("PRX_COMMIT", value),
        ("PRX_BRANCH", value),
        ("PRX_GITHUB_PR", value),
        ("PRX_GITHUB_PR_TITLE", value),
        ("PRX_GITHUB_PR_AUTHOR", value),
        ("PRX_GITHUB_PR_BASE_BRANCH", value),
        ("PRX_GITHUB_ACTION", value),
        ("PRX_TARGET_ARCHITECTURE", value),
        ("PRX_AWS_ACCOUNT_ID", value),
        ("PRX_APPLICATION_CODE_BUCKET", value),
        ("IMAGE", &image),
        ("ZIP", value),
    ]);
    // Mapping strings whose labels and parameters carry the value too; the value is also a
    // label variable's name.
    exported.insert(
        "PRX_SPIRE_ECR_PKG_PARAMETERS".into(),
        format!("IMAGE=/prx/stag/Spire/{value};{value}=/prx/stag/Spire/x"),
    );
    exported.insert(
        "PRX_SPIRE_S3_PKG_PARAMETERS".into(),
        format!("ZIP=/prx/stag/Spire/{value}"),
    );
    exported.insert(value.into(), value.into());
    exported
}

/// What the publisher reports about parameters and labels named by the build.
fn hostile_publishes(build: &mut Build, value: &str) {
    build
        .apply(Payload::PublishApplied(v1::PublishApplied {
            parameter: value.into(),
            value: value.into(),
            label: value.into(),
            build: Some(build_ref()),
            ..Default::default()
        }))
        .apply(Payload::PublishSkipped(v1::PublishSkipped {
            parameter: format!("/prx/{value}"),
            value: value.into(),
            label: value.into(),
            build: Some(build_ref()),
            reason: v1::PublishSkipReason::LabelVariableMissing as i32,
            ..Default::default()
        }))
        .apply(Payload::PublishSkipped(v1::PublishSkipped {
            parameter: format!("/prx/other/{value}"),
            label: "OTHER".into(),
            build: Some(build_ref()),
            reason: v1::PublishSkipReason::Superseded as i32,
            superseded_by_commit: value.into(),
            ..Default::default()
        }))
        .apply(Payload::PublishSkipped(v1::PublishSkipped {
            parameter: format!("/prx/third/{value}"),
            label: "THIRD".into(),
            build: Some(build_ref()),
            reason: v1::PublishSkipReason::Unspecified as i32,
            detail: value.into(),
            ..Default::default()
        }));
}

#[test]
fn a_pull_request_build_exporting_markup_in_every_field_renders_it_inert() {
    // The pull request's own text (title, branches, author) is attacker-written too: it
    // reaches the request from the webhook.
    let mut request = pr_env();
    for key in [
        "PRX_BRANCH",
        "PRX_GITHUB_PR_TITLE",
        "PRX_GITHUB_PR_BASE_BRANCH",
        "PRX_GITHUB_PR_AUTHOR",
    ] {
        request.insert(key.into(), HOSTILE.into());
    }
    let mut build = Build::new();
    build.requested(request).started().completed(
        v1::BuildStatus::Failed,
        exported_everywhere(HOSTILE),
        HOSTILE,
        HOSTILE,
    );
    hostile_publishes(&mut build, HOSTILE);
    let message = render::render(&build.view, None, &direct_links());
    assert_inert(&message, &ALLOWED);
    // Under the limit: the links were kept. The repository, pull request and commit come from
    // the dispatcher's request (the exported ones are ignored), so their GitHub links are the
    // real ones.
    assert_eq!(
        link_labels(&message),
        ["Failed to build", "#582", "165df6a", "ECR", "ECR", "S3"]
    );
    // The markup is shown as typed, with the broadcast's `@` replaced.
    assert!(
        message
            .mrkdwn()
            .contains("&lt;!channel&gt; &lt;@U123&gt; ＠here &lt;https://evil|click&gt;")
    );
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn a_push_build_with_markup_in_link_targets_commits_and_publishes_renders_it_inert() {
    // The repository stays a real one, so the GitHub and console links are made, with the
    // exported commit, account, image repository, bucket and key inside them.
    let mut exported = exported_everywhere(HOSTILE);
    for key in ["PRX_REPO", "PRX_GITHUB_PR"] {
        exported.remove(key);
    }
    exported.insert(
        "IMAGE".into(),
        format!("github/prx/@here|x>y<!channel>/a&b=c%3E:{SHA}-x86_64"),
    );
    let mut build = Build::new();
    build
        .requested(push_env())
        .started()
        .completed(v1::BuildStatus::Succeeded, exported, "", "");
    hostile_publishes(&mut build, HOSTILE);
    let commits = CommitsCache::Loaded {
        commits: vec![
            CommitSummary {
                sha: HOSTILE.into(),
                author: HOSTILE.into(),
                message: format!("{HOSTILE}\n\nbody <!channel>"),
            },
            CommitSummary {
                sha: format!("../../../evil/{SHA}"),
                author: "@here".into(),
                message: "Fix <https://evil.example|the docs>".into(),
            },
        ],
        total: 2,
    };
    let message = render::render(&build.view, Some(&commits), &direct_links());
    assert_inert(&message, &ALLOWED);
    assert_eq!(
        link_labels(&message),
        [
            // The commit is the request's, not the exported one.
            "Built",
            "165df6a",
            "ECR",
            "ECR",
            "S3",
            "&lt;!chann",
            "../../."
        ]
    );
    insta::assert_snapshot!(shown(&message));
}

#[test]
fn the_injection_checker_sees_mentions_and_forged_links() {
    let parsed = fakes::parse_mrkdwn("a <!here> <@U1> <#C1> @channel <https://evil.example|x> &am");
    assert_eq!(parsed.mentions, ["<!here>", "<@U1>", "<#C1>", "@channel"]);
    assert_eq!(parsed.broken_entities, ["&am"]);
    assert_eq!(
        fakes::forged_links(&parsed, &ALLOWED),
        ["<https://evil.example|x>"]
    );
    let sso = |query: &str| {
        fakes::parse_mrkdwn(&format!(
            "<https://d-906713e952.awsapps.com/start/#/console?{query}|x>"
        ))
    };
    let ok =
        "account_id=1&role_name=R&destination=https%3A%2F%2Fus-east-1.console.aws.amazon.com%2Fecr";
    assert!(fakes::forged_links(&sso(ok), &ALLOWED).is_empty());
    for bad in [
        format!("{ok}&destination=https%3A%2F%2Fevil.example"),
        "account_id=1&role_name=R&destination=https%3A%2F%2Fevil.example".to_owned(),
    ] {
        assert_eq!(fakes::forged_links(&sso(&bad), &ALLOWED).len(), 1, "{bad}");
    }
    let climb = fakes::parse_mrkdwn("<https://github.com/PRX/my-app/../../evil/x|y>");
    assert_eq!(fakes::forged_links(&climb, &ALLOWED).len(), 1);
}

/// Values built from the markup an attacker would try, and anything else.
fn hostile_value() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("<!channel>".to_owned()),
        Just("<@U123>".to_owned()),
        Just("<#C123>".to_owned()),
        Just("<!subteam^S1|ops>".to_owned()),
        Just("<https://evil.example|click>".to_owned()),
        Just("@here".to_owned()),
        Just("@EVERYONE".to_owned()),
        Just("&".to_owned()),
        Just("<".to_owned()),
        Just(">".to_owned()),
        Just("|".to_owned()),
        Just("/".to_owned()),
        Just("..".to_owned()),
        Just(":".to_owned()),
        Just(";".to_owned()),
        Just("=".to_owned()),
        Just("%3E".to_owned()),
        Just("\n".to_owned()),
        Just("x".repeat(400)),
        any::<char>().prop_map(String::from),
        "[a-z0-9]{1,8}",
    ];
    prop::collection::vec(token, 1..10).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the build exports and the publisher reports, the message notifies nobody and
    /// links nowhere but GitHub and the console, over the length limit too.
    #[test]
    fn no_exported_value_can_mention_or_forge_a_link(
        value in hostile_value(),
        repo_is_real in any::<bool>(),
        state in prop::sample::select(vec![
            BuildState::InProgress,
            BuildState::Failed,
            BuildState::Succeeded,
        ]),
        cancelled in any::<bool>(),
    ) {
        let mut variables = exported_everywhere(&value);
        if repo_is_real {
            variables.insert("PRX_REPO".into(), "PRX/my-app".into());
        }
        let view = BuildView {
            build_id: build_ref().build_id,
            backend: "codebuild".into(),
            project: "infrastructure-ci-Runner2".into(),
            region: "us-east-1".into(),
            variables: variables.into_iter().collect(),
            state,
            current_phase: Some(value.clone()),
            failed_phase: Some(value.clone()),
            failure_message: Some(value.clone()),
            cancelled: cancelled.then(|| Cancellation {
                by_commit: value.clone(),
                by_sequence: 2,
            }),
            publishes: vec![PublishView {
                parameter: value.clone(),
                value: value.clone(),
                label: value.clone(),
                skipped: Some("label_variable_missing".into()),
                detail: value.clone(),
                superseded_by_commit: value.clone(),
                check: value.clone(),
            }],
            ..BuildView::default()
        };
        let commits = CommitsCache::Loaded {
            commits: vec![CommitSummary {
                sha: value.clone(),
                author: value.clone(),
                message: value.clone(),
            }],
            total: 1,
        };
        let message = render::render(&view, Some(&commits), &links());
        // An exported repository of `owner/name` shape gets GitHub links (which repository a
        // build may name is the view's business, not the renderer's).
        let github = ["https://github.com/", ALLOWED[1], ALLOWED[2]];
        assert_inert(&message, if repo_is_real { &ALLOWED } else { &github });
    }
}
