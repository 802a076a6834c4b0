//! The web dashboard over HTTP against a real nats-server: who may see it, and events reaching
//! the pages (their content and the live `/events` stream) as they are stored.

mod common;

use std::time::Duration;

use common::{Harness, OPERATOR, TOKEN, build_story, push, sha};
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::testing::wait_until;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};

const REPO: &str = "PRX/app";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn pages_need_a_signed_in_operator() {
    let h = Harness::start().await;
    let http = client();
    for path in [
        "/",
        "/builds/x",
        "/branches",
        "/parameters",
        "/parked",
        "/actions",
        "/events",
    ] {
        let response = http
            .get(format!("{}{path}", h.dashboard))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let wrong = http
            .get(format!("{}{path}", h.dashboard))
            .header(AUTHORIZATION, "Bearer not-the-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The sign-in form is public; a wrong token is refused with the form again.
    let login = http
        .post(format!("{}/login", h.dashboard))
        .form(&[("token", "wrong-token-0123456789")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
    assert!(login.headers().get(SET_COOKIE).is_none());

    let login = http
        .post(format!("{}/login", h.dashboard))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()[LOCATION], "/");
    let cookie = login.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN), "the cookie never holds the token");
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{}/", h.dashboard))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    let body = page.text().await.unwrap();
    assert!(body.contains(&format!("signed in as {OPERATOR}")), "{body}");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    // A POST without the form's CSRF value is refused, even with the session.
    let retry = http
        .post(format!("{}/parked/1/retry", h.dashboard))
        .header(COOKIE, &session)
        .form(&[("action", "retry")])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::FORBIDDEN);
}

/// Reads `/events` until a `change` event names `topic`.
async fn wait_for_topic(response: &mut reqwest::Response, topic: &str) {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .any(|data| data.split(' ').any(|t| t == topic))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no change event named {topic}; saw:\n{seen}"
    );
}

#[tokio::test]
async fn stored_events_reach_the_pages_and_their_live_stream() {
    let h = Harness::start().await;
    let mut live = client()
        .get(format!("{}/events", h.dashboard))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    // Two pushes; the older one's build finishes last and is superseded.
    let older = push("d-1", REPO, "main", &sha('a'));
    let newer = push("d-2", REPO, "main", &sha('b'));
    h.publish(&older).await;
    h.publish(&newer).await;
    let older_story = build_story(&older, 10, "main", Some(v1::BuildStatus::Succeeded));
    let newer_story = build_story(&newer, 20, "main", Some(v1::BuildStatus::Succeeded));
    for e in older_story.iter().take(2).chain(&newer_story) {
        h.publish(e).await;
    }
    let key = |story: &[v1::Envelope]| match &story[0].payload {
        Some(Payload::BuildRequested(r)) => r.build.as_ref().unwrap().build_request_id.clone(),
        _ => unreachable!(),
    };
    let (older_key, newer_key) = (key(&older_story), key(&newer_story));
    wait_for_topic(&mut live, &format!("build:{newer_key}")).await;

    let parameter = "/prx/stag/Spire/App/pkg/docker-image-tag";
    let publish = |story: &[v1::Envelope], skip: bool| {
        let completed = story.last().unwrap();
        let chain = Chain::caused_by(completed);
        let build = story[0].payload.as_ref().and_then(|p| match p {
            Payload::BuildRequested(r) => r.build.clone(),
            _ => None,
        });
        let payload = if skip {
            Payload::PublishSkipped(v1::PublishSkipped {
                parameter: parameter.into(),
                build,
                reason: v1::PublishSkipReason::Superseded as i32,
                check: "push order".into(),
                ..Default::default()
            })
        } else {
            Payload::PublishApplied(v1::PublishApplied {
                parameter: parameter.into(),
                value: format!("github/prx/app:{}-x86_64", sha('b')),
                build,
                ..Default::default()
            })
        };
        chain.envelope(chain.derive_id(&["publish"]), payload)
    };
    h.publish(&publish(&newer_story, false)).await;
    h.publish(&older_story[2]).await;
    h.publish(&publish(&older_story, true)).await;
    wait_for_topic(&mut live, &format!("parameter:{parameter}")).await;

    // The branch timeline: newest push first, published; the older one superseded.
    let timeline = wait_until(
        Duration::from_secs(20),
        "the timeline shows both outcomes",
        || async {
            let (status, body) = h.get("/branches/PRX/app/main").await;
            let published = body.find(r#"data-outcome="published""#)?;
            let superseded = body.find(r#"data-outcome="superseded""#)?;
            (status == StatusCode::OK && published < superseded).then_some(body)
        },
    )
    .await;
    assert!(timeline.contains(&format!(r#"data-commit="{}""#, sha('b'))));

    // The builds page lists both, finished; filters narrow it.
    let (_, builds) = h.get("/").await;
    for key in [&older_key, &newer_key] {
        assert!(
            builds.contains(&format!(r#"data-build="{key}""#)),
            "{builds}"
        );
    }
    assert!(builds.contains(r#"data-status="SUCCEEDED""#));
    let (_, running) = h.get("/?status=running").await;
    assert!(!running.contains("data-build="), "{running}");

    // The parameter points at the newer commit; its history holds the skip with its reason.
    let (_, parameters) = h.get("/parameters").await;
    assert!(parameters.contains(&format!(r#"data-parameter="{parameter}""#)));
    assert!(parameters.contains(&prx_ci_shared::domain::short_sha(&sha('b')).to_owned()));
    let (status, history) = h.get(&format!("/parameter?name={parameter}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        history.contains("superseded") && history.contains("push order"),
        "{history}"
    );

    // The older build's page tells why it did not publish.
    let (status, build) = h.get(&format!("/builds/{older_key}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        build.contains(r#"id="publishes""#) && build.contains("superseded"),
        "{build}"
    );
    let (status, _) = h.get("/builds/no-such-build").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_open_page_does_not_hold_up_the_services_shutdown() {
    let mut h = Harness::start().await;
    let mut live = client()
        .get(format!("{}/events", h.dashboard))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    h.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(4), &mut h.task).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the service stops with a page open: {stopped:?}"
    );
    // The page's stream ended with it.
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while live.chunk().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the /events stream ends at shutdown");
}
