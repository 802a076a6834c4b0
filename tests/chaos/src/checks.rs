//! The invariants of issue 13, each a pure function over a [`History`] returning what it
//! checked and every violation, so each can be tested on small hand-made histories.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{BuildResult, Decision, History, SlackCall};

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: &'static str,
    /// How many things (deliveries, builds, parameters, ...) were checked.
    pub checked: usize,
    pub violations: Vec<String>,
}

/// Every invariant, in the order.
pub fn check_all(history: &History) -> Vec<Outcome> {
    vec![
        stored_and_decided_once(history),
        no_double_start(history),
        one_terminal_state(history),
        parameters_follow_push_order(history),
        one_message_and_matching_status(history),
        nothing_parked_but_poison(history),
        lost_builds_re_run_once(history),
    ]
}

/// Every webhook answered 2xx is stored once and decided once (one skip, or one build per
/// architecture; re-runs are not decisions).
pub fn stored_and_decided_once(history: &History) -> Outcome {
    let mut violations = Vec::new();
    let mut stored: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &history.stored_webhooks {
        *stored.entry(id.as_str()).or_default() += 1;
    }
    let mut requested: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut skipped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for decision in &history.decisions {
        match decision {
            Decision::Requested {
                event_id,
                delivery_id,
                retry_of,
                ..
            } if retry_of.is_empty() => {
                requested
                    .entry(delivery_id)
                    .or_default()
                    .insert(event_id.as_str());
            }
            Decision::Requested { .. } => {}
            Decision::Skipped {
                event_id,
                delivery_id,
            } => {
                skipped
                    .entry(delivery_id)
                    .or_default()
                    .insert(event_id.as_str());
            }
        }
    }
    for sent in &history.sent {
        let id = sent.delivery_id.as_str();
        if !sent.accepted {
            violations.push(format!("delivery {id}: never answered 2xx"));
            continue;
        }
        match stored.get(id).copied().unwrap_or(0) {
            1 => {}
            0 => violations.push(format!("delivery {id}: answered 2xx but not stored")),
            n => violations.push(format!("delivery {id}: stored {n} times")),
        }
        let builds = requested.get(id).map_or(0, BTreeSet::len);
        let skips = skipped.get(id).map_or(0, BTreeSet::len);
        match (builds, skips) {
            (0, 0) => violations.push(format!("delivery {id}: never decided")),
            (0, 1) | (_, 0) => {}
            (0, n) => violations.push(format!("delivery {id}: skipped {n} times")),
            (b, s) => violations.push(format!(
                "delivery {id}: both built ({b} requests) and skipped ({s} skips)"
            )),
        }
    }
    Outcome {
        name: "every webhook answered 2xx is stored once and decided once",
        checked: history.sent.len(),
        violations,
    }
}

/// No (delivery, architecture) started two builds: neither two first-attempt `BuildRequested`
/// with different build ids, nor two runner builds of one request id, nor two re-runs of one
/// lost build.
pub fn no_double_start(history: &History) -> Outcome {
    let mut violations = Vec::new();
    let mut firsts: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut reruns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for decision in &history.decisions {
        if let Decision::Requested {
            delivery_id,
            build_id,
            architecture,
            retry_of,
            ..
        } = decision
        {
            if retry_of.is_empty() {
                firsts
                    .entry((delivery_id, architecture))
                    .or_default()
                    .insert(build_id);
            } else {
                reruns.entry(retry_of).or_default().insert(build_id);
            }
        }
    }
    for ((delivery, arch), builds) in &firsts {
        if builds.len() > 1 {
            violations.push(format!(
                "delivery {delivery} ({arch}) requested {} builds: {builds:?}",
                builds.len()
            ));
        }
    }
    for (lost, builds) in &reruns {
        if builds.len() > 1 {
            violations.push(format!(
                "lost build {lost} re-run {} times: {builds:?}",
                builds.len()
            ));
        }
    }
    let mut by_request: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for build in &history.runner_builds {
        by_request
            .entry(&build.request_id)
            .or_default()
            .insert(&build.build_id);
    }
    for (request, builds) in &by_request {
        if builds.len() > 1 {
            violations.push(format!(
                "request {request} started {} runner builds: {builds:?}",
                builds.len()
            ));
        }
    }
    Outcome {
        name: "no (delivery, architecture) ever started two builds",
        checked: firsts.len() + by_request.len(),
        violations,
    }
}

