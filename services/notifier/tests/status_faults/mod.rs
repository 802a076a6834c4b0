//! GitHub status writes and Slack posts through a fault proxy in front of the fakes: 5xx and
//! 429 answers are retried within the client's attempt budget, GitHub's waits are honoured, a
//! status GitHub keeps refusing stays queued (the event is acknowledged, nothing is parked)
//! and lands once GitHub recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use prx_ci_notifier::github_status::StatusError;
use prx_ci_notifier::{GitHubStatusSink, Notifier, NotifierConfig, SlackClient, StatusSink as _};
use prx_ci_proto::prost::Message as _;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::CancellationToken;
use prx_ci_shared::bus::subject;
use prx_ci_shared::github::{GitHubClient, GitHubConfig};
use prx_ci_shared::notice::commit_status::{CommitStatus, StatusState};
use prx_ci_shared::retry::Backoff;
use prx_ci_shared::testing::fault_proxy::{
    Fault, FaultKind, FaultProxy, FaultRule, Match, RecordedRequest,
};
use prx_ci_shared::testing::wait_until;
use secrecy::SecretString;

use super::{BUILD_ID, Env, Events, GITHUB_TOKEN, REPOSITORIES, Running, SHA, WAIT, add_push};
use prx_ci_shared::testing::fake_github::{FakeAuth, FakeGitHub};

/// Status writes: `POST /repos/{owner}/{repo}/statuses/{sha}` (compare calls are GETs).
fn statuses() -> Match {
    Match::any().method("POST").path_prefix("/repos/")
}

/// The fake GitHub of the sink tests: token mode, the repositories' pushes.
async fn github() -> FakeGitHub {
    let github = FakeGitHub::start(FakeAuth::Token(GITHUB_TOKEN.into())).await;
    for repository in REPOSITORIES {
        add_push(&github, repository, 1);
    }
    github
}

/// A GitHub client through `proxy` with `backoff`.
fn github_through(proxy: &FaultProxy, backoff: Backoff) -> GitHubClient {
    GitHubClient::new(GitHubConfig {
        api_url: proxy.url(),
        token: Some(SecretString::from(GITHUB_TOKEN)),
        ..GitHubConfig::default()
    })
    .unwrap()
    .with_backoff(backoff)
}

fn pending_status() -> CommitStatus {
    CommitStatus {
        repository: "PRX/my-app".into(),
        sha: SHA.into(),
        context: "prx-ci/x86_64".into(),
        state: StatusState::Pending,
        description: "Build has started running".into(),
        target_url: None,
    }
}

/// The attempts `matcher` matches, in the order they arrived.
fn attempts(proxy: &FaultProxy, matcher: &Match) -> Vec<RecordedRequest> {
    let mut attempts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.matches(matcher))
        .collect();
    attempts.sort_by_key(|r| r.received);
    attempts
}

/// The waits between consecutive attempts.
fn gaps(attempts: &[RecordedRequest]) -> Vec<Duration> {
    attempts
        .windows(2)
        .map(|w| w[1].received.duration_since(w[0].received))
        .collect()
}

#[tokio::test]
async fn a_502_then_success_lands_one_status_in_two_attempts() {
    let github = github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    proxy.add(FaultRule::new(statuses(), Fault::server_error(502)).times(1));
    // The production retry policy.
    let sink = GitHubStatusSink::new(github_through(&proxy, Backoff::default()), 80, 500);

    sink.write(&pending_status()).await.expect("written");

    assert_eq!(proxy.count(&statuses()), 2);
    assert_eq!(proxy.injected(), [(FaultKind::ServerError(502), 1)].into());
    let landed = github.statuses();
    assert_eq!(landed.len(), 1, "one status landed: {landed:?}");
    assert_eq!(landed[0].state, "pending");
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let github = github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    proxy
        .add(FaultRule::new(statuses(), Fault::too_many_requests(Duration::from_secs(1))).times(1));
    let sink = GitHubStatusSink::new(github_through(&proxy, Backoff::default()), 80, 500);

    sink.write(&pending_status()).await.expect("written");

    let tries = attempts(&proxy, &statuses());
    assert_eq!(tries.len(), 2);
    assert!(
        gaps(&tries)[0] >= Duration::from_secs(1),
        "retried after {:?}",
        gaps(&tries)
    );
    assert_eq!(github.statuses().len(), 1);
}

