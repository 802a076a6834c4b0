//! Shadow mode: every check and the fence run as live against the publisher's own would-be
//! values (KV `prx_ci_shadow_parameters`); SSM is never written. A live publisher (the
//! repositories cut over, docs/migrating.md) treats a shadow request's build the same way, and
//! only the cut-over repositories' builds write parameters.

use std::time::Duration;

use prx_ci_proto::v1::PublishSkipReason;
use prx_ci_publisher::KvParameterStore;
use prx_ci_publisher::fence_store::{FENCE_BUCKET, FenceSettings, KvFence, SHADOW_FENCE_BUCKET};
use prx_ci_publisher::metrics::FenceMetrics;
use prx_ci_publisher::parameter_store::{ParameterStore as _, SHADOW_PARAMETERS_BUCKET};
use prx_ci_shared::config::Mode;
use prx_ci_shared::domain::Architecture;

use crate::utils::{BuildSpec, SsmPublisher, settle, skips_of, ssm_history, test_config};

const PARAMETER: &str = "/prx/stag/Spire/Shadowed/pkg/docker-image-tag";
const X86: Architecture = Architecture::X86_64;

#[tokio::test]
async fn shadow_mode_fences_its_own_would_be_values_and_never_writes_ssm() {
    let SsmPublisher {
        rt,
        log,
        client,
        guard: _guard,
        ..
    } = SsmPublisher::start_with(prx_ci_publisher::PublisherConfig {
        mode: Mode::Shadow,
        ..test_config()
    })
    .await;
    let (a, b, c) = (
        BuildSpec::ecr(1, X86, &[PARAMETER]).shadowed(),
        BuildSpec::ecr(2, X86, &[PARAMETER]).shadowed(),
        BuildSpec::ecr(3, X86, &[PARAMETER]).shadowed(),
    );
    // The original's builds finish B, C, then A: the original's updater would end on A.
    for build in [&b, &c, &a] {
        rt.publisher.publish(&build.envelope("a")).await.unwrap();
        settle(&rt, &log, &[(build.build_id.clone(), 1)]).await;
    }
    let applied = log.applied();
    assert_eq!(
        applied.iter().map(|p| p.value.clone()).collect::<Vec<_>>(),
        [b.value(), c.value()]
    );
    assert!(applied.iter().all(|p| p.shadow), "{applied:#?}");
    let skipped = log.skipped();
    let [skip] = skips_of(&skipped, &a)[..] else {
        panic!("{skipped:#?}")
    };
    assert_eq!(skip.reason, PublishSkipReason::Superseded as i32);

    let shadow = KvParameterStore::open(&rt.js, SHADOW_PARAMETERS_BUCKET)
        .await
        .unwrap();
    let stored = shadow.get(PARAMETER).await.unwrap().unwrap();
    assert_eq!(stored.value, c.value());
    assert_eq!(
        stored.version, applied[1].version,
        "the shadow bucket's revision"
    );
    assert!(ssm_history(&client, PARAMETER).await.is_empty());
    let live = KvParameterStore::new(&rt.js).await.unwrap();
    assert_eq!(live.get(PARAMETER).await.unwrap(), None);
}

#[tokio::test]
async fn a_live_publisher_keeps_a_shadow_build_in_the_shadow_bucket() {
    let SsmPublisher {
        rt,
        log,
        client,
        guard: _guard,
        ..
    } = SsmPublisher::start().await;
    let live_parameter = "/prx/stag/Spire/Live/pkg/docker-image-tag";
    let shadowed = BuildSpec::ecr(1, X86, &[PARAMETER]).shadowed();
    let live = BuildSpec::ecr(2, X86, &[live_parameter]);
    rt.publisher.publish(&shadowed.envelope("a")).await.unwrap();
    rt.publisher.publish(&live.envelope("a")).await.unwrap();
    settle(
        &rt,
        &log,
        &[(shadowed.build_id.clone(), 1), (live.build_id.clone(), 1)],
    )
    .await;
    let applied = log.applied();
    let shadow_of = |parameter: &str| {
        applied
            .iter()
            .find(|p| p.parameter == parameter)
            .map(|p| p.shadow)
    };
    assert_eq!(shadow_of(PARAMETER), Some(true), "{applied:#?}");
    assert_eq!(shadow_of(live_parameter), Some(false), "{applied:#?}");
    // The shadow build's value is in the shadow bucket only; the live one's in SSM.
    assert!(ssm_history(&client, PARAMETER).await.is_empty());
    assert_eq!(ssm_history(&client, live_parameter).await, [live.value()]);
    let shadow = KvParameterStore::open(&rt.js, SHADOW_PARAMETERS_BUCKET)
        .await
        .unwrap();
    assert_eq!(
        shadow.get(PARAMETER).await.unwrap().unwrap().value,
        shadowed.value()
    );
    assert_eq!(shadow.get(live_parameter).await.unwrap(), None);
    // The shadow build's fence is apart: the live fence knows only the live write, so a
    // repository cut over later starts from what was really written.
    let fence = |bucket| {
        let js = rt.js.clone();
        async move {
            let settings = FenceSettings {
                lease: Duration::from_secs(60),
                write_timeout: Duration::from_secs(10),
                poll_interval: Duration::from_millis(20),
            };
            KvFence::open_bucket(&js, bucket, settings, FenceMetrics::new())
                .await
                .unwrap()
        }
    };
    let (live_fence, shadow_fence) = (fence(FENCE_BUCKET).await, fence(SHADOW_FENCE_BUCKET).await);
    assert_eq!(live_fence.read(PARAMETER).await.unwrap().1, 0);
    assert_ne!(live_fence.read(live_parameter).await.unwrap().1, 0);
    assert_ne!(shadow_fence.read(PARAMETER).await.unwrap().1, 0);
    assert_eq!(shadow_fence.read(live_parameter).await.unwrap().1, 0);
}
