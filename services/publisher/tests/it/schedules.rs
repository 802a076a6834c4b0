//! The randomized schedule test: many schedules of several pushes to one branch, builds
//! completing in random order (some failing, some reported twice), two publisher replicas on
//! one durable, faults injected between the fence claim and the write; after each schedule the
//! parameter's SSM history (GetParameterHistory, in moto) must only ever go up in push order
//! and end on the newest successful push (primary architecture). The same schedules replayed
//! through a last-writer-wins model of the original show what the fence prevents.

use std::collections::HashMap;

use prx_ci_proto::v1;
use prx_ci_shared::domain::Architecture;

use crate::utils::{BuildSpec, Fault, SsmReplicas, settle, ssm_history};

/// Schedules per run; each has 3 to 6 pushes.
const SCHEDULES: u64 = 60;
/// Seed of the schedules (override with `PRX_CI_SCHEDULE_SEED`).
const DEFAULT_SEED: u64 = 0x005e_edf3_4ce0;

/// Which schedules of the seed's stream run: `PRX_CI_SCHEDULES=<first>..<end>` (default
/// `0..60`). Schedule `i` is the same whatever the range (the ones before it are generated and
/// not run), so `PRX_CI_SCHEDULE_SEED=<seed> PRX_CI_SCHEDULES=<i>..<i+1>` replays one schedule
/// (its shape and faults; the interleaving of the real replicas is the machine's).
fn schedule_range() -> std::ops::Range<u64> {
    let Ok(range) = std::env::var("PRX_CI_SCHEDULES") else {
        return 0..SCHEDULES;
    };
    range
        .split_once("..")
        .and_then(|(a, b)| Some(a.parse().ok()?..b.parse().ok()?))
        .unwrap_or_else(|| panic!("PRX_CI_SCHEDULES={range:?} is not <first>..<end>"))
}

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug)]
struct Schedule {
    parameter: String,
    builds: Vec<BuildSpec>,
    /// Completion reports in order: (build index, report id). A build may appear twice.
    deliveries: Vec<(usize, String)>,
    faults: Vec<(usize, Fault)>,
}

impl Schedule {
    fn generate(index: u64, rng: &mut Rng) -> Self {
        let parameter = format!("/prx/stag/Spire/Sched{index}/pkg/docker-image-tag");
        let pushes = 3 + rng.below(4);
        let mut builds = Vec::new();
        let mut seq = 1_000 * (index + 1);
        for _ in 0..pushes {
            seq += 1 + rng.below(5);
            let arches: &[Architecture] = if rng.chance(40) {
                &[Architecture::X86_64, Architecture::Aarch64]
            } else if rng.chance(15) {
                &[Architecture::Aarch64]
            } else {
                &[Architecture::X86_64]
            };
            for &arch in arches {
                let mut build = BuildSpec::ecr(seq, arch, &[&parameter]);
                if !rng.chance(75) {
                    build = build.with_status(if rng.chance(50) {
                        v1::BuildStatus::Failed
                    } else {
                        v1::BuildStatus::Stopped
                    });
                }
                builds.push(build);
            }
        }
        // Random completion order, plus duplicate reports of some builds anywhere.
        let mut deliveries: Vec<(usize, String)> =
            (0..builds.len()).map(|i| (i, "a".to_owned())).collect();
        for i in 0..builds.len() {
            if rng.chance(25) {
                deliveries.push((i, "dup".to_owned()));
            }
        }
        for i in (1..deliveries.len()).rev() {
            let j = usize::try_from(rng.below(i as u64 + 1)).unwrap();
            deliveries.swap(i, j);
        }
        let mut faults = Vec::new();
        for (i, build) in builds.iter().enumerate() {
            if build.status == v1::BuildStatus::Succeeded && rng.chance(20) {
                let fault = match rng.below(3) {
                    0 => Fault::Refused,
                    1 => Fault::AnswerLostAfterWrite,
                    _ => Fault::CrashedBeforeWrite,
                };
                faults.push((i, fault));
            }
        }
        Self {
            parameter,
            builds,
            deliveries,
            faults,
        }
    }