/// The CodeBuild name of a result, as the runner records it.
fn codebuild_name(result: BuildResult) -> &'static str {
    match result {
        BuildResult::Succeeded => "SUCCEEDED",
        BuildResult::Failed => "FAILED",
        BuildResult::Fault => "FAULT",
        BuildResult::Stopped => "STOPPED",
        BuildResult::TimedOut => "TIMED_OUT",
        BuildResult::Other => "?",
    }
}

/// Every build (requested, or started by the runner) reached exactly one terminal state, and
/// the runner's record agrees with it.
pub fn one_terminal_state(history: &History) -> Outcome {
    let mut violations = Vec::new();
    let mut builds: BTreeSet<&str> = history
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Requested { build_id, .. } => Some(build_id.as_str()),
            Decision::Skipped { .. } => None,
        })
        .collect();
    builds.extend(history.runner_builds.iter().map(|b| b.build_id.as_str()));
    let mut terminal: BTreeMap<&str, BTreeMap<&str, BuildResult>> = BTreeMap::new();
    for c in &history.completions {
        terminal
            .entry(&c.build_id)
            .or_default()
            .insert(&c.event_id, c.result);
    }
    for build in &builds {
        let events = terminal.get(build);
        match events.map_or(0, BTreeMap::len) {
            0 => violations.push(format!("build {build}: no terminal state")),
            1 => {}
            n => violations.push(format!(
                "build {build}: {n} terminal events {:?}",
                events.map(|e| e.values().collect::<Vec<_>>())
            )),
        }
    }
    for record in &history.runner_builds {
        let Some(result) = terminal
            .get(record.build_id.as_str())
            .and_then(|e| e.values().next())
        else {
            continue;
        };
        match &record.final_status {
            Some(status) if status == codebuild_name(*result) => {}
            other => violations.push(format!(
                "build {}: the runner recorded {other:?}, the event log {result:?}",
                record.build_id
            )),
        }
    }
    Outcome {
        name: "every build reached exactly one terminal state",
        checked: builds.len(),
        violations,
    }
}

/// Every parameter's SSM history never moves backwards in GitHub's push order and ends on
/// the newest push whose build did not fail by its own fault.
pub fn parameters_follow_push_order(history: &History) -> Outcome {
    let mut violations = Vec::new();
    for (name, expected) in &history.expectations {
        let values = history.ssm.get(name).map(Vec::as_slice).unwrap_or_default();
        let mut last: Option<usize> = None;
        for value in values {
            let Some(index) = expected
                .values_in_push_order
                .iter()
                .position(|v| v == value)
            else {
                violations.push(format!(
                    "{name}: {value:?} is no value of the lane's pushes"
                ));
                continue;
            };
            if let Some(previous) = last
                && index < previous
            {
                violations.push(format!(
                    "{name}: moved back from push {previous} to push {index} of the lane"
                ));
            }
            last = Some(index);
        }
        let end = values.last();
        if end != expected.final_value.as_ref() {
            violations.push(format!(
                "{name}: ends on {end:?}, expected {:?}",
                expected.final_value
            ));
        }
    }
    for name in history.ssm.keys() {
        if !history.expectations.contains_key(name) {
            violations.push(format!("{name}: written, but no push publishes it"));
        }
    }
    Outcome {
        name: "every SSM parameter follows push order and ends on the newest good push",
        checked: history.expectations.len(),
        violations,
    }
}

