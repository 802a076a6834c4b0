//! The invariants on small hand-made histories: a clean one, then one violation each.

use super::*;
use crate::history::{
    Completion, ParameterExpectation, Parked, RunnerBuild, SentDelivery, StatusWrite,
};

fn requested(delivery: &str, build: &str, commit: &str, retry_of: &str) -> Decision {
    Decision::Requested {
        event_id: format!("req-{build}"),
        delivery_id: delivery.into(),
        build_id: build.into(),
        architecture: "x86_64".into(),
        repository: "chaos/app-0".into(),
        commit: commit.into(),
        retry_of: retry_of.into(),
    }
}

fn completed(build: &str, result: BuildResult) -> Completion {
    Completion {
        event_id: format!("done-{build}"),
        build_id: build.into(),
        result,
    }
}

fn status(commit: &str, state: &str) -> StatusWrite {
    StatusWrite {
        repository: "chaos/app-0".into(),
        sha: commit.into(),
        context: "prx-ci/x86_64".into(),
        state: state.into(),
    }
}

fn runner(build: &str, request: &str, status: &str) -> RunnerBuild {
    RunnerBuild {
        build_id: build.into(),
        request_id: request.into(),
        final_status: Some(status.into()),
    }
}

/// Three pushes of one lane: d1 built and succeeded, d2 built, lost (FAULT) and re-run
/// successfully, d3 failed by its own fault; d4 a skipped branch push. The parameter went
/// c1 then c2 and stays on c2.
fn clean() -> History {
    let sent = ["d1", "d2", "d3", "d4"]
        .map(|d| SentDelivery {
            delivery_id: d.into(),
            accepted: true,
        })
        .to_vec();
    History {
        stored_webhooks: vec!["d1".into(), "d2".into(), "d3".into(), "d4".into()],
        sent,
        decisions: vec![
            requested("d1", "b1", "c1", ""),
            requested("d2", "b2", "c2", ""),
            requested("d2", "b2r", "c2", "b2"),
            requested("d3", "b3", "c3", ""),
            Decision::Skipped {
                event_id: "skip-d4".into(),
                delivery_id: "d4".into(),
            },
        ],
        completions: vec![
            completed("b1", BuildResult::Succeeded),
            completed("b2", BuildResult::Fault),
            completed("b2r", BuildResult::Succeeded),
            completed("b3", BuildResult::Failed),
        ],
        runner_builds: vec![
            runner("b1", "r1", "SUCCEEDED"),
            runner("b2", "r2", "FAULT"),
            runner("b2r", "r2r", "SUCCEEDED"),
            runner("b3", "r3", "FAILED"),
        ],
        ssm: BTreeMap::from([("/p".into(), vec!["v1".into(), "v2".into()])]),
        expectations: BTreeMap::from([(
            "/p".into(),
            ParameterExpectation {
                values_in_push_order: vec!["v1".into(), "v2".into(), "v3".into()],
                final_value: Some("v2".into()),
            },
        )]),
        slack: vec![
            SlackCall::Post {
                ts: "1".into(),
                build: "b1".into(),
            },
            SlackCall::Update {
                ts: "1".into(),
                build: "b1".into(),
            },
            SlackCall::Post {
                ts: "2".into(),
                build: "b2".into(),
            },
            SlackCall::Post {
                ts: "3".into(),
                build: "b2r".into(),
            },
            SlackCall::Post {
                ts: "4".into(),
                build: "b3".into(),
            },
        ],
        statuses: vec![
            status("c1", "pending"),
            status("c1", "success"),
            status("c2", "failure"),
            status("c2", "success"),
            status("c3", "failure"),
        ],
        parked: vec![Parked {
            consumer: "dispatcher".into(),
            subject: "prx.webhook.push.chaos.poison".into(),
            error: "undecodable".into(),
            data: b"poison".to_vec(),
        }],
        poisoned: vec![b"poison".to_vec()],
    }
}

fn violations_of(history: &History) -> Vec<(&'static str, Vec<String>)> {
    check_all(history)
        .into_iter()
        .filter(|o| !o.violations.is_empty())
        .map(|o| (o.name, o.violations))
        .collect()
}

/// The one invariant `history` violates, and its violations.
fn single(history: &History) -> (&'static str, Vec<String>) {
    let mut v = violations_of(history);
    assert_eq!(v.len(), 1, "{v:#?}");
    v.remove(0)
}

#[test]
fn a_clean_history_has_no_violation() {
    assert_eq!(violations_of(&clean()), vec![]);
}

#[test]
fn a_webhook_stored_twice_or_never_decided_or_never_accepted_is_reported() {
    let mut h = clean();
    h.stored_webhooks.push("d1".into());
    let (name, v) = single(&h);
    assert_eq!(name, stored_and_decided_once(&h).name);
    assert_eq!(v, ["delivery d1: stored 2 times"]);

    let mut h = clean();
    h.decisions.retain(|d| d.delivery_id() != "d4");
    assert_eq!(single(&h).1, ["delivery d4: never decided"]);

    let mut h = clean();
    h.sent.push(SentDelivery {
        delivery_id: "d5".into(),
        accepted: false,
    });
    assert_eq!(single(&h).1, ["delivery d5: never answered 2xx"]);

    let mut h = clean();
    h.decisions.push(Decision::Skipped {
        event_id: "skip-d1".into(),
        delivery_id: "d1".into(),
    });
    assert!(single(&h).1[0].contains("both built"));
}

