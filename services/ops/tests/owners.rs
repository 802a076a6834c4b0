//! Parameter ownership through the ops API: listing config and claimed owners, and the audited
//! transfer (the authenticated identity recorded, config owners untouchable).

mod common;

use std::collections::BTreeMap;

use common::*;
use prx_ci_ops::api::ParameterOwnership;
use prx_ci_ops::{OpsConfig, client};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::subject;
use prx_ci_shared::ownership::{ACTION_CLAIM, Checked, OwnerRecord, OwnerStore, OwnershipConfig};
use secrecy::SecretString;
use tonic::Code;

const NAME: &str = "/prx/stag/Spire/App/pkg/docker-image-tag";
const CONFIGURED: &str = "/prx/stag/Spire/Configured/pkg/docker-image-tag";

async fn start() -> (Harness, OwnerStore) {
    let publisher = OwnershipConfig {
        owners: BTreeMap::from([(
            "/prx/stag/Spire/Configured/".to_owned(),
            "PRX/configured".to_owned(),
        )]),
        ..OwnershipConfig::default()
    };
    let h = Harness::start_owning(
        OpsConfig::default(),
        ParameterOwnership::from_publisher(&publisher).unwrap(),
    )
    .await;
    let store = OwnerStore::open(&h.rt.js).await.unwrap();
    // PRX/app's first publish claimed NAME.
    let claim = OwnerRecord {
        parameter: NAME.into(),
        repository: "PRX/app".into(),
        action: ACTION_CLAIM.into(),
        build_id: "local:7".into(),
        commit: sha('a'),
        at: "2026-01-01T00:00:00Z".into(),
        ..OwnerRecord::default()
    };
    assert!(store.create(&claim).await.unwrap());
    (h, store)
}

/// What the publisher's ownership check answers for a publish of NAME by `repository`.
async fn may_publish(store: &OwnerStore, repository: &str) -> bool {
    let config = ParameterOwnership::from_publisher(&OwnershipConfig::default()).unwrap();
    matches!(
        store
            .check(&config.config_owners, NAME, repository, "b", "c", "t")
            .await
            .unwrap(),
        Checked::Allowed { .. }
    )
}

async fn owner_changes(h: &Harness) -> Vec<(String, v1::ParameterOwnerChanged)> {
    let mut client = h.client().await;
    let mut out = Vec::new();
    for repository in ["PRX/app", "PRX/new", "PRX/configured"] {
        // The whole history, every page.
        let history = client::history_pages(
            &mut client,
            v1::HistoryRequest {
                repository: repository.into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        for event in history.events {
            if let Some(Payload::ParameterOwnerChanged(p)) = event.envelope.unwrap().payload {
                out.push((event.subject, p));
            }
        }
    }
    out
}

#[tokio::test]
async fn owners_lists_config_entries_and_claims() {
    let (h, _store) = start().await;
    let mut client = h.client().await;
    let owners = client
        .parameter_owners(v1::ParameterOwnersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .owners;
    let summary: Vec<(&str, &str, &str, &str)> = owners
        .iter()
        .map(|o| {
            (
                o.parameter.as_str(),
                o.repository.as_str(),
                o.source.as_str(),
                o.build_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "/prx/stag/Spire/Configured/",
                "PRX/configured",
                "config",
                ""
            ),
            (NAME, "PRX/app", "claim", "local:7"),
        ]
    );
    assert_eq!(owners[1].at, "2026-01-01T00:00:00Z");
    assert_eq!(owners[1].commit, sha('a'));
    // A prefix narrows both kinds.
    let app = client
        .parameter_owners(v1::ParameterOwnersRequest {
            prefix: "/prx/stag/Spire/App/".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].parameter, NAME);
}

#[tokio::test]
async fn a_transfer_records_the_authenticated_identity_and_changes_who_may_publish() {
    let (h, store) = start().await;
    assert!(may_publish(&store, "PRX/app").await);
    assert!(!may_publish(&store, "PRX/new").await);

    let mut client = h.client().await;
    let response = client
        .transfer_parameter(v1::TransferParameterRequest {
            parameter: NAME.into(),
            repository: "PRX/new".into(),
            reason: "app renamed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.previous, "PRX/app");
    assert_eq!(response.requested_by, OPERATOR);

    assert!(!may_publish(&store, "PRX/app").await);
    assert!(may_publish(&store, "prx/NEW").await);
    let (record, _) = store.get(NAME).await.unwrap().unwrap();
    assert_eq!(record.action, "transfer");
    assert_eq!(record.requested_by, OPERATOR);

    let changes = owner_changes(&h).await;
    let [(subject, event)] = &changes[..] else {
        panic!("{changes:#?}")
    };
    assert_eq!(
        *subject,
        subject::event_subject(subject::EventKind::ParameterOwnerChanged, "PRX/new")
    );
    assert_eq!(
        *event,
        v1::ParameterOwnerChanged {
            parameter: NAME.into(),
            repository: "PRX/new".into(),
            previous: "PRX/app".into(),
            action: "transfer".into(),
            requested_by: OPERATOR.into(),
            reason: "app renamed".into(),
        }
    );

    // The listing shows the transfer.
    let owners = client
        .parameter_owners(v1::ParameterOwnersRequest {
            prefix: NAME.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].source.as_str(), owners[0].requested_by.as_str()),
        ("transfer", OPERATOR)
    );
}

#[tokio::test]
async fn transfers_of_config_owned_names_bad_input_and_unauthenticated_calls_are_refused() {
    let (h, store) = start().await;
    let mut client = h.client().await;
    let transfer = |parameter: &str, repository: &str| v1::TransferParameterRequest {
        parameter: parameter.into(),
        repository: repository.into(),
        reason: String::new(),
    };

    let err = client
        .transfer_parameter(transfer(CONFIGURED, "PRX/new"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("PRX/configured"),
        "{}",
        err.message()
    );
    assert_eq!(store.get(CONFIGURED).await.unwrap(), None);

    for (parameter, repository) in [("/elsewhere/x", "PRX/new"), (NAME, "not-a-repo")] {
        let err = client
            .transfer_parameter(transfer(parameter, repository))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{parameter} {repository}"
        );
    }
    let err = client
        .transfer_parameter(transfer(NAME, "prx/APP"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let mut stranger = client::connect(
        &h.url,
        Some(&SecretString::from("wrong-token-0123456789")),
        None,
    )
    .await
    .unwrap();
    let err = stranger
        .transfer_parameter(transfer(NAME, "PRX/stranger"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    assert_eq!(
        store.get(NAME).await.unwrap().unwrap().0.repository,
        "PRX/app"
    );
    assert!(owner_changes(&h).await.is_empty());
}
