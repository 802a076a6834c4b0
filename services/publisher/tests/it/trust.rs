//! The event log is the authority: what the dispatcher requested decides what a build may
//! publish, never what the build exported (SSM in the emulator, the real consumer).

use prx_ci_proto::v1::PublishSkipReason;
use prx_ci_shared::domain::Architecture;

use crate::utils::{BuildSpec, EventLog, SsmPublisher, settle, sha, skips_of, ssm_history};

const X86: Architecture = Architecture::X86_64;

fn param(name: &str) -> String {
    format!("/prx/stag/Spire/{name}/pkg/docker-image-tag")
}

fn reasons_of(log: &EventLog, build: &BuildSpec) -> Vec<(PublishSkipReason, String)> {
    skips_of(&log.skipped(), build)
        .into_iter()
        .cloned()
        .map(|s| {
            (
                PublishSkipReason::try_from(s.reason).unwrap(),
                if s.parameter.is_empty() {
                    s.detail
                } else {
                    s.parameter
                },
            )
        })
        .collect()
}

#[tokio::test]
async fn exported_variables_cannot_turn_publishing_on_or_redirect_it() {
    let SsmPublisher {
        rt,
        log,
        client,
        guard: _guard,
        ..
    } = SsmPublisher::start().await;

    // A same-repository pull request without the opt-in exports PRX_CI_PUBLISH=true.
    let pr = BuildSpec::ecr(301, X86, &[&param("PrOverride")])
        .pull_request(7, false)
        .var("PRX_CI_PUBLISH", "true");
    // A build of PRX/app claims to be another repository's commit, with that one's value.
    let other_sha = sha(9_999);
    let other_value = format!("github/evil/other:{other_sha}-x86_64");
    let redirect = BuildSpec::ecr(302, X86, &[&param("Redirect")])
        .var("PRX_REPO", "Evil/other")
        .var("PRX_COMMIT", &other_sha)
        .var("APP", &other_value);
    // A fork's pull request, whatever it exports.
    let fork = BuildSpec::ecr(303, X86, &[&param("Fork")])
        .fork(8)
        .var("PRX_CI_PUBLISH", "true");
    // Started in the console: its own variables say "publish", nothing vouches for it.
    let console = BuildSpec::ecr(304, X86, &[&param("Console")]).unrequested();
    // An opted-in same-repository pull request still publishes, as in the original.
    let opted_in = BuildSpec::ecr(305, X86, &[&param("OptedIn")]).pull_request(9, true);
    for build in [&pr, &redirect, &fork, &console, &opted_in] {
        rt.publisher.publish(&build.envelope("a")).await.unwrap();
    }
    settle(
        &rt,
        &log,
        &[
            (pr.build_id.clone(), 1),
            (redirect.build_id.clone(), 3),
            (fork.build_id.clone(), 2),
            (console.build_id.clone(), 1),
            (opted_in.build_id.clone(), 1),
        ],
    )
    .await;

    for name in ["PrOverride", "Redirect", "Fork", "Console"] {
        assert!(
            ssm_history(&client, &param(name)).await.is_empty(),
            "{name} was written"
        );
    }
    assert_eq!(
        ssm_history(&client, &param("OptedIn")).await,
        vec![opted_in.value()]
    );
    let applied = log.applied();
    assert!(
        applied.iter().all(|a| a.value != other_value),
        "{applied:#?}"
    );
    assert_eq!(applied.len(), 1, "{applied:#?}");

    let pr_skips = reasons_of(&log, &pr);
    let [(reason, detail)] = &pr_skips[..] else {
        panic!("{pr_skips:#?}")
    };
    assert_eq!(*reason, PublishSkipReason::UntrustedOverride);
    assert!(detail.contains("PRX_CI_PUBLISH"), "{detail}");

    let redirect_skips = reasons_of(&log, &redirect);
    let overridden: Vec<&str> = redirect_skips
        .iter()
        .filter(|(r, _)| *r == PublishSkipReason::UntrustedOverride)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(overridden.len(), 2, "{redirect_skips:#?}");
    assert!(overridden[0].contains("PRX_COMMIT"), "{overridden:?}");
    assert!(overridden[1].contains("PRX_REPO"), "{overridden:?}");
    // The value is checked against the dispatcher's repository and commit, and refused.
    assert!(
        redirect_skips.contains(&(PublishSkipReason::InvalidValue, param("Redirect"))),
        "{redirect_skips:#?}"
    );

    let fork_skips = reasons_of(&log, &fork);
    assert!(
        fork_skips
            .iter()
            .any(|(r, d)| *r == PublishSkipReason::Fork && d.contains("#8")),
        "{fork_skips:#?}"
    );
    assert!(
        fork_skips.iter().any(
            |(r, d)| *r == PublishSkipReason::UntrustedOverride && d.contains("PRX_CI_PUBLISH")
        ),
        "{fork_skips:#?}"
    );

    assert_eq!(
        reasons_of(&log, &console),
        vec![(PublishSkipReason::Unordered, param("Console"))]
    );
    // Every skip event names the dispatcher's commit, never the one the build claimed.
    for skip in log.skipped() {
        let build = skip.build.unwrap();
        assert_ne!(build.commit, other_sha);
        assert_eq!(build.repository, "PRX/app");
    }
}
