//! Per-app rules (`[publisher.apps]`) through the real consumer, SSM and ECR in the emulator:
//! `trusted` apps publish their own values and `strict` ones refuse them, naming the check; an
//! ARM-primary app's pointer ends on its ARM image, from the config or the buildspec's marker.

use std::collections::BTreeMap;
use std::sync::Arc;

use prx_ci_proto::v1::{self, PublishSkipReason};
use prx_ci_publisher::{AppConfig, AwsArtifactChecker, PublisherConfig, ValueChecks};
use prx_ci_shared::Runtime;
use prx_ci_shared::domain::Architecture;

use crate::utils::{BuildSpec, EventLog, SsmPublisher, settle, skips_of, ssm_history, test_config};

const X86: Architecture = Architecture::X86_64;
const ARM: Architecture = Architecture::Aarch64;

fn param(name: &str) -> String {
    format!("/prx/stag/Spire/{name}/pkg/docker-image-tag")
}

async fn deliver(rt: &Runtime, log: &EventLog, builds: &[&BuildSpec]) {
    for build in builds {
        rt.publisher.publish(&build.envelope("a")).await.unwrap();
        settle(rt, log, &[(build.build_id.clone(), 1)]).await;
    }
}

fn apps(entries: &[(&str, Option<ValueChecks>, Option<Architecture>)]) -> PublisherConfig {
    PublisherConfig {
        apps: entries
            .iter()
            .map(|(key, value_checks, primary)| {
                (
                    (*key).to_owned(),
                    AppConfig {
                        value_checks: *value_checks,
                        primary_architecture: *primary,
                    },
                )
            })
            .collect(),
        ..test_config()
    }
}

/// The only skip of `build`.
fn only_skip(log: &EventLog, build: &BuildSpec) -> v1::PublishSkipped {
    let skipped = log.skipped();
    let [skip] = skips_of(&skipped, build)[..] else {
        panic!("{}: {skipped:#?}", build.build_id)
    };
    skip.clone()
}

#[tokio::test]
async fn a_trusted_app_publishes_its_own_value_and_a_strict_app_refuses_it_naming_the_check() {
    const LEGACY: &str = "PRX/legacy-app";
    const CUSTOM: &str = "my-custom-value:v1";
    let config = PublisherConfig {
        owners: BTreeMap::from([("/prx/stag/Spire/Owned/".to_owned(), "PRX/owner".to_owned())]),
        ..apps(&[
            (LEGACY, Some(ValueChecks::Trusted), None),
            ("/prx/stag/Spire/Shared/", Some(ValueChecks::Trusted), None),
        ])
    };
    // The real artifact check against the emulator's ECR, where no image exists.
    let SsmPublisher {
        rt,
        log,
        client,
        guard: _guard,
        ..
    } = SsmPublisher::start_checking(config, |sdk| {
        Arc::new(AwsArtifactChecker::with_path_style(sdk, "prx-code", true))
    })
    .await;

    // The trusted repository writes its own value, unchecked for an artifact.
    let custom = BuildSpec::ecr(501, X86, &[&param("Legacy")])
        .repo(LEGACY)
        .var("APP", CUSTOM);
    // Its value of the helper's shape still gets the artifact check.
    let helper_shaped = BuildSpec::ecr(502, X86, &[&param("LegacyImage")]).repo(LEGACY);
    // What SSM would refuse is refused before the write, naming SSM's rules.
    let too_long = BuildSpec::ecr(503, X86, &[&param("LegacyLong")])
        .repo(LEGACY)
        .var("APP", &"v".repeat(4097));
    // Ownership still applies to a trusted app.
    let not_owner = BuildSpec::ecr(504, X86, &[&param("Owned")])
        .repo(LEGACY)
        .var("APP", CUSTOM);
    // A strict app (the default) refuses the same value.
    let strict = BuildSpec::ecr(505, X86, &[&param("App")]).var("APP", CUSTOM);
    // A trusted parameter prefix beats the repository's (default) strictness.
    let shared = BuildSpec::ecr(506, X86, &[&param("Shared")]).var("APP", CUSTOM);
    // Forks never publish, trusted or not.
    let fork = BuildSpec::ecr(507, X86, &[&param("LegacyFork")])
        .repo(LEGACY)
        .fork(3)
        .var("APP", CUSTOM);
    deliver(
        &rt,
        &log,
        &[
            &custom,
            &helper_shaped,
            &too_long,
            &not_owner,
            &strict,
            &shared,
            &fork,
        ],
    )
    .await;

    assert_eq!(ssm_history(&client, &param("Legacy")).await, vec![CUSTOM]);
    assert_eq!(ssm_history(&client, &param("Shared")).await, vec![CUSTOM]);
    for name in ["LegacyImage", "LegacyLong", "Owned", "App", "LegacyFork"] {
        assert!(
            ssm_history(&client, &param(name)).await.is_empty(),
            "{name} was written"
        );
    }
    let applied: Vec<(String, String)> = log
        .applied()
        .into_iter()
        .map(|a| (a.parameter, a.value))
        .collect();
    assert_eq!(
        applied,
        vec![
            (param("Legacy"), CUSTOM.to_owned()),
            (param("Shared"), CUSTOM.to_owned())
        ]
    );

    let expectations = [
        (
            &helper_shaped,
            PublishSkipReason::ArtifactMissing,
            "artifact check",
            "ECR repository github/prx/legacy-app does not exist",
        ),
        (
            &too_long,
            PublishSkipReason::InvalidValue,
            "SSM value rules",
            "the value is 4097 bytes; a Standard-tier SSM parameter holds at most 4096",
        ),
        (
            &strict,
            PublishSkipReason::InvalidValue,
            "strict value check (ECR image tag)",
            "repository \"my-custom-value\" is not a lower-case github/<owner>/<repo>",
        ),
    ];
    for (build, reason, check, because) in expectations {
        let skip = only_skip(&log, build);
        assert_eq!(skip.reason, reason as i32, "{skip:#?}");
        assert_eq!(skip.check, check, "{skip:#?}");
        assert!(
            skip.detail.starts_with(&format!("{check}: ")) && skip.detail.contains(because),
            "{}",
            skip.detail
        );
    }
    let skip = only_skip(&log, &not_owner);
    assert_eq!(skip.reason, PublishSkipReason::NotOwner as i32);
    assert_eq!(skip.check, "ownership");
    assert!(skip.detail.contains("PRX/owner"), "{}", skip.detail);
    let skip = only_skip(&log, &fork);
    assert_eq!(skip.reason, PublishSkipReason::Fork as i32);
    assert_eq!(skip.check, "trust rules");
}

