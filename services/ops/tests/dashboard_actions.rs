//! The dashboard's operator actions against a real nats-server and ops service: rebuild and
//! replay are a dry run first (nothing stored), then the confirmed call through the ops API as
//! the signed-in operator; POSTs without this dashboard's CSRF value are refused.

mod common;

use common::{Harness, OPERATOR, TOKEN, WAIT, build_story, push, sha};
use futures::StreamExt as _;
use prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, new_event_id};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, WEBHOOKS_STREAM};
use prx_ci_shared::testing::wait_until;
use reqwest::StatusCode;

/// A dashboard client signed in with the ops token (as [`OPERATOR`]); redirects not followed.
fn browser() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The CSRF value in the page's forms.
async fn csrf_of(h: &Harness, client: &reqwest::Client, path: &str) -> String {
    let page = client
        .get(format!("{}{path}", h.dashboard))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF value")
        + r#"name="csrf" value=""#.len();
    page[start..].split('"').next().unwrap().to_owned()
}

async fn post<K: serde::Serialize, V: serde::Serialize>(
    h: &Harness,
    client: &reqwest::Client,
    path: &str,
    form: &[(K, V)],
) -> (StatusCode, String, Option<String>) {
    let response = client
        .post(format!("{}{path}", h.dashboard))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.text().await.unwrap(), location)
}

/// The operator pushes stored on PRX_WEBHOOKS.
async fn operator_pushes(h: &Harness) -> Vec<v1::WebhookReceived> {
    let stream = h.rt.js.get_stream(WEBHOOKS_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let raw = stream.get_raw_message(seq).await.unwrap();
        let envelope = v1::Envelope::decode(raw.payload).unwrap();
        if let Some(Payload::WebhookReceived(w)) = envelope.payload
            && w.origin() == v1::Origin::Operator
        {
            out.push(w);
        }
    }
    out
}