/// Each build has exactly one Slack message (one post, then updates of it), and the last
/// commit status of each (commit, architecture) matches its newest build's result.
pub fn one_message_and_matching_status(history: &History) -> Outcome {
    let mut violations = Vec::new();
    let mut posts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut updates: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for call in &history.slack {
        match call {
            SlackCall::Post { ts, build } => posts.entry(build).or_default().push(ts),
            SlackCall::Update { ts, build } => {
                updates.entry(build).or_default().insert(ts);
            }
        }
    }
    let results: BTreeMap<&str, BuildResult> = history
        .completions
        .iter()
        .map(|c| (c.build_id.as_str(), c.result))
        .collect();
    // (repository, commit, architecture) -> builds, and which builds were re-run.
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    let mut rerun: BTreeSet<&str> = BTreeSet::new();
    let mut builds = 0;
    for decision in &history.decisions {
        let Decision::Requested {
            build_id,
            architecture,
            repository,
            commit,
            retry_of,
            ..
        } = decision
        else {
            continue;
        };
        builds += 1;
        groups
            .entry((repository, commit, architecture))
            .or_default()
            .push(build_id);
        if !retry_of.is_empty() {
            rerun.insert(retry_of);
        }
        let build_posts = posts.get(build_id.as_str()).map(Vec::as_slice);
        match build_posts.unwrap_or_default() {
            [ts] => {
                if let Some(stray) = updates
                    .get(build_id.as_str())
                    .and_then(|u| u.iter().find(|t| *t != ts))
                {
                    violations.push(format!(
                        "build {build_id}: updated message {stray}, posted {ts}"
                    ));
                }
            }
            [] => violations.push(format!("build {build_id}: no Slack message")),
            many => violations.push(format!(
                "build {build_id}: {} Slack messages {many:?}",
                many.len()
            )),
        }
    }
    let mut last_status: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
    for write in &history.statuses {
        last_status.insert(
            (&write.repository, &write.sha, &write.context),
            &write.state,
        );
    }
    for ((repository, commit, arch), group) in &groups {
        let expected: BTreeSet<&str> = group
            .iter()
            .filter(|b| !rerun.contains(*b))
            .filter_map(|b| results.get(b).map(|r| r.status_state()))
            .collect();
        if expected.is_empty() {
            continue; // no terminal state: reported by one_terminal_state
        }
        // The notifier's default context, `prx-ci/{arch}`.
        let context = format!("prx-ci/{arch}");
        match last_status.get(&(*repository, *commit, context.as_str())) {
            Some(state) if expected.contains(state) => {}
            Some(state) => violations.push(format!(
                "{repository}@{commit} {context}: final status {state}, expected {expected:?}"
            )),
            None => violations.push(format!("{repository}@{commit} {context}: no commit status")),
        }
    }
    Outcome {
        name: "one Slack message per build, final commit status matches the result",
        checked: builds,
        violations,
    }
}

/// Nothing is left parked except the deliberately poisoned messages.
pub fn nothing_parked_but_poison(history: &History) -> Outcome {
    let violations = history
        .parked
        .iter()
        .filter(|p| !history.poisoned.contains(&p.data))
        .map(|p| {
            format!(
                "consumer {} parked a message of {} that was not poisoned: {}",
                p.consumer, p.subject, p.error
            )
        })
        .collect();
    Outcome {
        name: "nothing parked except deliberately poisoned messages",
        checked: history.parked.len(),
        violations,
    }
}

/// Every first attempt lost to the system's own failure (`FAULT`) was re-run exactly once
/// (`[dispatcher] reruns = 1`), and no build that failed by its own fault (`FAILED`) or
/// succeeded was re-run.
pub fn lost_builds_re_run_once(history: &History) -> Outcome {
    let mut violations = Vec::new();
    let results: BTreeMap<&str, BuildResult> = history
        .completions
        .iter()
        .map(|c| (c.build_id.as_str(), c.result))
        .collect();
    let mut reruns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut firsts = Vec::new();
    for decision in &history.decisions {
        if let Decision::Requested {
            build_id, retry_of, ..
        } = decision
        {
            if retry_of.is_empty() {
                firsts.push(build_id.as_str());
            } else {
                reruns.entry(retry_of).or_default().insert(build_id);
            }
        }
    }
    let mut lost = 0;
    for build in &firsts {
        let count = reruns.get(build).map_or(0, BTreeSet::len);
        match results.get(build) {
            Some(BuildResult::Fault) => {
                lost += 1;
                if count == 0 {
                    violations.push(format!("build {build}: lost (FAULT) and never re-run"));
                }
            }
            Some(other) if count > 0 && *other != BuildResult::Fault => {
                violations.push(format!("build {build}: {other:?}, yet re-run"));
            }
            _ => {}
        }
    }
    Outcome {
        name: "every build lost to the system re-run once, no other build re-run",
        checked: lost,
        violations,
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