/// Delivers both builds of one push to `parameter` in `order` and returns the parameter's SSM
/// history.
async fn push_both(
    publisher: &SsmPublisher,
    builds: [&BuildSpec; 2],
    parameter: &str,
) -> Vec<String> {
    deliver(&publisher.rt, &publisher.log, &builds).await;
    ssm_history(&publisher.client, parameter).await
}

#[tokio::test]
async fn an_arm_primary_apps_pointer_ends_on_its_arm_image_in_either_order() {
    const ARM_APP: &str = "PRX/arm-app";
    let publisher = SsmPublisher::start_with(apps(&[(ARM_APP, None, Some(ARM))])).await;
    let push = |seq: u64, arch: Architecture, parameter: &str| {
        BuildSpec::ecr(seq, arch, &[parameter]).repo(ARM_APP)
    };

    // ARM first: written; the x86 build of the same push is not the primary.
    let a = param("ArmFirst");
    let (a_arm, a_x86) = (push(10, ARM, &a), push(10, X86, &a));
    assert_eq!(
        push_both(&publisher, [&a_arm, &a_x86], &a).await,
        vec![a_arm.value()]
    );
    let skip = only_skip(&publisher.log, &a_x86);
    assert_eq!(
        skip.reason,
        PublishSkipReason::NotPrimaryArchitecture as i32
    );
    assert_eq!(skip.check, "order fence");
    assert!(skip.detail.contains("the aarch64 build"), "{}", skip.detail);

    // x86 first: both written, ARM last.
    let b = param("X86First");
    let (b_x86, b_arm) = (push(20, X86, &b), push(20, ARM, &b));
    assert_eq!(
        push_both(&publisher, [&b_x86, &b_arm], &b).await,
        vec![b_x86.value(), b_arm.value()]
    );
    assert_eq!(publisher.log.outcomes_of(&b_arm.build_id), 1);

    // Another repository keeps the global default: x86 wins.
    let c = param("DefaultApp");
    let (c_x86, c_arm) = (
        BuildSpec::ecr(30, X86, &[&c]),
        BuildSpec::ecr(30, ARM, &[&c]),
    );
    assert_eq!(
        push_both(&publisher, [&c_x86, &c_arm], &c).await,
        vec![c_x86.value()]
    );
}

#[tokio::test]
async fn the_buildspec_marker_chooses_the_primary_before_the_config() {
    const ARM_APP: &str = "PRX/arm-app";
    let publisher = SsmPublisher::start_with(apps(&[(ARM_APP, None, Some(ARM))])).await;

    // No config entry: the marker makes ARM primary, in either order.
    let a = param("MarkedArm");
    let marked = |seq: u64, arch: Architecture, parameter: &str| {
        BuildSpec::ecr(seq, arch, &[parameter]).primary_marker(ARM)
    };
    let (a_x86, a_arm) = (marked(40, X86, &a), marked(40, ARM, &a));
    assert_eq!(
        push_both(&publisher, [&a_x86, &a_arm], &a).await,
        vec![a_x86.value(), a_arm.value()]
    );
    let b = param("MarkedArmFirst");
    let (b_arm, b_x86) = (marked(41, ARM, &b), marked(41, X86, &b));
    assert_eq!(
        push_both(&publisher, [&b_arm, &b_x86], &b).await,
        vec![b_arm.value()]
    );
    assert_eq!(
        only_skip(&publisher.log, &b_x86).reason,
        PublishSkipReason::NotPrimaryArchitecture as i32
    );

    // The marker beats the repository's entry: an x86 marker in the ARM-primary app.
    let c = param("MarkedX86");
    let x86_marked = |arch: Architecture| {
        BuildSpec::ecr(42, arch, &[&c])
            .repo(ARM_APP)
            .primary_marker(X86)
    };
    let (c_arm, c_x86) = (x86_marked(ARM), x86_marked(X86));
    assert_eq!(
        push_both(&publisher, [&c_x86, &c_arm], &c).await,
        vec![c_x86.value()]
    );
    let skip = only_skip(&publisher.log, &c_arm);
    assert_eq!(
        skip.reason,
        PublishSkipReason::NotPrimaryArchitecture as i32
    );
    assert!(skip.detail.contains("the x86_64 build"), "{}", skip.detail);
}