    /// (push sequence, arch rank) of each value a build of this schedule can write.
    fn positions(&self) -> HashMap<String, (u64, u8)> {
        self.builds
            .iter()
            .map(|b| {
                (
                    b.value(),
                    (b.push_sequence, u8::from(b.arch == Architecture::X86_64)),
                )
            })
            .collect()
    }

    /// The newest push with a successful build, primary architecture if it succeeded.
    fn expected_final(&self) -> Option<String> {
        self.builds
            .iter()
            .filter(|b| b.status == v1::BuildStatus::Succeeded)
            .max_by_key(|b| (b.push_sequence, u8::from(b.arch == Architecture::X86_64)))
            .map(BuildSpec::value)
    }

    /// The original: every successful completion writes, in completion order.
    fn last_writer_wins(&self) -> Vec<String> {
        self.deliveries
            .iter()
            .map(|(i, _)| &self.builds[*i])
            .filter(|b| b.status == v1::BuildStatus::Succeeded)
            .map(BuildSpec::value)
            .collect()
    }
}

/// What a history did wrong.
#[derive(Debug, Default, Clone, Copy)]
struct Verdict {
    /// A value from an older push was written after a newer one.
    went_back_in_push_order: bool,
    /// Within one push, the non-primary value was written after the primary one.
    went_back_in_arch_order: bool,
    /// The same value was written twice (CD triggered twice).
    rewrote_a_value: bool,
    /// The last value is not the newest successful push's (primary) value.
    wrong_final: bool,
}

impl Verdict {
    fn of(
        history: &[String],
        positions: &HashMap<String, (u64, u8)>,
        expected: Option<&str>,
    ) -> Self {
        let mut verdict = Self::default();
        for pair in history.windows(2) {
            let (a, b) = (positions[&pair[0]], positions[&pair[1]]);
            if b.0 < a.0 {
                verdict.went_back_in_push_order = true;
            } else if b.0 == a.0 && b.1 < a.1 {
                verdict.went_back_in_arch_order = true;
            } else if b == a {
                verdict.rewrote_a_value = true;
            }
        }
        verdict.wrong_final = history.last().map(String::as_str) != expected;
        verdict
    }

    fn any(self) -> bool {
        self.went_back_in_push_order
            || self.went_back_in_arch_order
            || self.rewrote_a_value
            || self.wrong_final
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fence_keeps_every_schedule_in_push_order_where_last_writer_wins_regresses() {
    let seed = std::env::var("PRX_CI_SCHEDULE_SEED").map_or(DEFAULT_SEED, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("PRX_CI_SCHEDULE_SEED={s:?} is not a number"))
    });
    let range = schedule_range();
    let full = range.end.saturating_sub(range.start) >= SCHEDULES;
    let SsmReplicas {
        nats: _nats,
        moto: _moto,
        rt,
        log,
        client,
        store,
        replicas,
    } = SsmReplicas::start().await;

