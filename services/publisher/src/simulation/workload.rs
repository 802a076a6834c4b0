//! Schedules of pushes to one branch and when their builds' completion reports reach the
//! publisher, under realistic or adversarial timings; and the last-writer-wins model of the
//! original (every successful completion writes, in arrival order) with its verdict.

use std::time::Duration;

use super::rng::Rng;
use crate::fence::{Position, Publication};

/// When builds complete.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    /// Pushes as a Poisson process (`mean_push_gap`), each build's duration log-normal around
    /// `median_build` (`sigma` of the underlying normal), drawn per build.
    Realistic {
        mean_push_gap: Duration,
        median_build: Duration,
        sigma: f64,
    },
    /// Every completion report arrives within `window`, in uniformly random order (the old
    /// generator's "uniform shuffle" is `window` = 0 order-wise).
    Burst { window: Duration },
}

/// One build of a push.
#[derive(Debug, Clone)]
pub struct Build {
    pub publication: Publication,
    pub succeeded: bool,
    /// Virtual time its completion report arrives.
    pub completes_at: Duration,
}

/// A completion report reaching the publisher (a build may be reported twice).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub build: usize,
    pub at: Duration,
}

/// The pushes of one schedule.
#[derive(Debug, Clone)]
pub struct Workload {
    pub builds: Vec<Build>,
    /// Sorted by time.
    pub deliveries: Vec<Delivery>,
}

impl Workload {
    /// 3 to 6 pushes; 40 % build two architectures (x86_64 primary), else 15 % aarch64 only;
    /// a quarter of the builds fail; a quarter of the reports are sent twice.
    pub fn generate(rng: &mut Rng, timing: Timing) -> Self {
        let pushes = rng.between(3, 6);
        let mut builds = Vec::new();
        let mut pushed_at = Duration::ZERO;
        for push in 0..pushes {
            if let Timing::Realistic { mean_push_gap, .. } = timing {
                pushed_at += rng.exponential(mean_push_gap);
            }
            let arches: &[bool] = if rng.chance(0.4) {
                &[true, false]
            } else if rng.chance(0.15) {
                &[false]
            } else {
                &[true]
            };
            let push_sequence = 10 * (push + 1);
            for &primary in arches {
                let arch = if primary { "x86_64" } else { "aarch64" };
                let build_id = format!("app:{push_sequence}-{arch}");
                let completes_at = match timing {
                    Timing::Realistic {
                        median_build,
                        sigma,
                        ..
                    } => pushed_at + rng.log_normal(median_build, sigma),
                    Timing::Burst { window } => Duration::from_millis(
                        rng.below(u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)),
                    ),
                };
                builds.push(Build {
                    publication: Publication {
                        position: Position::new(push_sequence, primary),
                        value: format!("v{push_sequence}-{arch}"),
                        commit: format!("c{push_sequence}"),
                        build_id,
                        ordering_key: "PRX/app@main".into(),
                        architecture: arch.into(),
                    },
                    succeeded: rng.chance(0.75),
                    completes_at,
                });
            }
        }
        let mut deliveries: Vec<Delivery> = builds
            .iter()
            .enumerate()
            .map(|(build, b)| Delivery {
                build,
                at: b.completes_at,
            })
            .collect();
        for (build, b) in builds.iter().enumerate() {
            if rng.chance(0.25) {
                let later = Duration::from_millis(rng.below(30_000));
                deliveries.push(Delivery {
                    build,
                    at: b.completes_at + later,
                });
            }
        }
        // Equal times (a burst of width 0) arrive in random order.
        rng.shuffle(&mut deliveries);
        deliveries.sort_by_key(|d| d.at);
        Self { builds, deliveries }
    }

    /// The position a value stands for.
    pub fn position_of(&self, value: &str) -> Option<Position> {
        self.builds
            .iter()
            .find(|b| b.publication.value == value)
            .map(|b| b.publication.position)
    }

    /// The original: every successful completion report writes, in arrival order.
    pub fn last_writer_wins(&self) -> Vec<Position> {
        self.deliveries
            .iter()
            .map(|d| &self.builds[d.build])
            .filter(|b| b.succeeded)
            .map(|b| b.publication.position)
            .collect()
    }

    /// The newest successful push's position (primary architecture if it succeeded).
    pub fn expected_final(&self) -> Option<Position> {
        self.builds
            .iter()
            .filter(|b| b.succeeded)
            .map(|b| b.publication.position)
            .max()
    }
}

