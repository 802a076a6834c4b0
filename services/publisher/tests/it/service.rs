//! The service end to end: multi-arch resolution, artifact checks in the emulator, partial
//! failures, gates and skip reasons, and the `prx-ci params` report.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prx_ci_proto::v1::{self, PublishSkipReason};
use prx_ci_publisher::{
    AwsArtifactChecker, KvParameterStore, NoArtifactCheck, SsmParameterStore, parameter_views,
};
use prx_ci_shared::domain::Architecture;
use prx_ci_shared::testing::{MotoServer, NatsServer, wait_until};

use crate::utils::{
    BuildSpec, EventLog, Fault, FaultyStore, Replica, SsmPublisher, SsmReplicas, WAIT, runtime,
    settle, sha, skips_of, ssm_history, test_config, warm_up,
};

const X86: Architecture = Architecture::X86_64;
const ARM: Architecture = Architecture::Aarch64;

async fn deliver(rt: &prx_ci_shared::Runtime, log: &EventLog, builds: &[&BuildSpec]) {
    for build in builds {
        rt.publisher.publish(&build.envelope("a")).await.unwrap();
        settle(rt, log, &[(build.build_id.clone(), 1)]).await;
    }
}

#[tokio::test]
async fn multi_arch_pushes_end_on_the_primary_value_in_either_order() {
    let SsmPublisher {
        rt,
        log,
        client,
        ssm,
        guard: _guard,
        ..
    } = SsmPublisher::start().await;

    // ARM first, then x86: both written, x86 last.
    let a = "/prx/stag/Spire/ArmFirst/pkg/docker-image-tag";
    let (a_arm, a_x86) = (BuildSpec::ecr(10, ARM, &[a]), BuildSpec::ecr(10, X86, &[a]));
    deliver(&rt, &log, &[&a_arm, &a_x86]).await;
    assert_eq!(
        ssm_history(&client, a).await,
        vec![a_arm.value(), a_x86.value()]
    );

    // x86 first, then ARM: ARM is skipped, one write.
    let b = "/prx/stag/Spire/X86First/pkg/docker-image-tag";
    let (b_x86, b_arm) = (BuildSpec::ecr(20, X86, &[b]), BuildSpec::ecr(20, ARM, &[b]));
    deliver(&rt, &log, &[&b_x86, &b_arm]).await;
    assert_eq!(ssm_history(&client, b).await, vec![b_x86.value()]);
    let skipped = log.skipped();
    let [skip] = skips_of(&skipped, &b_arm)[..] else {
        panic!("{skipped:#?}")
    };
    assert_eq!(
        skip.reason,
        PublishSkipReason::NotPrimaryArchitecture as i32
    );
    assert_eq!(skip.parameter, b);

    // The primary failed: the other architecture's value stands.
    let c = "/prx/stag/Spire/PrimaryFailed/pkg/docker-image-tag";
    let c_arm = BuildSpec::ecr(30, ARM, &[c]);
    let c_x86 = BuildSpec::ecr(30, X86, &[c]).with_status(v1::BuildStatus::Failed);
    rt.publisher.publish(&c_x86.envelope("a")).await.unwrap();
    deliver(&rt, &log, &[&c_arm]).await;
    assert_eq!(ssm_history(&client, c).await, vec![c_arm.value()]);
    assert_eq!(
        log.outcomes_of(&c_x86.build_id),
        0,
        "failed builds publish nothing"
    );

    // An older push's primary arriving after a newer push's secondary is superseded.
    let d_new = BuildSpec::ecr(41, ARM, &[a]);
    let d_old = BuildSpec::ecr(40, X86, &[a]);
    deliver(&rt, &log, &[&d_new, &d_old]).await;
    let skipped = log.skipped();
    let [skip] = skips_of(&skipped, &d_old)[..] else {
        panic!("{skipped:#?}")
    };
    assert_eq!(skip.reason, PublishSkipReason::Superseded as i32);
    assert_eq!(skip.superseded_by_sequence, 41);
    assert_eq!(skip.superseded_by_commit, sha(41));
    assert_eq!(
        ssm_history(&client, a).await,
        vec![a_arm.value(), a_x86.value(), d_new.value()]
    );

    // What `prx-ci params` shows, against SSM.
    let report = parameter_views(&rt.js, ssm.as_ref(), "/prx/stag/Spire/")
        .await
        .unwrap();
    let names: Vec<&str> = report.iter().map(|r| r.parameter.as_str()).collect();
    assert_eq!(names, vec![a, c, b]);
    let ra = &report[0];
    assert_eq!(ra.value.as_deref(), Some(d_new.value().as_str()));
    assert_eq!(ra.push_sequence, Some(41));
    assert_eq!(ra.commit.as_deref(), Some(sha(41).as_str()));
    assert_eq!(ra.architecture.as_deref(), Some("aarch64"));
    assert_eq!(ra.version, Some(3));
    assert_eq!(ra.ordering_key.as_deref(), Some("PRX/app@main"));
    let last = ra.last_skip.as_ref().unwrap();
    assert_eq!(last.reason, "SUPERSEDED");
    assert_eq!(last.push_sequence, 40);
    assert_eq!(last.superseded_by_sequence, 41);
    let rb = &report[2];
    assert_eq!(
        rb.last_skip.as_ref().unwrap().reason,
        "NOT_PRIMARY_ARCHITECTURE"
    );
    println!("{}", ra.one_line());
}