#[tokio::test]
async fn an_exhausted_rate_limit_is_retried_after_its_reset() {
    let github = github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    // GitHub's primary rate limit: 403, nothing remaining, reset two seconds from now (whole
    // seconds, so at least one second away).
    let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 2).to_string();
    proxy.add(
        FaultRule::new(
            statuses(),
            Fault::answer(
                403,
                &[
                    ("content-type", "application/json"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ],
                r#"{"message":"API rate limit exceeded"}"#,
            ),
        )
        .times(1),
    );
    let sink = GitHubStatusSink::new(github_through(&proxy, Backoff::default()), 80, 500);

    sink.write(&pending_status()).await.expect("written");

    let tries = attempts(&proxy, &statuses());
    assert_eq!(tries.len(), 2);
    assert!(
        gaps(&tries)[0] >= Duration::from_secs(1),
        "{:?}",
        gaps(&tries)
    );
    assert_eq!(github.statuses().len(), 1);
}

#[tokio::test]
async fn a_persistent_5xx_stops_at_the_attempt_budget() {
    let github = github().await;
    let proxy = FaultProxy::start(&github.url()).await;
    proxy.add(FaultRule::new(statuses(), Fault::server_error(503)));
    let budget = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: 4,
    };
    let sink = GitHubStatusSink::new(github_through(&proxy, budget), 80, 500);

    let started = Instant::now();
    let err = sink.write(&pending_status()).await.unwrap_err();

    assert!(
        matches!(
            &err,
            StatusError::Transient {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(proxy.count(&statuses()), 4, "max_attempts, no more");
    // Three waits of at most `max` each (plus the calls themselves).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(github.statuses().is_empty());
}

/// A notifier whose commit statuses go through `statuses`, Slack straight to the fake.
async fn notifier_with(env: &Env, config: NotifierConfig, statuses: GitHubClient) -> Running {
    let mut registry = Registry::default();
    let rt = prx_ci_shared::Runtime::from_client(env.nats.connect().await, &mut registry);
    let chat = SlackClient::new(&config.slack)
        .unwrap()
        .with_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(5),
            max_attempts: 4,
        });
    let notifier = Notifier::new(
        rt,
        config,
        Arc::new(chat),
        Arc::new(GitHubStatusSink::new(statuses, 80, 500)),
        None,
        &mut registry,
    )
    .unwrap();
    let stats = notifier.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(notifier.run(shutdown.clone()));
    Running {
        stats,
        shutdown,
        task,
    }
}

/// Every envelope in the event stream.
async fn all_events(env: &Env) -> Vec<v1::Envelope> {
    let stream = env.rt.js.get_stream(subject::EVENTS_STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = vec![];
    for seq in 1..=last {
        if let Ok(raw) = stream.get_raw_message(seq).await
            && let Ok(envelope) = v1::Envelope::decode(raw.payload)
        {
            out.push(envelope);
        }
    }
    out
}

#[tokio::test]
async fn a_status_github_keeps_refusing_stays_queued_and_lands_when_it_recovers() {
    let env = Env::start(1).await;
    let proxy = FaultProxy::start(&env.github.url()).await;
    let down = proxy.add(FaultRule::new(statuses(), Fault::server_error(502)));
    let client = github_through(
        &proxy,
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_attempts: 3,
        },
    );
    let running = notifier_with(&env, env.config(), client).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;

    // Two rounds of the client's three attempts, the second after the queue's backoff.
    let tries = wait_until(WAIT, "two rounds of status attempts", || {
        let tries = attempts(&proxy, &statuses());
        async move { (tries.len() >= 6).then_some(tries) }
    })
    .await;
    let gaps = gaps(&tries);
    for within in [gaps[0], gaps[1], gaps[3], gaps[4]] {
        assert!(within < Duration::from_millis(400), "{gaps:?}");
    }
    assert!(
        gaps[2] >= Duration::from_millis(500),
        "the next round waits the queue's backoff: {gaps:?}"
    );
    assert!(env.github.statuses().is_empty());

    // Meanwhile the events are acknowledged (the record is the outbox), nothing is parked.
    let consumer_idle = || async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = env
            .rt
            .js
            .get_stream(subject::EVENTS_STREAM)
            .await
            .ok()?
            .get_consumer("notifier")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    };
    wait_until(
        WAIT,
        "the notifier to acknowledge the events",
        consumer_idle,
    )
    .await;

    // GitHub recovers: the queued status lands once.
    assert!(proxy.remove(down));
    let landed = wait_until(WAIT, "the status to land", || {
        let landed = env.github.statuses();
        async move { (!landed.is_empty()).then_some(landed) }
    })
    .await;
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(landed[0].state, "pending");
    wait_until(WAIT, "the status delivery to be recorded", || async {
        all_events(&env)
            .await
            .iter()
            .any(|e| {
                matches!(&e.payload, Some(Payload::NotificationDelivered(n))
                if n.channel == v1::NotificationChannel::GithubStatus as i32)
            })
            .then_some(())
    })
    .await;
    let parked = all_events(&env)
        .await
        .into_iter()
        .filter(|e| matches!(e.payload, Some(Payload::MessageParked(_))))
        .count();
    assert_eq!(parked, 0, "nothing parked");
    assert_eq!(env.github.statuses().len(), 1, "written once");
    running.stop().await;
}

