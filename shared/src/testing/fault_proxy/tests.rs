//! Unit tests of the fault proxy against a tiny upstream that counts and echoes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::Method;

use super::*;

/// An upstream that counts requests and echoes method, path, query and body; `?status=N`
/// sets its answer's status.
struct Upstream {
    url: String,
    hits: Arc<AtomicUsize>,
    /// One client per test (building one per request is slow).
    client: reqwest::Client,
    _stop: CancellationToken,
}

async fn upstream() -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let router = axum::Router::new().fallback(move |request: Request| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, MAX_BODY).await.unwrap();
            let status = parts
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")))
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let text = format!(
                "{} {} {} {}",
                parts.method,
                parts.uri.path(),
                parts.uri.query().unwrap_or(""),
                String::from_utf8_lossy(&body)
            );
            let mut response = Response::new(Body::from(text));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
                .headers_mut()
                .insert("x-upstream", HeaderValue::from_static("yes"));
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancelled.cancelled().await })
            .await
            .unwrap();
    });
    Upstream {
        url,
        hits,
        client: reqwest::Client::new(),
        _stop: stop,
    }
}

impl Upstream {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn send(
    client: &reqwest::Client,
    proxy: &FaultProxy,
    method: Method,
    path: &str,
    target: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = client
        .request(method, format!("{}{path}", proxy.url()))
        .body(body.to_owned());
    if let Some(target) = target {
        request = request.header("x-amz-target", target);
    }
    request.send().await.expect("the proxy answers")
}

const PUT: &str = "AmazonSSM.PutParameter";
const GET: &str = "AmazonSSM.GetParameter";

#[tokio::test]
async fn without_rules_requests_pass_through_unchanged() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    let response = send(
        &up.client,
        &proxy,
        Method::PUT,
        "/a/b?status=201&x=1",
        None,
        "hello",
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(
        response.text().await.unwrap(),
        "PUT /a/b status=201&x=1 hello"
    );
    assert_eq!(up.hits(), 1);
    let log = proxy.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].path, "/a/b");
    assert_eq!(log[0].query.as_deref(), Some("status=201&x=1"));
    assert_eq!(log[0].body, "hello");
    assert_eq!(
        (log[0].outcome.clone(), log[0].status),
        (Outcome::Forwarded, 201)
    );
    assert_eq!(proxy.injected_total(), 0);
}

#[tokio::test]
async fn throttling_fires_on_the_next_n_matching_calls_without_forwarding() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    let rule = proxy.add(FaultRule::new(Match::aws(PUT), Fault::ssm_throttling()).times(2));

    // Another operation is not matched and does not spend the rule.
    assert_eq!(
        send(&up.client, &proxy, Method::POST, "/", Some(GET), "{}")
            .await
            .status(),
        200
    );
    for _ in 0..2 {
        let response = send(&up.client, &proxy, Method::POST, "/", Some(PUT), "{}").await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["content-type"],
            "application/x-amz-json-1.1"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["__type"], "ThrottlingException");
        assert_eq!(body["message"], "Rate exceeded");
    }
    assert_eq!(
        send(&up.client, &proxy, Method::POST, "/", Some(PUT), "{}")
            .await
            .status(),
        200
    );

    assert_eq!(
        up.hits(),
        2,
        "the throttled calls never reached the upstream"
    );
    assert_eq!(proxy.count(&Match::aws(PUT)), 3);
    assert_eq!(proxy.count(&Match::aws(GET)), 1);
    assert_eq!(proxy.fired(rule), 2);
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([(FaultKind::Throttling, 2)])
    );
    let outcomes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.matches(&Match::aws(PUT)))
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Injected(FaultKind::Throttling),
            Outcome::Injected(FaultKind::Throttling),
            Outcome::Forwarded
        ]
    );
}

#[tokio::test]
async fn a_lost_answer_reaches_the_upstream_and_answers_500() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    proxy.add(FaultRule::new(Match::aws(PUT), Fault::lost_answer()).times(1));
    let response = send(&up.client, &proxy, Method::POST, "/", Some(PUT), "{}").await;
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("answer lost"));
    assert_eq!(up.hits(), 1, "the write landed");
    let log = proxy.requests();
    assert_eq!(
        log[0].outcome,
        Outcome::LostAnswer {
            upstream_status: 200
        }
    );
    assert!(log[0].outcome.reached_upstream());
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([(FaultKind::LostAnswer, 1)])
    );
}

