//! SSM faults at the HTTP level: the publisher's real SSM adapter (aws-sdk-ssm) talks to the
//! emulator through a fault proxy that throttles, answers 5xx, or lets a `PutParameter` land
//! and loses its answer. Writes are retried without rewriting: one publish, one new version,
//! and a parameter's history never moves back.

use std::sync::Arc;
use std::time::Duration;

use prx_ci_proto::v1::PublishSkipReason;
use prx_ci_publisher::{NoArtifactCheck, PublisherConfig, SsmParameterStore};
use prx_ci_shared::Runtime;
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fault_proxy::{Fault, FaultKind, FaultProxy, FaultRule, Match};
use prx_ci_shared::testing::{MotoServer, NatsServer};

use crate::utils::{
    BuildSpec, EventLog, Replica, runtime, settle, skips_of, ssm_history, test_config, warm_up,
};

const PUT: &str = "AmazonSSM.PutParameter";
const GET: &str = "AmazonSSM.GetParameter";
const X86: prx_ci_shared::domain::Architecture = prx_ci_shared::domain::Architecture::X86_64;

/// One publisher replica whose SSM adapter goes through a fault proxy in front of the emulator.
struct ProxiedSsm {
    rt: Runtime,
    log: EventLog,
    proxy: FaultProxy,
    /// Straight to the emulator (for `GetParameterHistory`), never through the proxy.
    direct: aws_sdk_ssm::Client,
    replica: Replica,
    _servers: (NatsServer, MotoServer),
}

impl ProxiedSsm {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let moto = MotoServer::start().await;
        let proxy = FaultProxy::start(&moto.endpoint()).await;
        let rt = runtime(&nats).await;
        let log = EventLog::start(&rt).await;
        let direct = aws_sdk_ssm::Client::new(&moto.sdk_config());
        warm_up(&direct).await;
        let through_proxy = moto
            .sdk_config()
            .into_builder()
            .endpoint_url(proxy.url())
            .build();
        // Short backoff, and a write timeout that leaves room for a few retries of it.
        let ssm = SsmParameterStore::new(&through_proxy).with_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_attempts: 5,
        });
        let config = PublisherConfig {
            write_timeout: Duration::from_secs(3),
            claim_lease: Duration::from_secs(8),
            ..test_config()
        };
        let replica = Replica::start(&nats, config, Arc::new(ssm), Arc::new(NoArtifactCheck)).await;
        Self {
            rt,
            log,
            proxy,
            direct,
            replica,
            _servers: (nats, moto),
        }
    }

    /// Publishes the completion of `build` and waits until the publisher reported on it.
    async fn deliver(&self, build: &BuildSpec) {
        self.rt
            .publisher
            .publish(&build.envelope("a"))
            .await
            .unwrap();
        settle(&self.rt, &self.log, &[(build.build_id.clone(), 1)]).await;
    }

    /// `PutParameter` calls carrying `value`: (attempts seen by the proxy, attempts that
    /// reached the emulator).
    fn puts_of(&self, value: &str) -> (usize, usize) {
        let puts: Vec<_> = self
            .proxy
            .requests()
            .into_iter()
            .filter(|r| r.matches(&Match::aws(PUT)))
            .filter(|r| String::from_utf8_lossy(&r.body).contains(value))
            .collect();
        let landed = puts.iter().filter(|r| r.outcome.reached_upstream()).count();
        (puts.len(), landed)
    }

    /// Fence claims resolved after their lease ran out: a write whose outcome the adapter
    /// left unknown, settled only by waiting out the lease.
    fn takeovers(&self) -> f64 {
        self.replica
            .metric("prx_ci_publisher_fence_takeovers_total")
    }

    /// The `PublishApplied` versions reported for `build`.
    fn applied_versions(&self, build: &BuildSpec) -> Vec<i64> {
        self.log
            .applied()
            .into_iter()
            .filter(|a| {
                a.build
                    .as_ref()
                    .is_some_and(|b| b.build_id == build.build_id)
            })
            .map(|a| a.version)
            .collect()
    }
}

#[tokio::test]
async fn throttled_and_5xx_put_parameter_is_retried_and_lands_once() {
    let ssm = ProxiedSsm::start().await;
    let parameter = "/prx/stag/Spire/Throttled/pkg/docker-image-tag";
    // The first two attempts are throttled (400 ThrottlingException), the third answered 503
    // without reaching SSM; the fourth goes through.
    ssm.proxy
        .add(FaultRule::new(Match::aws(PUT), Fault::ssm_throttling()).times(2));
    ssm.proxy
        .add(FaultRule::new(Match::aws(PUT), Fault::server_error(503)).times(1));

    let build = BuildSpec::ecr(10, X86, &[parameter]);
    ssm.deliver(&build).await;

    assert_eq!(
        ssm.puts_of(&build.value()),
        (4, 1),
        "four attempts, one of which reached SSM: {:#?}",
        ssm.proxy.requests()
    );
    assert_eq!(
        ssm.proxy.injected(),
        [(FaultKind::Throttling, 2), (FaultKind::ServerError(503), 1)].into()
    );
    assert_eq!(
        ssm_history(&ssm.direct, parameter).await,
        vec![build.value()],
        "exactly one version"
    );
    assert_eq!(ssm.applied_versions(&build), vec![1]);
    assert!(ssm.log.skipped().is_empty(), "{:#?}", ssm.log.skipped());
    assert_eq!(
        ssm.takeovers(),
        0.0,
        "retried within the write, not after the lease"
    );
    assert_eq!(
        ssm.replica.metric("prx_ci_publisher_store_errors_total"),
        0.0,
        "the adapter's own retries are not store errors"
    );
}