#[tokio::test]
async fn a_rate_limited_status_waits_what_github_asks_before_its_next_round() {
    let env = Env::start(1).await;
    let proxy = FaultProxy::start(&env.github.url()).await;
    // Longer than the client's own retries last: the queue must wait it out.
    proxy
        .add(FaultRule::new(statuses(), Fault::too_many_requests(Duration::from_secs(2))).times(2));
    let client = github_through(
        &proxy,
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_attempts: 2,
        },
    );
    let running = notifier_with(&env, env.config(), client).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;

    wait_until(WAIT, "the status to land", || {
        let landed = env.github.statuses();
        async move { (!landed.is_empty()).then_some(()) }
    })
    .await;
    // The proxy logs an attempt once its answer is back, which can be after the test saw the
    // status land.
    let tries = wait_until(WAIT, "the accepted attempt logged", || {
        let tries = attempts(&proxy, &statuses());
        async move {
            tries
                .iter()
                .any(|t| (200..300).contains(&t.status))
                .then_some(tries)
        }
    })
    .await;
    assert_eq!(
        tries.len(),
        3,
        "two refused in one round, then one accepted"
    );
    let gaps = gaps(&tries);
    assert!(
        gaps[1] >= Duration::from_secs(2),
        "the next round waited GitHub's Retry-After: {gaps:?}"
    );
    assert_eq!(env.github.statuses().len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_slack_post_that_landed_but_was_answered_500_is_not_posted_again() {
    let env = Env::start(1).await;
    let proxy = FaultProxy::start(&env.slack.url).await;
    let posts = Match::any().path_prefix("/chat.postMessage");
    proxy.add(FaultRule::new(posts.clone(), Fault::lost_answer()).times(1));
    let mut config = env.config();
    config.slack.api_url = proxy.url();
    // Looking for an unconfirmed post reads the channel's history, which needs its id.
    config.channel = "C0OPSBUILD".into();
    let running = env.notifier(config).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;
    env.publish(&build.started()).await;

    env.message_where("the message to be updated", |m| m.updates > 0)
        .await;
    assert_eq!(env.slack.messages().len(), 1, "one message");
    assert_eq!(
        env.slack.calls("chat.postMessage").len(),
        1,
        "posted once: {:#?}",
        proxy.requests()
    );
    assert_eq!(proxy.injected(), [(FaultKind::LostAnswer, 1)].into());
    running.stop().await;
}

#[tokio::test]
async fn a_slack_429_through_the_proxy_is_retried_after_its_retry_after() {
    let env = Env::start(1).await;
    let proxy = FaultProxy::start(&env.slack.url).await;
    let posts = Match::any().path_prefix("/chat.postMessage");
    proxy.add(
        FaultRule::new(
            posts.clone(),
            Fault::too_many_requests(Duration::from_secs(1)),
        )
        .times(1),
    );
    let mut config = env.config();
    config.slack.api_url = proxy.url();
    let running = env.notifier(config).await;
    let build = Events::new("PRX/my-app", BUILD_ID);
    env.publish(&build.requested()).await;

    env.message_where("the message after the rate limit", |_| true)
        .await;
    let tries = attempts(&proxy, &posts);
    assert_eq!(tries.len(), 2, "one refused, one accepted");
    assert!(
        gaps(&tries)[0] >= Duration::from_secs(1),
        "{:?}",
        gaps(&tries)
    );
    assert_eq!(env.slack.messages().len(), 1);
    running.stop().await;
}
