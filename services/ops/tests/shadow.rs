//! The shadow report read from a real PRX_EVENTS, through the ops API (`prx-ci shadow-report`)
//! and the dashboard's `/shadow` page: a shadow decision, the original's adopted build with one
//! variable that disagrees, the repository filter and the period's start.

mod common;

use common::{Harness, build_ref, push, sha};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, timestamp};
use prx_ci_shared::codebuild::env;
use reqwest::StatusCode;

/// A shadow decision for `webhook` and, when `original_branch` is given, the original's build
/// of it adopted with `PRX_BRANCH` as that branch (the dispatcher said `main`).
async fn shadow_story(
    h: &Harness,
    webhook: &v1::Envelope,
    commit: &str,
    original_branch: Option<&str>,
) {
    let Some(Payload::WebhookReceived(w)) = &webhook.payload else {
        unreachable!()
    };
    h.publish(webhook).await;
    let chain = Chain::caused_by(webhook);
    let variables = |branch: &str| {
        [
            (env::REPO, w.repository.as_str()),
            (env::COMMIT, commit),
            (env::BRANCH, branch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    let requested = chain.envelope(
        chain.derive_id(&["requested"]),
        Payload::BuildRequested(v1::BuildRequested {
            build: Some(build_ref(&w.repository, commit, "r")),
            environment: variables("main"),
            shadow: true,
            ..Default::default()
        }),
    );
    h.publish(&requested).await;
    if let Some(branch) = original_branch {
        let started = Chain::caused_by(&requested);
        h.publish(&started.envelope(
            started.derive_id(&["started"]),
            Payload::BuildStarted(v1::BuildStarted {
                build: Some(v1::BuildRef {
                    build_id: format!("infrastructure-ci-Runner2:{commit}"),
                    shadowed: true,
                    ..build_ref(&w.repository, commit, "r")
                }),
                environment: variables(branch),
                requested: Some(v1::BuildRequested::default()),
                ..Default::default()
            }),
        ))
        .await;
    }
}

#[tokio::test]
async fn the_report_compares_what_is_stored_through_the_api_and_the_page() {
    let h = Harness::start().await;
    let (a, b, other) = (sha('a'), sha('b'), sha('c'));
    shadow_story(&h, &push("d-a", "PRX/app", "main", &a), &a, Some("main")).await;
    shadow_story(&h, &push("d-b", "PRX/app", "main", &b), &b, Some("master")).await;
    shadow_story(&h, &push("d-o", "PRX/other", "main", &other), &other, None).await;

    let mut client = h.client().await;
    let report = client
        .shadow_report(v1::ShadowReportRequest::default())
        .await
        .unwrap()
        .into_inner();
    let verdicts: Vec<(&str, v1::ShadowVerdict)> = report
        .webhooks
        .iter()
        .map(|w| (w.delivery_id.as_str(), w.verdict()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("d-a", v1::ShadowVerdict::Agree),
            ("d-b", v1::ShadowVerdict::Disagree),
            ("d-o", v1::ShadowVerdict::Waiting),
        ]
    );
    assert_eq!(report.webhooks[1].differences[0].variable, env::BRANCH);
    assert_eq!(report.webhooks[1].differences[0].original, "master");

    // One repository; and a period that starts after everything stored is empty.
    let one = client
        .shadow_report(v1::ShadowReportRequest {
            repository: "PRX/other".into(),
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.webhooks.len(), 1);
    assert_eq!(one.webhooks[0].repository, "PRX/other");
    let later = client
        .shadow_report(v1::ShadowReportRequest {
            repository: String::new(),
            since: Some(timestamp(
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(later.webhooks.is_empty(), "{later:?}");
    let bad = client
        .shadow_report(v1::ShadowReportRequest {
            repository: "not a repository".into(),
            since: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let (status, html) = h.get("/shadow").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"data-delivery="d-b" data-verdict="disagree""#),
        "{html}"
    );
    assert!(
        html.contains(r#"data-delivery="d-a" data-verdict="agree""#),
        "{html}"
    );
    assert!(
        html.contains("PRX_BRANCH is &quot;main&quot; here, &quot;master&quot; in the original"),
        "{html}"
    );
    let (status, html) = h.get("/shadow?repository=PRX%2Fother").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains(r#"data-delivery="d-a""#), "{html}");
    let (status, _) = h.get("/shadow?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
