//! Each push's timeline through the system (pure): what the run observed of it, the stages
//! between those moments, every push accounted for (or the run fails), and the p50/p99/max of
//! each stage over a phase.

use prx_ci_shared::testing::bench::percentile;
use time::OffsetDateTime;

/// How a push's publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `PublishApplied` of this value.
    Applied { value: String },
    /// `PublishSkipped` because a newer push of the repository was published first (correct,
    /// but this push's value never reaches the parameter).
    Superseded,
    /// `PublishSkipped` for any other reason (a failure of the run).
    Skipped { reason: String },
}

/// What the run observed of one push; each moment is `None` until seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The bench started sending the webhook.
    pub sent: Option<OffsetDateTime>,
    /// The ingress answered 202 (received by the bench).
    pub accepted: Option<OffsetDateTime>,
    /// `BuildRequested` stored in JetStream (the message's stream timestamp).
    pub requested: Option<OffsetDateTime>,
    /// The fake CodeBuild received `StartBuild`.
    pub backend_started: Option<OffsetDateTime>,
    /// The fake CodeBuild's completion report was stored (JetStream acknowledged it).
    pub backend_completed: Option<OffsetDateTime>,
    /// `BuildStarted` stored.
    pub started: Option<OffsetDateTime>,
    /// `BuildCompleted` stored.
    pub completed: Option<OffsetDateTime>,
    /// `PublishApplied` / `PublishSkipped`.
    pub outcome: Option<Outcome>,
    /// The fake SSM received the `PutParameter` of this push's parameter with this push's value,
    /// and that value.
    pub written: Option<(OffsetDateTime, String)>,
    /// The fake Slack received the first post or update of this build's message that shows the
    /// parameter set to this push's value.
    pub slack_shown: Option<OffsetDateTime>,
}

/// The stages of one published push, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stages {
    /// Webhook sent -> 202 received.
    pub ingress: f64,
    /// 202 -> `BuildRequested` stored.
    pub to_requested: f64,
    /// `BuildRequested` -> `BuildStarted` stored.
    pub to_started: f64,
    /// The build itself: `StartBuild` received by the fake CodeBuild -> its completion report
    /// stored.
    pub build: f64,
    /// Completion reports handed on for storing -> `BuildCompleted` stored.
    pub to_completed: f64,
    /// `BuildCompleted` -> `PutParameter` received by the fake SSM.
    pub to_written: f64,
    /// `PutParameter` -> the Slack message showing the value received by the fake Slack.
    pub to_slack: f64,
    /// Webhook sent -> `PutParameter` received.
    pub webhook_to_parameter: f64,
    /// Webhook sent -> Slack message showing the value.
    pub webhook_to_slack: f64,
    /// `webhook_to_parameter` minus `build`: the time the push spent in the services (and
    /// NATS, and the instant fakes) rather than in the build backend.
    pub own: f64,
}

fn ms(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

/// What one push lacked, for the failure message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unaccounted {
    pub commit: String,
    pub why: String,
}

impl Observed {
    /// The stages of a push whose value was published, `Ok(None)` for a superseded push, or
    /// what it lacks.
    pub fn stages(&self, commit: &str, expected_value: &str) -> Result<Option<Stages>, String> {
        let need = |t: Option<OffsetDateTime>, what: &str| t.ok_or_else(|| format!("no {what}"));
        let sent = need(self.sent, "send")?;
        let accepted = need(self.accepted, "202 from the ingress")?;
        let requested = need(self.requested, "BuildRequested")?;
        let backend_started = need(self.backend_started, "StartBuild at the fake CodeBuild")?;
        let backend_completed = need(self.backend_completed, "completion report stored")?;
        let started = need(self.started, "BuildStarted")?;
        let completed = need(self.completed, "BuildCompleted")?;
        match &self.outcome {
            None => return Err("no PublishApplied or PublishSkipped".to_owned()),
            Some(Outcome::Superseded) => return Ok(None),
            Some(Outcome::Skipped { reason }) => return Err(format!("publish skipped: {reason}")),
            Some(Outcome::Applied { value }) if value != expected_value => {
                return Err(format!(
                    "PublishApplied of {value:?}, expected {expected_value:?} (commit {commit})"
                ));
            }
            Some(Outcome::Applied { .. }) => {}
        }
        let (written, value) = self
            .written
            .clone()
            .ok_or_else(|| "no PutParameter of its value at the fake SSM".to_owned())?;
        if value != expected_value {
            return Err(format!(
                "parameter written with {value:?}, expected {expected_value:?}"
            ));
        }
        let slack = need(self.slack_shown, "Slack message showing the value")?;
        let webhook_to_parameter = ms(sent, written);
        let build = ms(backend_started, backend_completed);
        Ok(Some(Stages {
            ingress: ms(sent, accepted),
            to_requested: ms(accepted, requested),
            to_started: ms(requested, started),
            build,
            to_completed: ms(backend_completed, completed),
            to_written: ms(completed, written),
            to_slack: ms(written, slack),
            webhook_to_parameter,
            webhook_to_slack: ms(sent, slack),
            own: webhook_to_parameter - build,
        }))
    }
}

/// Every push of a phase, accounted for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounting {
    /// Stages of every push whose value reached its parameter.
    pub published: Vec<Stages>,
    /// Pushes a newer push of their repository overtook (skipped, correctly, by the fence).
    pub superseded: usize,
    /// Pushes that are neither: the run failed.
    pub unaccounted: Vec<Unaccounted>,
}