#[tokio::test]
async fn a_dashboard_rebuild_is_a_dry_run_first_then_one_operator_push() {
    let h = Harness::start().await;
    h.publish(&push("d1", "PRX/app", "main", &sha('a'))).await;
    let client = browser();
    let csrf = csrf_of(&h, &client, "/actions").await;
    let (a, b, c) = (sha('a'), sha('b'), sha('c'));
    let form = |csrf: &str, reason: &str, confirm: &str| -> Vec<(String, String)> {
        [
            ("csrf", csrf),
            ("repository", "PRX/app"),
            ("revision", "main"),
            ("branch", ""),
            ("reason", reason),
            ("confirm_commit", confirm),
        ]
        .into_iter()
        .filter(|(name, _)| *name != "csrf" || !csrf.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };

    // The dry run: what would be rebuilt, and nothing stored.
    let (status, page, _) = post(
        &h,
        &client,
        "/actions/rebuild",
        &form(&csrf, "runner was flaky", ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Confirm rebuild") && page.contains("Rebuild now"),
        "{page}"
    );
    assert!(page.contains(&format!(r#"data-commit="{a}""#)), "{page}");
    assert!(
        operator_pushes(&h).await.is_empty(),
        "a dry run stores nothing"
    );

    // No reason: refused with the form again.
    let (status, page, _) = post(&h, &client, "/actions/rebuild", &form(&csrf, "  ", "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("A reason is required"), "{page}");

    // Not this dashboard's form: no CSRF value, a wrong one, another origin.
    let confirmed = form(&csrf, "runner was flaky", &a);
    let (status, _, _) = post(&h, &client, "/actions/rebuild", &form("", "x", &a)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(&h, &client, "/actions/rebuild", &form("0000", "x", &a)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let cross = client
        .post(format!("{}/actions/rebuild", h.dashboard))
        .header(reqwest::header::ORIGIN, "https://evil.example")
        .form(&confirmed)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    assert!(operator_pushes(&h).await.is_empty());

    // Confirmed: one operator push, recorded as the token's operator, then the timeline.
    let (status, page, location) = post(&h, &client, "/actions/rebuild", &confirmed).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(location.as_deref(), Some("/branches/PRX/app/main"));
    let pushes = operator_pushes(&h).await;
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].requested_by, OPERATOR);
    let body: serde_json::Value = serde_json::from_slice(&pushes[0].payload).unwrap();
    assert_eq!(body["after"], a);
    assert_eq!(
        body["head_commit"]["message"],
        format!("Rebuild requested by {OPERATOR}: runner was flaky")
    );

    // The branch moved after the dry run: the confirmation is refused, with the new answer.
    h.publish(&push("d2", "PRX/app", "main", &b)).await;
    let (status, page, _) = post(&h, &client, "/actions/rebuild", &confirmed).await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("the branch moved"), "{page}");
    assert!(page.contains(&format!(r#"data-commit="{b}""#)), "{page}");
    assert_eq!(operator_pushes(&h).await.len(), 1, "nothing more stored");

    // The API's refusals, as text with their status.
    let unknown = vec![
        ("csrf", csrf.as_str()),
        ("repository", "PRX/unknown"),
        ("revision", "main"),
        ("reason", "why not"),
    ];
    let (status, page, _) = post(&h, &client, "/actions/rebuild", &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
    assert!(page.contains("no webhook of PRX/unknown"), "{page}");
    // c branched off a, beside main's b.
    h.commit("PRX/app", &a, &[]);
    h.commit("PRX/app", &b, &[&a]);
    h.commit("PRX/app", &c, &[&a]);
    let outside = vec![
        ("csrf", csrf.as_str()),
        ("repository", "PRX/app"),
        ("revision", c.as_str()),
        ("branch", "main"),
        ("reason", "a fork's commit"),
    ];
    let (status, page, _) = post(&h, &client, "/actions/rebuild", &outside).await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("is not in the history of"), "{page}");
    assert_eq!(operator_pushes(&h).await.len(), 1);

    // The timeline links each push to the form, filled in, and so does a build's page.
    let link = format!("/actions?repository=PRX%2Fapp&amp;revision={b}&amp;branch=main#rebuild");
    wait_until(WAIT, "the timeline links the newer push", || async {
        let page = client
            .get(format!("{}/branches/PRX/app/main", h.dashboard))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        page.contains(&link).then_some(())
    })
    .await;
    let story = build_story(&push("d2", "PRX/app", "main", &b), 2, "main", None);
    let Some(Payload::BuildRequested(requested)) = &story[0].payload else {
        panic!("a story starts with its request")
    };
    let key = requested.build.as_ref().unwrap().build_request_id.clone();
    for event in &story {
        h.publish(event).await;
    }
    wait_until(WAIT, "the build page links the rebuild form", || async {
        let page = client
            .get(format!("{}/builds/{key}", h.dashboard))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        page.contains(&link).then_some(())
    })
    .await;
}

fn skipped(repository: &str, n: usize) -> v1::Envelope {
    Chain::starting(&format!("d{n}")).envelope(
        new_event_id(),
        Payload::BuildSkipped(v1::BuildSkipped {
            repository: repository.into(),
            detail: n.to_string(),
            ..Default::default()
        }),
    )
}

async fn replay_consumers(h: &Harness) -> Vec<String> {
    let stream = h.rt.js.get_stream(EVENTS_STREAM).await.unwrap();
    let names: Vec<_> = stream.consumer_names().collect().await;
    names
        .into_iter()
        .map(Result::unwrap)
        .filter(|n| n.contains("-replay-"))
        .collect()
}

#[tokio::test]
async fn a_dashboard_replay_lists_the_range_first_and_replays_it_once_confirmed() {
    let h = Harness::start().await;
    let mut sequences = Vec::new();
    for n in 0..6 {
        let repo = if n % 2 == 0 { "PRX/app" } else { "PRX/other" };
        sequences.push(h.publish(&skipped(repo, n)).await.to_string());
    }
    let client = browser();
    let csrf = csrf_of(&h, &client, "/actions").await;
    let actions = client
        .get(format!("{}/actions", h.dashboard))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The durable consumers are suggested (not the live reads' ephemeral ones).
    let list = actions
        .split(r#"<datalist id="consumers">"#)
        .nth(1)
        .and_then(|rest| rest.split("</datalist>").next())
        .expect("a consumer list");
    let suggested: Vec<&str> = list
        .split(r#"<option value=""#)
        .skip(1)
        .filter_map(|o| o.split('"').next())
        .collect();
    assert!(suggested.contains(&"notifier"), "{suggested:?}");
    for name in &suggested {
        let mut durable = false;
        for stream in [EVENTS_STREAM, WEBHOOKS_STREAM] {
            let stream = h.rt.js.get_stream(stream).await.unwrap();
            if let Ok(info) = stream.consumer_info(*name).await {
                durable |= info.config.durable_name.is_some();
            }
        }
        assert!(durable, "{name} is not a durable consumer: {suggested:?}");
    }
    let form = |from: &str, to: &str, confirmed: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("stream", EVENTS_STREAM.to_owned()),
            ("consumer", "notifier".to_owned()),
            ("from", from.to_owned()),
            ("to", to.to_owned()),
            ("subject", "prx.build.skipped.PRX.app".to_owned()),
            ("confirmed", confirmed.to_owned()),
        ]
    };
    let post = |fields: Vec<(&'static str, String)>| {
        let client = client.clone();
        let url = format!("{}/actions/replay", h.dashboard);
        async move {
            let response = client.post(url).form(&fields).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };

    // The dry run lists the range; no replay consumer yet.
    let (status, page) = post(form(&sequences[1], "", "")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(r#"data-count="2""#), "{page}");
    for sequence in [&sequences[2], &sequences[4]] {
        assert!(
            page.contains(&format!(r#"data-sequence="{sequence}""#)),
            "{page}"
        );
    }
    assert!(!page.contains(&format!(r#"data-sequence="{}""#, sequences[3])));
    assert!(page.contains("Replay now"), "{page}");
    assert!(
        replay_consumers(&h).await.is_empty(),
        "a dry run changes nothing"
    );

    // Clear refusals: a bad bound, an unknown consumer, no CSRF value.
    let (status, page) = post(form("yesterday", "", "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("neither a stream sequence number"), "{page}");
    let mut nobody = form("", "", "");
    nobody[2].1 = "nobody".into();
    let (status, page) = post(nobody).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
    assert!(page.contains("consumer nobody does not exist"), "{page}");
    let mut forged = form(&sequences[2], &sequences[4], "yes");
    forged.remove(0);
    let (status, _) = post(forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(replay_consumers(&h).await.is_empty());

    // Confirmed (the preview pinned the listed sequences): one replay consumer.
    let (status, page) = post(form(&sequences[2], &sequences[4], "yes")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Replaying 2 message(s)"), "{page}");
    let created = replay_consumers(&h).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(page.contains(&created[0]), "{page}");
}