#[tokio::test]
async fn missing_artifacts_are_skipped_and_never_written() {
    let nats = NatsServer::start().await;
    let moto = MotoServer::start().await;
    let sdk = moto.sdk_config();
    let rt = runtime(&nats).await;
    let log = EventLog::start(&rt).await;
    let ssm = Arc::new(SsmParameterStore::new(&sdk));
    let client = ssm.client().clone();
    warm_up(&client).await;

    // The registry has github/prx/app with one image (push 201); the bucket one object (203).
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    ecr.create_repository()
        .repository_name("github/prx/app")
        .send()
        .await
        .unwrap();
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#;
    ecr.put_image()
        .repository_name("github/prx/app")
        .image_manifest(manifest)
        .image_tag(format!("{}-x86_64", sha(201)))
        .send()
        .await
        .unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("prx-code").send().await.unwrap();
    let zip_key = |seq: u64| format!("GitHub/PRX/app/{}/ZIP.zip", sha(seq));
    s3.put_object()
        .bucket("prx-code")
        .key(zip_key(203))
        .body(b"zip".to_vec().into())
        .send()
        .await
        .unwrap();
    let checker = AwsArtifactChecker::with_path_style(&sdk, "prx-code", true);
    let _replica = Replica::start(&nats, test_config(), ssm.clone(), Arc::new(checker)).await;

    let p = |n: &str| format!("/prx/stag/Spire/{n}/pkg/docker-image-tag");
    let present = BuildSpec::ecr(201, X86, &[&p("Present")]);
    let no_tag = BuildSpec::ecr(202, X86, &[&p("NoTag")]);
    let gone_value = format!("github/prx/gone:{}-x86_64", sha(205));
    let no_repo = BuildSpec::ecr(205, X86, &[&p("NoRepo")])
        .repo("PRX/gone")
        .var("APP", &gone_value);
    let s3_param = |n: &str| format!("/prx/stag/Spire/{n}/pkg/s3-object-key");
    let zip = |seq: u64, name: &str| {
        BuildSpec::ecr(seq, X86, &[])
            .without("PRX_SPIRE_ECR_PKG_PARAMETERS")
            .var(
                "PRX_SPIRE_S3_PKG_PARAMETERS",
                &format!("ZIP={}", s3_param(name)),
            )
            .var("ZIP", &zip_key(seq))
    };
    let zip_present = zip(203, "ZipPresent");
    let zip_missing = zip(204, "ZipMissing");
    deliver(
        &rt,
        &log,
        &[&present, &no_tag, &no_repo, &zip_present, &zip_missing],
    )
    .await;

    assert_eq!(
        ssm_history(&client, &p("Present")).await,
        vec![present.value()]
    );
    assert_eq!(
        ssm_history(&client, &s3_param("ZipPresent")).await,
        vec![zip_key(203)]
    );
    for name in [p("NoTag"), p("NoRepo"), s3_param("ZipMissing")] {
        assert!(
            ssm_history(&client, &name).await.is_empty(),
            "{name} was written"
        );
    }
    let skipped = log.skipped();
    for (build, needle) in [
        (&no_tag, "has no image tagged"),
        (&no_repo, "does not exist"),
        (&zip_missing, "does not exist"),
    ] {
        let [skip] = skips_of(&skipped, build)[..] else {
            panic!("{skipped:#?}")
        };
        assert_eq!(skip.reason, PublishSkipReason::ArtifactMissing as i32);
        assert!(skip.detail.contains(needle), "{}", skip.detail);
    }
    assert_eq!(log.applied().len(), 2);
}