/// What a history of written positions did wrong.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// A value from an older push was written after a newer one.
    pub went_back_in_push_order: bool,
    /// Within one push, the non-primary value was written after the primary one.
    pub went_back_in_arch_order: bool,
    /// The same position was written twice (CD triggered twice).
    pub rewrote: bool,
    /// The last value is not the expected one.
    pub wrong_final: bool,
}

impl Verdict {
    pub fn of(history: &[Position], expected_final: Option<Position>) -> Self {
        let mut verdict = Self::default();
        for pair in history.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.push_sequence < a.push_sequence {
                verdict.went_back_in_push_order = true;
            } else if b.push_sequence == a.push_sequence && b.arch_rank < a.arch_rank {
                verdict.went_back_in_arch_order = true;
            } else if a == b {
                verdict.rewrote = true;
            }
        }
        verdict.wrong_final = history.last().copied() != expected_final;
        verdict
    }

    /// Any ordering fault (rewrites are a cost, not a regression).
    pub fn regressed(self) -> bool {
        self.went_back_in_push_order || self.went_back_in_arch_order || self.wrong_final
    }
}

/// Last-writer-wins figures over many schedules of one timing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LwwFigures {
    pub schedules: u64,
    /// Schedules where some push was written after a newer one.
    pub went_back_in_push_order: u64,
    pub went_back_in_arch_order: u64,
    pub wrong_final: u64,
    /// Any of the three.
    pub regressed: u64,
}

impl LwwFigures {
    /// Runs `schedules` schedules from `seed` through the last-writer-wins model.
    pub fn measure(seed: u64, schedules: u64, timing: Timing) -> Self {
        let mut rng = Rng::new(seed);
        let mut figures = Self {
            schedules,
            ..Self::default()
        };
        for _ in 0..schedules {
            let workload = Workload::generate(&mut rng, timing);
            let verdict = Verdict::of(&workload.last_writer_wins(), workload.expected_final());
            figures.went_back_in_push_order += u64::from(verdict.went_back_in_push_order);
            figures.went_back_in_arch_order += u64::from(verdict.went_back_in_arch_order);
            figures.wrong_final += u64::from(verdict.wrong_final);
            figures.regressed += u64::from(verdict.regressed());
        }
        figures
    }

    /// `part` of the schedules, in percent.
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn percent(&self, part: u64) -> f64 {
        100.0 * part as f64 / self.schedules.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_regress_often_and_widely_spaced_pushes_rarely() {
        let burst = LwwFigures::measure(
            1,
            2_000,
            Timing::Burst {
                window: Duration::ZERO,
            },
        );
        let calm = LwwFigures::measure(
            1,
            2_000,
            Timing::Realistic {
                mean_push_gap: Duration::from_secs(24 * 3600),
                median_build: Duration::from_secs(600),
                sigma: 0.3,
            },
        );
        assert!(
            burst.percent(burst.went_back_in_push_order) > 50.0,
            "{burst:?}"
        );
        assert!(calm.percent(calm.went_back_in_push_order) < 2.0, "{calm:?}");
    }

    #[test]
    fn verdicts_name_each_fault() {
        let p = |s, primary| Position::new(s, primary);
        let v = Verdict::of(&[p(2, true), p(1, true)], Some(p(2, true)));
        assert!(v.went_back_in_push_order && v.wrong_final);
        let v = Verdict::of(&[p(2, true), p(2, false)], Some(p(2, true)));
        assert!(v.went_back_in_arch_order && !v.went_back_in_push_order);
        let v = Verdict::of(&[p(1, true), p(2, true)], Some(p(2, true)));
        assert!(!v.regressed() && !v.rewrote);
    }
}