/// Accounts for every push: `(commit, expected value, what was observed)`.
pub fn account<'a>(
    pushes: impl IntoIterator<Item = (&'a str, String, &'a Observed)>,
) -> Accounting {
    let mut out = Accounting::default();
    for (commit, expected, observed) in pushes {
        match observed.stages(commit, &expected) {
            Ok(Some(stages)) => out.published.push(stages),
            Ok(None) => out.superseded += 1,
            Err(why) => out.unaccounted.push(Unaccounted {
                commit: commit.to_owned(),
                why,
            }),
        }
    }
    out
}

/// p50 / p99 / max of a stage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The nearest-rank summary of `samples` (`None` when empty).
pub fn summarize(samples: impl IntoIterator<Item = f64>) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.into_iter().collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        n: sorted.len(),
        p50: percentile(&sorted, 0.50),
        p99: percentile(&sorted, 0.99),
        max: sorted[sorted.len() - 1],
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} / p99 {:.1} / max {:.1} ms",
            self.p50, self.p99, self.max
        )
    }
}

/// One phase's verdict for the sustained rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseVerdict {
    pub rate: u32,
    /// Every push was published (or superseded) before the phase's drain deadline.
    pub kept_up: bool,
    /// p99 of webhook sent -> parameter written.
    pub p99_webhook_to_parameter: f64,
}

/// The highest rate whose phase and every slower one kept up with p99 webhook -> parameter
/// under `limit_ms`, and the first rate that did not (which bounds it), each `None` when there
/// is none.
pub fn sustained(verdicts: &[PhaseVerdict], limit_ms: f64) -> (Option<u32>, Option<u32>) {
    let mut sorted = verdicts.to_vec();
    sorted.sort_by_key(|v| v.rate);
    let mut best = None;
    for v in sorted {
        if v.kept_up && v.p99_webhook_to_parameter < limit_ms {
            best = Some(v.rate);
        } else {
            return (best, Some(v.rate));
        }
    }
    (best, None)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn at(ms: i64) -> Option<OffsetDateTime> {
        Some(datetime!(2026-12-01 05:00 UTC) + time::Duration::milliseconds(ms))
    }

    fn complete() -> Observed {
        Observed {
            sent: at(0),
            accepted: at(2),
            requested: at(5),
            backend_started: at(4),
            backend_completed: at(7),
            started: at(8),
            completed: at(10),
            outcome: Some(Outcome::Applied {
                value: "bench-c".into(),
            }),
            written: Some((at(14).unwrap(), "bench-c".into())),
            slack_shown: at(20),
        }
    }

    #[test]
    fn stages_and_own_time_exclude_the_build() {
        let s = complete().stages("c", "bench-c").unwrap().unwrap();
        assert_eq!(s.ingress, 2.0);
        assert_eq!(s.to_requested, 3.0);
        assert_eq!(s.to_started, 3.0);
        assert_eq!(s.build, 3.0);
        assert_eq!(s.to_completed, 3.0);
        assert_eq!(s.to_written, 4.0);
        assert_eq!(s.to_slack, 6.0);
        assert_eq!(s.webhook_to_parameter, 14.0);
        assert_eq!(s.webhook_to_slack, 20.0);
        assert_eq!(s.own, 11.0);
    }

    #[test]
    fn a_push_without_its_value_in_the_parameter_is_unaccounted() {
        let mut wrong = complete();
        wrong.written = Some((at(14).unwrap(), "bench-other".into()));
        let mut unwritten = complete();
        unwritten.written = None;
        let mut lost = complete();
        lost.outcome = None;
        let mut superseded = complete();
        superseded.outcome = Some(Outcome::Superseded);
        superseded.written = None;
        let mut refused = complete();
        refused.outcome = Some(Outcome::Skipped {
            reason: "artifact missing".into(),
        });
        let ok = complete();
        let all = [
            ("w", &wrong),
            ("u", &unwritten),
            ("l", &lost),
            ("s", &superseded),
            ("r", &refused),
            ("c", &ok),
        ];
        let acc = account(all.iter().map(|(c, o)| (*c, "bench-c".to_owned(), *o)));
        assert_eq!(acc.published.len(), 1);
        assert_eq!(acc.superseded, 1);
        let whys: Vec<_> = acc
            .unaccounted
            .iter()
            .map(|u| (u.commit.as_str(), u.why.as_str()))
            .collect();
        assert_eq!(whys.len(), 4, "{whys:?}");
        assert!(whys[0].1.contains("bench-other"), "{whys:?}");
        assert!(whys[1].1.contains("no PutParameter"), "{whys:?}");
        assert!(whys[2].1.contains("no PublishApplied"), "{whys:?}");
        assert!(whys[3].1.contains("artifact missing"), "{whys:?}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=100).map(f64::from)).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        let one = summarize([7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(summarize([]).is_none());
        assert_eq!(s.to_string(), "p50 50.0 / p99 99.0 / max 100.0 ms");
    }

    #[test]
    fn the_sustained_rate_is_bounded_by_the_first_rate_that_fails() {
        let v = |rate, kept_up, p99| PhaseVerdict {
            rate,
            kept_up,
            p99_webhook_to_parameter: p99,
        };
        assert_eq!(
            sustained(
                &[v(200, true, 150.0), v(50, true, 20.0), v(100, true, 40.0)],
                100.0
            ),
            (Some(100), Some(200))
        );
        assert_eq!(
            sustained(
                &[v(50, true, 20.0), v(100, false, 40.0), v(200, true, 30.0)],
                100.0
            ),
            (Some(50), Some(100))
        );
        assert_eq!(sustained(&[v(50, true, 20.0)], 100.0), (Some(50), None));
        assert_eq!(sustained(&[v(50, true, 120.0)], 100.0), (None, Some(50)));
    }
}
