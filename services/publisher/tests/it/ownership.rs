//! Parameter ownership end to end: a repository cannot publish a name another repository
//! owns, two first publishes of one name leave one owner, and config owners beat claims.

use std::collections::BTreeMap;
use std::sync::Arc;

use prx_ci_proto::v1::{self, PublishSkipReason, envelope::Payload};
use prx_ci_publisher::{
    KvParameterStore, NoArtifactCheck, ParameterStore, PublisherConfig, parameter_views,
};
use prx_ci_shared::domain::Architecture;
use prx_ci_shared::ownership::{ACTION_CLAIM, OwnerRecord, OwnerStore};
use prx_ci_shared::testing::NatsServer;

use crate::utils::{
    BuildSpec, EventLog, REPO, Replica, SsmPublisher, SsmReplicas, runtime, settle, skips_of,
    ssm_history, test_config,
};

const X86: Architecture = Architecture::X86_64;

/// `spec`'s completion as a build of `repository` reports it (the build reference and the
/// ordering key name it), while its exported variables still say whatever `spec` says.
fn completion_of(spec: &BuildSpec, repository: &str) -> v1::Envelope {
    let mut envelope = spec.envelope("a");
    if let Some(key) = envelope.ordering_key.as_mut() {
        key.repository = repository.to_owned();
    }
    let Some(Payload::BuildCompleted(done)) = envelope.payload.as_mut() else {
        unreachable!("BuildSpec::envelope is a completion")
    };
    done.build.as_mut().unwrap().repository = repository.to_owned();
    envelope
}

fn owner_events(log: &EventLog) -> Vec<v1::ParameterOwnerChanged> {
    log.all()
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::ParameterOwnerChanged(p)) => Some(p),
            _ => None,
        })
        .collect()
}