#[tokio::test]
async fn a_partial_failure_is_retried_without_rewriting_what_was_written() {
    let nats = NatsServer::start().await;
    let moto = MotoServer::start().await;
    let rt = runtime(&nats).await;
    let log = EventLog::start(&rt).await;
    let ssm = SsmParameterStore::new(&moto.sdk_config());
    let client = ssm.client().clone();
    warm_up(&client).await;
    let store = Arc::new(FaultyStore::new(Arc::new(ssm)));
    let _replica = Replica::start(
        &nats,
        test_config(),
        store.clone(),
        Arc::new(NoArtifactCheck),
    )
    .await;

    let first = "/prx/stag/Spire/Api/pkg/docker-image-tag";
    let second = "/prx/stag/Spire/Worker/pkg/docker-image-tag";
    let build = BuildSpec::ecr(50, X86, &[first, second]);
    store.inject(second, &build.value(), Fault::Refused);
    rt.publisher.publish(&build.envelope("a")).await.unwrap();
    settle(&rt, &log, &[(build.build_id.clone(), 2)]).await;

    assert_eq!(store.faults_left(), 0, "the fault fired");
    assert_eq!(ssm_history(&client, first).await, vec![build.value()]);
    assert_eq!(ssm_history(&client, second).await, vec![build.value()]);
    let applied = log.applied();
    assert_eq!(
        applied.len(),
        2,
        "one PublishApplied per parameter: {applied:#?}"
    );
    assert!(applied.iter().all(|a| a.version == 1));
    assert!(log.skipped().is_empty());

    // A later duplicate report of the same build writes nothing and reports nothing new.
    rt.publisher.publish(&build.envelope("dup")).await.unwrap();
    settle(&rt, &log, &[(build.build_id.clone(), 2)]).await;
    assert_eq!(ssm_history(&client, first).await.len(), 1);
    assert_eq!(ssm_history(&client, second).await.len(), 1);
    assert_eq!(log.applied().len(), 2);
}