#[test]
fn a_double_start_is_reported_but_a_re_run_is_not() {
    let mut h = clean();
    h.decisions.push(requested("d1", "b1bis", "c1", ""));
    h.completions
        .push(completed("b1bis", BuildResult::Succeeded));
    h.slack.push(SlackCall::Post {
        ts: "9".into(),
        build: "b1bis".into(),
    });
    let (name, v) = single(&h);
    assert_eq!(name, no_double_start(&h).name);
    assert!(v[0].contains("requested 2 builds"), "{v:?}");

    // The backend started a second build for one request with no event saying so.
    let mut h = clean();
    h.runner_builds.push(runner("ghost", "r1", "SUCCEEDED"));
    h.completions
        .push(completed("ghost", BuildResult::Succeeded));
    assert!(single(&h).1[0].contains("request r1 started 2 runner builds"));
}

#[test]
fn a_build_without_or_with_two_terminal_states_is_reported() {
    let mut h = clean();
    h.completions.retain(|c| c.build_id != "b3");
    // (the status check skips a build without a result)
    let (name, v) = single(&h);
    assert_eq!(name, one_terminal_state(&h).name);
    assert_eq!(v, ["build b3: no terminal state"]);

    let mut h = clean();
    h.completions.push(Completion {
        event_id: "again".into(),
        build_id: "b1".into(),
        result: BuildResult::Fault,
    });
    let v = check_all(&h);
    assert!(v[2].violations[0].contains("build b1: 2 terminal events"));

    let mut h = clean();
    h.runner_builds[0].final_status = None;
    assert!(single(&h).1[0].contains("the runner recorded None"));
}

#[test]
fn a_parameter_moving_back_or_ending_elsewhere_is_reported() {
    let mut h = clean();
    h.ssm.insert("/p".into(), vec!["v2".into(), "v1".into()]);
    let (name, v) = single(&h);
    assert_eq!(name, parameters_follow_push_order(&h).name);
    assert_eq!(
        v,
        [
            "/p: moved back from push 1 to push 0 of the lane",
            "/p: ends on Some(\"v1\"), expected Some(\"v2\")"
        ]
    );

    let mut h = clean();
    h.ssm.insert("/p".into(), vec!["v1".into()]);
    assert!(single(&h).1[0].contains("ends on Some(\"v1\")"));

    let mut h = clean();
    h.ssm.insert("/other".into(), vec!["x".into()]);
    assert!(single(&h).1[0].contains("no push publishes it"));
}

#[test]
fn two_slack_messages_or_a_wrong_final_status_are_reported() {
    let mut h = clean();
    h.slack.push(SlackCall::Post {
        ts: "5".into(),
        build: "b1".into(),
    });
    let (name, v) = single(&h);
    assert_eq!(name, one_message_and_matching_status(&h).name);
    assert!(v[0].contains("build b1: 2 Slack messages"), "{v:?}");

    let mut h = clean();
    h.slack.push(SlackCall::Update {
        ts: "4".into(),
        build: "b1".into(),
    });
    assert!(single(&h).1[0].contains("updated message 4, posted 1"));

    // The lost build's failure written after its re-run's success.
    let mut h = clean();
    h.statuses.push(status("c2", "failure"));
    assert!(single(&h).1[0].contains("final status failure"));

    let mut h = clean();
    h.statuses.retain(|s| s.sha != "c3");
    assert!(single(&h).1[0].contains("no commit status"));
}

#[test]
fn a_parked_message_that_was_not_poisoned_is_reported() {
    let mut h = clean();
    h.parked.push(Parked {
        consumer: "publisher".into(),
        subject: "prx.build.completed.chaos.app-0".into(),
        error: "SSM: access denied".into(),
        data: b"a real event".to_vec(),
    });
    let (name, v) = single(&h);
    assert_eq!(name, nothing_parked_but_poison(&h).name);
    assert_eq!(
        v[0],
        "consumer publisher parked a message of prx.build.completed.chaos.app-0 that was not poisoned: SSM: access denied"
    );
}

#[test]
fn a_lost_build_never_re_run_or_a_failed_build_re_run_is_reported() {
    let mut h = clean();
    h.decisions
        .retain(|d| !matches!(d, Decision::Requested { build_id, .. } if build_id == "b2r"));
    h.completions.retain(|c| c.build_id != "b2r");
    h.runner_builds.retain(|b| b.build_id != "b2r");
    h.slack
        .retain(|c| !matches!(c, SlackCall::Post { build, .. } if build == "b2r"));
    h.statuses
        .retain(|s| !(s.sha == "c2" && s.state == "success"));
    let (name, v) = single(&h);
    assert_eq!(name, lost_builds_re_run_once(&h).name);
    assert_eq!(v, ["build b2: lost (FAULT) and never re-run"]);

    let mut h = clean();
    h.decisions.push(requested("d3", "b3r", "c3", "b3"));
    h.completions.push(completed("b3r", BuildResult::Failed));
    h.slack.push(SlackCall::Post {
        ts: "8".into(),
        build: "b3r".into(),
    });
    let (name, v) = single(&h);
    assert_eq!(name, lost_builds_re_run_once(&h).name);
    assert_eq!(v, ["build b3: Failed, yet re-run"]);
}