#[tokio::test]
async fn rules_match_on_method_and_path_prefix_in_order() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    let statuses = Match::any().method("post").path_prefix("/repos/");
    proxy.add(FaultRule::new(statuses.clone(), Fault::server_error(502)).times(1));
    proxy.add(
        FaultRule::new(
            statuses.clone(),
            Fault::too_many_requests(Duration::from_millis(1500)),
        )
        .times(1),
    );

    // Neither a GET on the same path nor a POST elsewhere matches.
    assert_eq!(
        send(&up.client, &proxy, Method::GET, "/repos/o/r", None, "")
            .await
            .status(),
        200
    );
    assert_eq!(
        send(
            &up.client,
            &proxy,
            Method::POST,
            "/chat.postMessage",
            None,
            ""
        )
        .await
        .status(),
        200
    );

    let first = send(
        &up.client,
        &proxy,
        Method::POST,
        "/repos/o/r/statuses/abc",
        None,
        "{}",
    )
    .await;
    assert_eq!(first.status(), 502);
    let second = send(
        &up.client,
        &proxy,
        Method::POST,
        "/repos/o/r/statuses/abc",
        None,
        "{}",
    )
    .await;
    assert_eq!(second.status(), 429);
    assert_eq!(
        second.headers()["retry-after"],
        "2",
        "rounded up to whole seconds"
    );
    let third = send(
        &up.client,
        &proxy,
        Method::POST,
        "/repos/o/r/statuses/abc",
        None,
        "{}",
    )
    .await;
    assert_eq!(third.status(), 200);

    assert_eq!(up.hits(), 3);
    assert_eq!(proxy.count(&statuses), 3);
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([
            (FaultKind::ServerError(502), 1),
            (FaultKind::TooManyRequests, 1)
        ])
    );
}

#[tokio::test]
async fn rules_can_be_removed_and_cleared_at_run_time() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    let always = proxy.add(FaultRule::new(Match::any(), Fault::server_error(503)));
    assert_eq!(
        send(&up.client, &proxy, Method::GET, "/", None, "")
            .await
            .status(),
        503
    );
    assert_eq!(
        send(&up.client, &proxy, Method::GET, "/", None, "")
            .await
            .status(),
        503
    );
    assert!(proxy.remove(always));
    assert!(!proxy.remove(always));
    assert_eq!(
        send(&up.client, &proxy, Method::GET, "/", None, "")
            .await
            .status(),
        200
    );
    proxy.add(FaultRule::new(
        Match::any(),
        Fault::answer(418, &[("x-a", "b")], "teapot"),
    ));
    let custom = send(&up.client, &proxy, Method::GET, "/", None, "").await;
    assert_eq!(custom.status(), 418);
    assert_eq!(custom.headers()["x-a"], "b");
    proxy.clear();
    assert_eq!(
        send(&up.client, &proxy, Method::GET, "/", None, "")
            .await
            .status(),
        200
    );
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([
            (FaultKind::ServerError(503), 2),
            (FaultKind::Answer(418), 1)
        ])
    );
    proxy.clear_requests();
    assert!(proxy.requests().is_empty());
}

/// The statuses a seeded proxy gives to 200 sequential matching requests.
async fn seeded_outcomes(seed: u64) -> Vec<u16> {
    let up = upstream().await;
    let proxy = FaultProxy::start_seeded(&up.url, seed).await;
    proxy.add(FaultRule::new(Match::any(), Fault::server_error(500)).probability(0.3));
    let mut statuses = Vec::new();
    for _ in 0..200 {
        statuses.push(
            send(&up.client, &proxy, Method::GET, "/", None, "")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        proxy.injected_total(),
        statuses.iter().filter(|s| **s == 500).count() as u64
    );
    statuses
}

#[tokio::test]
async fn probabilistic_rules_repeat_with_their_seed() {
    let first = seeded_outcomes(7).await;
    let again = seeded_outcomes(7).await;
    let other = seeded_outcomes(8).await;
    assert_eq!(first, again, "same seed, same faults");
    assert_ne!(first, other, "another seed, other faults");
    let faults = first.iter().filter(|s| **s == 500).count();
    assert!((30..=90).contains(&faults), "{faults} of 200 at p = 0.3");
}

#[tokio::test]
async fn a_delay_holds_the_request_then_forwards_it() {
    let up = upstream().await;
    let proxy = FaultProxy::start(&up.url).await;
    proxy.add(FaultRule::new(Match::any(), Fault::delay(Duration::from_millis(150))).times(1));
    let started = Instant::now();
    let response = send(&up.client, &proxy, Method::GET, "/slow", None, "").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(proxy.requests()[0].received >= started);
    assert_eq!(up.hits(), 1);
    assert_eq!(
        proxy.requests()[0].outcome,
        Outcome::Delayed(Duration::from_millis(150))
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_that_says_so() {
    let port = crate::testing::free_port();
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{port}")).await;
    let client = reqwest::Client::new();
    let response = send(&client, &proxy, Method::GET, "/", None, "").await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("cannot reach upstream"), "{text}");
    assert_eq!(proxy.requests()[0].outcome, Outcome::UpstreamUnreachable);
}