fn skips_in(log: &EventLog, build: &BuildSpec) -> Vec<v1::PublishSkipped> {
    skips_of(&log.skipped(), build)
        .into_iter()
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_build_mapping_a_parameter_another_repository_owns_writes_nothing() {
    let SsmPublisher {
        rt,
        log,
        client,
        ssm,
        guard: _guard,
        ..
    } = SsmPublisher::start().await;
    let victim = "/prx/stag/Spire/App/pkg/docker-image-tag";
    let own = "/prx/stag/Spire/Intruder/pkg/docker-image-tag";

    // PRX/app publishes its parameter first and so claims it.
    let app = BuildSpec::ecr(10, X86, &[victim]);
    rt.publisher
        .publish(&completion_of(&app, REPO))
        .await
        .unwrap();
    settle(&rt, &log, &[(app.build_id.clone(), 1)]).await;
    assert_eq!(ssm_history(&client, victim).await, vec![app.value()]);

    // A newer build of another repository maps the same name (and one of its own), and even
    // exports PRX_REPO=PRX/app: the build reference decides, not the build's variables.
    let intruder = BuildSpec::ecr(11, X86, &[victim, own]);
    rt.publisher
        .publish(&completion_of(&intruder, "PRX/intruder"))
        .await
        .unwrap();
    settle(&rt, &log, &[(intruder.build_id.clone(), 2)]).await;

    assert_eq!(
        ssm_history(&client, victim).await,
        vec![app.value()],
        "nothing written over the owner's value"
    );
    assert_eq!(
        ssm.get(victim).await.unwrap().unwrap().value,
        app.value(),
        "GetParameter still answers the owner's value"
    );
    let skips = skips_in(&log, &intruder);
    let [skip] = &skips[..] else {
        panic!("{skips:#?}")
    };
    assert_eq!(skip.reason, PublishSkipReason::NotOwner as i32);
    assert_eq!(skip.parameter, victim);
    assert!(
        skip.detail.contains("belongs to PRX/app"),
        "{}",
        skip.detail
    );
    assert!(skip.detail.contains(&app.build_id), "{}", skip.detail);
    // Its own name it may publish (and so claims).
    assert_eq!(ssm_history(&client, own).await, vec![intruder.value()]);

    let claims: Vec<(String, String, String)> = owner_events(&log)
        .into_iter()
        .map(|e| (e.parameter, e.repository, e.action))
        .collect();
    assert_eq!(
        claims,
        vec![
            (victim.to_owned(), REPO.to_owned(), ACTION_CLAIM.to_owned()),
            (
                own.to_owned(),
                "PRX/intruder".to_owned(),
                ACTION_CLAIM.to_owned()
            ),
        ]
    );

    // `prx-ci params` shows the skip like any other.
    let report = parameter_views(&rt.js, ssm.as_ref(), "/prx/stag/Spire/")
        .await
        .unwrap();
    let line = report.iter().find(|r| r.parameter == victim).unwrap();
    assert_eq!(line.last_skip.as_ref().unwrap().reason, "NOT_OWNER");
    assert!(
        line.one_line().contains("last skip: NOT_OWNER"),
        "{}",
        line.one_line()
    );
    assert!(line.one_line().contains("belongs to PRX/app"));
}

#[tokio::test]
async fn two_repositories_racing_to_claim_new_names_leave_one_owner_and_one_writer_each() {
    let run = SsmReplicas::start().await;
    let names: Vec<String> = (0..6)
        .map(|i| format!("/prx/stag/Spire/Contested{i}/pkg/docker-image-tag"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // One build per repository, each mapping every contested name, delivered at once to two
    // replicas.
    let left = BuildSpec::ecr(20, X86, &names);
    let right = BuildSpec::ecr(21, X86, &names);
    let (left_done, right_done) = (
        completion_of(&left, "PRX/left"),
        completion_of(&right, "PRX/right"),
    );
    let (a, b) = tokio::join!(
        run.rt.publisher.publish(&left_done),
        run.rt.publisher.publish(&right_done),
    );
    a.unwrap();
    b.unwrap();
    settle(
        &run.rt,
        &run.log,
        &[
            (left.build_id.clone(), names.len()),
            (right.build_id.clone(), names.len()),
        ],
    )
    .await;

    let owners = OwnerStore::open(&run.rt.js).await.unwrap();
    let applied = run.log.applied();
    let claims = owner_events(&run.log);
    for name in &names {
        let (record, _) = owners.get(name).await.unwrap().expect("claimed");
        let (winner, loser) = match record.repository.as_str() {
            "PRX/left" => (&left, &right),
            "PRX/right" => (&right, &left),
            other => panic!("{name} owned by {other}"),
        };
        assert_eq!(record.build_id, winner.build_id);
        assert_eq!(
            ssm_history(&run.client, name).await,
            vec![winner.value()],
            "{name}: only the owner wrote"
        );
        let writers: Vec<_> = applied.iter().filter(|p| p.parameter == *name).collect();
        assert_eq!(writers.len(), 1, "{name}: {writers:#?}");
        let refused: Vec<_> = skips_in(&run.log, loser)
            .into_iter()
            .filter(|s| s.parameter == *name)
            .collect();
        let [refused] = &refused[..] else {
            panic!("{name}: {refused:#?}")
        };
        assert_eq!(refused.reason, PublishSkipReason::NotOwner as i32);
        assert!(
            refused
                .detail
                .contains(&format!("belongs to {}", record.repository)),
            "{}",
            refused.detail
        );
        let claimed: Vec<_> = claims.iter().filter(|c| c.parameter == *name).collect();
        assert_eq!(claimed.len(), 1, "{name}: one claim event: {claimed:#?}");
        assert_eq!(claimed[0].repository, record.repository);
    }
}

#[tokio::test]
async fn config_ownership_beats_a_claim() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await;
    let log = EventLog::start(&rt).await;
    let store = Arc::new(KvParameterStore::new(&rt.js).await.unwrap());
    let name = "/prx/stag/Spire/Configured/pkg/docker-image-tag";
    // PRX/squatter claimed the name before the config named its owner.
    let owners = OwnerStore::open(&rt.js).await.unwrap();
    let squat = OwnerRecord {
        parameter: name.into(),
        repository: "PRX/squatter".into(),
        action: ACTION_CLAIM.into(),
        build_id: "local:1-x86_64".into(),
        at: "2026-01-01T00:00:00Z".into(),
        ..OwnerRecord::default()
    };
    assert!(owners.create(&squat).await.unwrap());
    let config = PublisherConfig {
        owners: BTreeMap::from([(
            "/prx/stag/Spire/Configured/".to_owned(),
            "PRX/Configured".to_owned(),
        )]),
        ..test_config()
    };
    let _replica = Replica::start(&nats, config, store.clone(), Arc::new(NoArtifactCheck)).await;

    let squatter = BuildSpec::ecr(30, X86, &[name]);
    rt.publisher
        .publish(&completion_of(&squatter, "PRX/squatter"))
        .await
        .unwrap();
    settle(&rt, &log, &[(squatter.build_id.clone(), 1)]).await;
    let skips = skips_in(&log, &squatter);
    let [skip] = &skips[..] else {
        panic!("{skips:#?}")
    };
    assert_eq!(skip.reason, PublishSkipReason::NotOwner as i32);
    assert!(
        skip.detail
            .contains("belongs to PRX/Configured (config owners"),
        "{}",
        skip.detail
    );
    assert_eq!(store.get(name).await.unwrap(), None, "nothing written");

    // The configured owner publishes (its name spelled in another case) over the claim.
    let configured = BuildSpec::ecr(31, X86, &[name]);
    rt.publisher
        .publish(&completion_of(&configured, "prx/configured"))
        .await
        .unwrap();
    settle(&rt, &log, &[(configured.build_id.clone(), 1)]).await;
    assert_eq!(
        store.get(name).await.unwrap().map(|p| p.value),
        Some(configured.value())
    );
    assert!(skips_in(&log, &configured).is_empty());
    // Config-owned names are never claimed: the old record stays as it was, no claim event.
    assert_eq!(owners.get(name).await.unwrap().unwrap().0, squat);
    assert!(owner_events(&log).is_empty(), "{:#?}", owner_events(&log));
}