#[tokio::test]
async fn a_put_parameter_throttled_past_the_adapters_retries_is_counted_and_retried_with_its_message()
 {
    let ssm = ProxiedSsm::start().await;
    let parameter = "/prx/stag/Spire/ThrottledLong/pkg/docker-image-tag";
    // More throttled attempts than the adapter makes (5): the write fails, the message is
    // redelivered, and the next delivery's write lands.
    ssm.proxy
        .add(FaultRule::new(Match::aws(PUT), Fault::ssm_throttling()).times(6));

    let build = BuildSpec::ecr(10, X86, &[parameter]);
    ssm.deliver(&build).await;

    assert_eq!(
        ssm.puts_of(&build.value()),
        (7, 1),
        "six throttled attempts, then one that landed: {:#?}",
        ssm.proxy.requests()
    );
    assert_eq!(
        ssm_history(&ssm.direct, parameter).await,
        vec![build.value()]
    );
    assert_eq!(ssm.applied_versions(&build), vec![1]);
    assert_eq!(
        ssm.replica
            .metric(r#"prx_ci_publisher_store_errors_total{error="refused"}"#),
        1.0,
        "the write that gave up is counted (alert PrxCiParameterStoreErrors)"
    );
    assert_eq!(
        ssm.replica.metric("prx_ci_publisher_store_errors_total"),
        1.0
    );
}

#[tokio::test]
async fn a_lost_put_parameter_answer_is_not_written_again_and_never_moves_back() {
    let ssm = ProxiedSsm::start().await;
    let parameter = "/prx/stag/Spire/LostAnswer/pkg/docker-image-tag";
    let push = |n| BuildSpec::ecr(n, X86, &[parameter]);
    let (b10, b11, b12, b13) = (push(10), push(11), push(12), push(13));

    ssm.deliver(&b10).await;
    assert_eq!(ssm_history(&ssm.direct, parameter).await, vec![b10.value()]);

    // Push 12's write lands; its answer is lost (a bare 500 without an AWS error type).
    ssm.proxy
        .add(FaultRule::new(Match::aws(PUT), Fault::lost_answer()).times(1));
    ssm.deliver(&b12).await;
    assert_eq!(
        ssm.puts_of(&b12.value()),
        (1, 1),
        "written once, never again: {:#?}",
        ssm.proxy.requests()
    );
    assert_eq!(
        ssm_history(&ssm.direct, parameter).await,
        vec![b10.value(), b12.value()],
        "one new version for one publish"
    );
    assert_eq!(ssm.applied_versions(&b12), vec![2]);
    assert!(
        ssm.proxy.count(&Match::aws(GET)) >= 1,
        "the adapter looked before writing again"
    );

    // Push 11 arrives late: the lost answer still set the floor, so it is superseded.
    ssm.deliver(&b11).await;
    let skipped = ssm.log.skipped();
    let [skip] = skips_of(&skipped, &b11)[..] else {
        panic!("{skipped:#?}")
    };
    assert_eq!(skip.reason, PublishSkipReason::Superseded as i32);
    assert_eq!(skip.superseded_by_sequence, 12);
    assert_eq!(ssm.puts_of(&b11.value()), (0, 0));

    // The same with the answer SSM itself gives on a 500 (`InternalServerError`, which reads
    // as retryable): still one write.
    ssm.proxy.add(
        FaultRule::new(
            Match::aws(PUT),
            Fault::LoseAnswer {
                status: 500,
                body: r#"{"__type":"InternalServerError","message":"Internal error"}"#.into(),
            },
        )
        .times(1),
    );
    ssm.deliver(&b13).await;
    assert_eq!(
        ssm.puts_of(&b13.value()),
        (1, 1),
        "{:#?}",
        ssm.proxy.requests()
    );
    assert_eq!(
        ssm_history(&ssm.direct, parameter).await,
        vec![b10.value(), b12.value(), b13.value()]
    );
    assert_eq!(ssm.applied_versions(&b13), vec![3]);
    assert_eq!(ssm.proxy.injected(), [(FaultKind::LostAnswer, 2)].into());
}