    let started = std::time::Instant::now();
    let mut rng = Rng(seed);
    let (mut pushes, mut deliveries, mut duplicates, mut failed, mut multi_arch) = (0, 0, 0, 0, 0);
    let (mut faults_injected, mut writes) = (0, 0);
    let mut lww_writes = 0;
    let (mut lww_push_regressions, mut lww_arch_flips, mut lww_wrong_final, mut lww_any) =
        (0, 0, 0, 0);
    let mut ran = 0_u64;
    for index in 0..range.end {
        let schedule = Schedule::generate(index, &mut rng);
        if !range.contains(&index) {
            continue;
        }
        ran += 1;
        let positions = schedule.positions();
        let expected = schedule.expected_final();
        for &(i, fault) in &schedule.faults {
            store.inject(&schedule.parameter, &schedule.builds[i].value(), fault);
        }
        faults_injected += schedule.faults.len();
        for (i, report) in &schedule.deliveries {
            rt.publisher
                .publish(&schedule.builds[*i].envelope(report))
                .await
                .unwrap();
        }
        let successful: Vec<(String, usize)> = schedule
            .builds
            .iter()
            .filter(|b| b.status == v1::BuildStatus::Succeeded)
            .map(|b| (b.build_id.clone(), 1))
            .collect();
        settle(&rt, &log, &successful).await;

        let history = ssm_history(&client, &schedule.parameter).await;
        let verdict = Verdict::of(&history, &positions, expected.as_deref());
        assert!(
            !verdict.any(),
            "schedule {index} (replay: PRX_CI_SCHEDULE_SEED={seed} PRX_CI_SCHEDULES={index}..{}): {verdict:?}\nhistory {history:#?}\nexpected {expected:?}\nschedule {schedule:#?}",
            index + 1
        );
        writes += history.len();
        let applied = log.applied();
        for value in &history {
            assert!(
                applied
                    .iter()
                    .any(|a| a.parameter == schedule.parameter && &a.value == value),
                "schedule {index}: {value} was written but no PublishApplied reports it"
            );
        }

        let lww_history = schedule.last_writer_wins();
        lww_writes += lww_history.len();
        let lww = Verdict::of(&lww_history, &positions, expected.as_deref());
        lww_push_regressions += usize::from(lww.went_back_in_push_order);
        lww_arch_flips += usize::from(lww.went_back_in_arch_order);
        lww_wrong_final += usize::from(lww.wrong_final);
        lww_any += usize::from(
            lww.went_back_in_push_order || lww.went_back_in_arch_order || lww.wrong_final,
        );

        pushes += schedule
            .builds
            .iter()
            .map(|b| b.push_sequence)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        multi_arch += schedule
            .builds
            .windows(2)
            .filter(|w| w[0].push_sequence == w[1].push_sequence)
            .count();
        deliveries += schedule.deliveries.len();
        duplicates += schedule
            .deliveries
            .iter()
            .filter(|(_, r)| r == "dup")
            .count();
        failed += schedule
            .builds
            .iter()
            .filter(|b| b.status != v1::BuildStatus::Succeeded)
            .count();
    }
    let fired = faults_injected - store.faults_left();
    println!(
        "schedule test (seed {seed:#x}, schedules {range:?}, {:.1?}): {ran} schedules, {pushes} pushes \
         ({multi_arch} multi-arch), {deliveries} completion reports ({duplicates} duplicates, \
         {failed} failed builds), 2 replicas, {fired} faults fired between claim and write \
         ({faults_injected} injected; the rest were superseded before writing), {writes} SSM writes",
        started.elapsed()
    );
    let total = |name: &str| -> f64 { replicas.iter().map(|r| r.metric(name)).sum() };
    let handled: Vec<f64> = replicas
        .iter()
        .map(|r| r.metric("prx_ci_consumer_messages_total"))
        .collect();
    println!(
        "fence: 0 of {ran} schedules regressed (push order, arch order, duplicate writes, final value); \
         messages handled per replica {handled:?}; claim waits {}, abandoned claims resolved {}, \
         CAS conflicts {}, writes that lost their claim {}",
        total("prx_ci_publisher_fence_waits_total"),
        total("prx_ci_publisher_fence_takeovers_total"),
        total("prx_ci_publisher_fence_conflicts_total"),
        total("prx_ci_publisher_fence_lost_after_write_total"),
    );
    assert_eq!(total("prx_ci_publisher_fence_lost_after_write_total"), 0.0);
    if full {
        assert!(
            handled.iter().all(|n| *n > 0.0),
            "both replicas consumed: {handled:?}"
        );
        assert!(
            total("prx_ci_publisher_fence_takeovers_total") > 0.0,
            "crash recovery exercised"
        );
    }
    println!(
        "last-writer-wins model: {lww_any} of {ran} schedules wrong: {lww_push_regressions} went back \
         in push order, {lww_arch_flips} wrote the non-primary arch after the primary, \
         {lww_wrong_final} ended on the wrong value; {lww_writes} SSM writes"
    );
    if full {
        assert!(
            fired >= 5,
            "too few faults fired ({fired}) to exercise recovery"
        );
        assert!(
            lww_push_regressions > 0,
            "the schedules never overlap: the test proves nothing"
        );
    }
    for replica in replicas {
        replica.stop().await;
    }
}