#[tokio::test]
async fn local_mode_gates_skips_with_reasons_and_reports() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await;
    let log = EventLog::start(&rt).await;
    let store = Arc::new(KvParameterStore::new(&rt.js).await.unwrap());
    let _replica = Replica::start(
        &nats,
        test_config(),
        store.clone(),
        Arc::new(NoArtifactCheck),
    )
    .await;
    let l = "/prx/stag/Spire/Local/pkg/docker-image-tag";

    let failed = BuildSpec::ecr(60, X86, &[l]).with_status(v1::BuildStatus::Failed);
    let disabled = BuildSpec::ecr(61, X86, &[l]).var("PRX_CI_PUBLISH", "false");
    let prerelease = BuildSpec::ecr(62, X86, &[l])
        .without("PRX_CI_PUBLISH")
        .var("PRX_CI_PRERELEASE", "true");
    let messy = BuildSpec::ecr(63, X86, &[]).var(
        "PRX_SPIRE_ECR_PKG_PARAMETERS",
        &format!("BROKEN;APP={l}, /prx/stag/Spire/Other/pkg/docker-image-tag"),
    );
    let unordered = BuildSpec::ecr(0, X86, &[l]);
    let older = BuildSpec::ecr(58, X86, &[l]);
    rt.publisher.publish(&failed.envelope("a")).await.unwrap();
    deliver(
        &rt,
        &log,
        &[&disabled, &prerelease, &messy, &unordered, &older],
    )
    .await;

    assert_eq!(log.outcomes_of(&failed.build_id), 0);
    let skipped = log.skipped();
    let reasons = |b: &BuildSpec| -> Vec<(i32, String, String)> {
        skips_of(&skipped, b)
            .into_iter()
            .map(|s| (s.reason, s.parameter.clone(), s.mapping.clone()))
            .collect()
    };
    assert_eq!(
        reasons(&disabled),
        vec![(
            PublishSkipReason::PublishingDisabled as i32,
            String::new(),
            String::new()
        )]
    );
    assert_eq!(
        reasons(&prerelease),
        vec![(
            PublishSkipReason::Prerelease as i32,
            String::new(),
            String::new()
        )]
    );
    let messy_mapping = format!("APP={l}, /prx/stag/Spire/Other/pkg/docker-image-tag");
    assert_eq!(
        reasons(&messy),
        vec![
            (
                PublishSkipReason::InvalidMapping as i32,
                String::new(),
                "BROKEN".to_owned()
            ),
            (
                PublishSkipReason::InvalidParameterName as i32,
                " /prx/stag/Spire/Other/pkg/docker-image-tag".to_owned(),
                messy_mapping
            ),
        ]
    );
    assert_eq!(
        reasons(&unordered),
        vec![(
            PublishSkipReason::Unordered as i32,
            l.to_owned(),
            format!("APP={l}")
        )]
    );
    // Push 63 wrote; the older push 58 arrived later and was superseded.
    let [skip] = skips_of(&skipped, &older)[..] else {
        panic!()
    };
    assert_eq!(skip.reason, PublishSkipReason::Superseded as i32);
    assert_eq!(skip.superseded_by_sequence, 63);
    // Sequences below 2^32 read as stream sequences (`#63`); see PushPosition.
    assert!(skip.detail.contains("push #63"), "{}", skip.detail);

    let applied = log.applied();
    let [write] = &applied[..] else {
        panic!("{applied:#?}")
    };
    assert_eq!(write.parameter, l);
    assert_eq!(write.value, messy.value());
    let report = parameter_views(&rt.js, store.as_ref(), "/prx/stag/Spire/")
        .await
        .unwrap();
    let local = report.iter().find(|r| r.parameter == l).unwrap();
    assert_eq!(local.value.as_deref(), Some(messy.value().as_str()));
    assert_eq!(local.version, Some(write.version));
    assert_eq!(local.push_sequence, Some(63));
    assert_eq!(local.commit.as_deref(), Some(sha(63).as_str()));
    assert_eq!(local.last_skip.as_ref().unwrap().reason, "SUPERSEDED");
    let other = report
        .iter()
        .find(|r| r.parameter == " /prx/stag/Spire/Other/pkg/docker-image-tag");
    assert!(other.is_none(), "names outside the prefix are not listed");
    println!("{}", local.one_line());
}

#[tokio::test]
async fn a_stalled_write_is_abandoned_at_its_deadline_and_never_lands_after_a_newer_push() {
    let SsmReplicas {
        nats: _nats,
        moto: _moto,
        rt,
        log,
        client,
        store,
        replicas,
    } = SsmReplicas::start().await;

    let p = "/prx/stag/Spire/Stalled/pkg/docker-image-tag";
    let older = BuildSpec::ecr(70, X86, &[p]);
    let newer = BuildSpec::ecr(71, X86, &[p]);
    // The older push's first write hangs past write_timeout (300 ms) and is abandoned; the
    // newer push waits on its claim, both proceed once the lease (800 ms) is over.
    store.inject(p, &older.value(), Fault::Stalled);
    rt.publisher.publish(&older.envelope("a")).await.unwrap();
    // The newer push arrives once the older write hangs (its first publish of the name also
    // claims it, so without this the newer one could reach the fence first).
    wait_until(WAIT, "the older write to stall", || async {
        (store.faults_left() == 0).then_some(())
    })
    .await;
    rt.publisher.publish(&newer.envelope("a")).await.unwrap();
    settle(
        &rt,
        &log,
        &[(older.build_id.clone(), 1), (newer.build_id.clone(), 1)],
    )
    .await;
    assert_eq!(store.faults_left(), 0, "the stall happened");
    // The stalled write was dropped at the deadline: it can never reach SSM later.
    assert_eq!(store.stalls_abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(store.stalls_sent.load(Ordering::SeqCst), 0);
    let history = ssm_history(&client, p).await;
    assert!(
        history == vec![newer.value()] || history == vec![older.value(), newer.value()],
        "{history:#?}"
    );
    let takeovers: f64 = replicas
        .iter()
        .map(|r| r.metric("prx_ci_publisher_fence_takeovers_total"))
        .sum();
    assert!(takeovers >= 1.0, "the abandoned claim was resolved");
    let lost: f64 = replicas
        .iter()
        .map(|r| r.metric("prx_ci_publisher_fence_lost_after_write_total"))
        .sum();
    assert_eq!(lost, 0.0);
}
