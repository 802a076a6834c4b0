//! The seeded plan of a chaos run (pure): repositories, lanes, pushes, the order and copies
//! in which their webhooks are delivered, and the faults. One seed gives one plan; the timing
//! of the run around it (which message a kill interrupts) is not repeatable.

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

/// The owner of every repository of the run.
pub const OWNER: &str = "chaos";

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    pub seed: u64,
    /// Pushes and pull-request updates sent (each one webhook, plus duplicates).
    pub pushes: usize,
    /// Repositories (at least 1; the first builds two architectures).
    pub repos: usize,
    /// Share of built pushes whose build fails by its own fault (`exit 1`).
    pub fail_rate: f64,
    /// Share of deliveries sent twice under the same `X-GitHub-Delivery`.
    pub duplicate_rate: f64,
    /// How far a delivery may be moved ahead of older ones (out-of-order deliveries).
    pub reorder_window: usize,
}

impl PlanConfig {
    pub fn new(seed: u64, pushes: usize) -> Self {
        Self {
            seed,
            pushes,
            repos: 3,
            fail_rate: 0.12,
            duplicate_rate: 0.1,
            reorder_window: 4,
        }
    }
}

/// The branch or pull request a push belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LaneKind {
    /// The default branch: built and published.
    Main,
    /// Another branch: decided (skipped as a non-default branch), never built.
    Branch(String),
    /// A pull request: built, never published (no opt-in).
    PullRequest(u64),
}

impl LaneKind {
    /// The git branch holding the lane's commits.
    pub fn branch(&self) -> String {
        match self {
            Self::Main => "main".to_owned(),
            Self::Branch(name) => name.clone(),
            Self::PullRequest(n) => format!("pr-{n}"),
        }
    }

    /// The ref the runner fetches (`refs/pull/N/head` for pull requests, as on GitHub).
    pub fn git_ref(&self) -> String {
        match self {
            Self::PullRequest(n) => format!("refs/pull/{n}/head"),
            other => format!("refs/heads/{}", other.branch()),
        }
    }
}

/// One repository of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPlan {
    /// `chaos/app-N`.
    pub name: String,
    /// The SSM parameter its main-branch builds publish.
    pub parameter: String,
    /// Builds both architectures (x86_64 primary) instead of x86_64 only.
    pub both_architectures: bool,
}

/// One push (or pull-request update) and its build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPlan {
    /// Index in [`Plan::pushes`] (GitHub's order of the pushes over the whole run).
    pub id: usize,
    pub repo: usize,
    pub lane: LaneKind,
    /// Position in its lane (0 = first push of the lane).
    pub index_in_lane: usize,
    /// Seconds after the run's base time GitHub timed the push (distinct, increasing).
    pub pushed_offset: i64,
    /// The build exits 1 in its build phase (a user's own failure: never published, never
    /// re-run).
    pub fails: bool,
    /// How long the build's command sleeps, in milliseconds.
    pub build_ms: u64,
}

/// One webhook delivery, in the order the load generator sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPlan {
    /// `X-GitHub-Delivery` (a copy reuses it).
    pub delivery_id: String,
    pub push: usize,
    /// A duplicate of an earlier send of the same delivery.
    pub duplicate: bool,
}

/// The services the supervisor runs and kills.
pub const SERVICES: [&str; 5] = [
    "prx-ci-ingress",
    "prx-ci-dispatcher",
    "prx-ci-build-watcher",
    "prx-ci-publisher",
    "prx-ci-notifier",
];

/// Replicas of every service.
pub const REPLICAS: usize = 2;

/// One fault of the run's fault sequence; the run applies them one after another, a few
/// seconds apart, while the load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL replica `replica` of `SERVICES[service]`, then restart it.
    KillService { service: usize, replica: usize },
    /// Kill NATS node `node` (0..3) and restart it.
    RestartNode { node: usize },
    /// Kill the node leading `PRX_EVENTS` and restart it.
    RestartLeader,
    /// Stop the whole cluster for longer than the ingress store timeout, then restart it.
    ClusterOutage,
}

/// Everything a seed decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub repos: Vec<RepoPlan>,
    pub pushes: Vec<PushPlan>,
    pub deliveries: Vec<DeliveryPlan>,
    /// Applied in order until the load is sent; the cluster outage is in the middle.
    pub faults: Vec<Fault>,
}

impl Plan {
    pub fn new(config: PlanConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let repos: Vec<RepoPlan> = (0..config.repos.max(1))
            .map(|i| RepoPlan {
                name: format!("{OWNER}/app-{i}"),
                parameter: format!("/prx/stag/Spire/ChaosApp{i}/pkg/image"),
                both_architectures: i == 0,
            })
            .collect();

        let mut lane_counts: std::collections::HashMap<(usize, LaneKind), usize> =
            std::collections::HashMap::new();
        let mut pushes = Vec::with_capacity(config.pushes);
        for id in 0..config.pushes {
            let repo = rng.random_range(0..repos.len());
            let roll = rng.random_range(0..100u32);
            let lane = if roll < 55 {
                LaneKind::Main
            } else if roll < 70 {
                LaneKind::Branch(format!("feature-{}", rng.random_range(1..=2u32)))
            } else {
                LaneKind::PullRequest(rng.random_range(1..=2u64))
            };
            let count = lane_counts.entry((repo, lane.clone())).or_default();
            let index_in_lane = *count;
            *count += 1;
            let built = !matches!(lane, LaneKind::Branch(_));
            pushes.push(PushPlan {
                id,
                repo,
                lane,
                index_in_lane,
                pushed_offset: i64::try_from(id).unwrap_or(i64::MAX).saturating_mul(2),
                fails: built && rng.random_bool(config.fail_rate),
                build_ms: rng.random_range(100..=1000u64),
            });
        }

        let deliveries = deliveries(&mut rng, &config, &pushes);
        let faults = faults(&mut rng, deliveries.len());
        Self {
            seed: config.seed,
            repos,
            pushes,
            deliveries,
            faults,
        }
    }

    /// The pushes of one lane, oldest first.
    pub fn lane(&self, repo: usize, lane: &LaneKind) -> Vec<&PushPlan> {
        self.pushes
            .iter()
            .filter(|p| p.repo == repo && &p.lane == lane)
            .collect()
    }

    /// The push of `repo`'s main lane the parameter must end on: the newest whose build does
    /// not fail by its own fault (`None`: no such push).
    pub fn expected_final(&self, repo: usize) -> Option<&PushPlan> {
        self.lane(repo, &LaneKind::Main)
            .into_iter()
            .rev()
            .find(|p| !p.fails)
    }
}

/// Send order: push order with each delivery moved up to `reorder_window` places, plus
/// duplicates a few places later.
fn deliveries(rng: &mut StdRng, config: &PlanConfig, pushes: &[PushPlan]) -> Vec<DeliveryPlan> {
    let mut order: Vec<usize> = (0..pushes.len()).collect();
    if config.reorder_window > 0 {
        for i in 0..order.len() {
            let j = (i + rng.random_range(0..=config.reorder_window)).min(order.len() - 1);
            order.swap(i, j);
        }
    }
    let mut out: Vec<DeliveryPlan> = order
        .into_iter()
        .map(|push| DeliveryPlan {
            delivery_id: uuid::Uuid::from_u64_pair(config.seed, push as u64).to_string(),
            push,
            duplicate: false,
        })
        .collect();
    let mut i = 0;
    while i < out.len() {
        if !out[i].duplicate && rng.random_bool(config.duplicate_rate) {
            let copy = DeliveryPlan {
                duplicate: true,
                ..out[i].clone()
            };
            let at = (i + 1 + rng.random_range(0..8usize)).min(out.len());
            out.insert(at, copy);
        }
        i += 1;
    }
    out
}

/// A fault every few seconds: mostly service kills, the stream leader second and then every
/// eighth, a dispatcher (whose local runner is running builds: they are lost and must be
/// re-run) third and then every eighth, another node every eighth, one whole-cluster outage in
/// the middle (so even the short form's dozen faults include each kind).
fn faults(rng: &mut StdRng, deliveries: usize) -> Vec<Fault> {
    let count = (deliveries / 6).clamp(8, 200);
    let dispatcher = SERVICES
        .iter()
        .position(|s| *s == "prx-ci-dispatcher")
        .expect("the dispatcher is supervised");
    let mut out: Vec<Fault> = (0..count)
        .map(|i| match i % 8 {
            1 => Fault::RestartLeader,
            2 => Fault::KillService {
                service: dispatcher,
                replica: rng.random_range(0..REPLICAS),
            },
            5 => Fault::RestartNode {
                node: rng.random_range(0..3),
            },
            _ => Fault::KillService {
                service: rng.random_range(0..SERVICES.len()),
                replica: rng.random_range(0..REPLICAS),
            },
        })
        .collect();
    out.insert(count / 2, Fault::ClusterOutage);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_plan() {
        let a = Plan::new(PlanConfig::new(7, 120));
        assert_eq!(a, Plan::new(PlanConfig::new(7, 120)));
        assert_ne!(a, Plan::new(PlanConfig::new(8, 120)));
    }

    #[test]
    fn every_push_is_delivered_and_some_twice_and_out_of_order() {
        let plan = Plan::new(PlanConfig::new(3, 200));
        let mut seen = vec![0; plan.pushes.len()];
        for d in &plan.deliveries {
            seen[d.push] += 1;
        }
        assert!(seen.iter().all(|n| *n >= 1));
        assert!(plan.deliveries.iter().any(|d| d.duplicate));
        let originals: Vec<usize> = plan
            .deliveries
            .iter()
            .filter(|d| !d.duplicate)
            .map(|d| d.push)
            .collect();
        assert!(
            originals.windows(2).any(|w| w[0] > w[1]),
            "some out of order"
        );
        // A copy carries its original's delivery id.
        for copy in plan.deliveries.iter().filter(|d| d.duplicate) {
            assert!(
                plan.deliveries
                    .iter()
                    .any(|d| !d.duplicate && d.delivery_id == copy.delivery_id)
            );
        }
    }

    #[test]
    fn lanes_are_in_push_order_and_the_expected_final_push_did_not_fail() {
        let plan = Plan::new(PlanConfig::new(11, 150));
        for repo in 0..plan.repos.len() {
            let lane = plan.lane(repo, &LaneKind::Main);
            assert!(
                lane.windows(2)
                    .all(|w| w[0].pushed_offset < w[1].pushed_offset)
            );
            assert!(lane.iter().enumerate().all(|(i, p)| p.index_in_lane == i));
            if let Some(last) = plan.expected_final(repo) {
                assert!(!last.fails);
                assert!(lane.iter().filter(|p| p.id > last.id).all(|p| p.fails));
            }
        }
        assert!(plan.pushes.iter().any(|p| p.fails));
        assert!(
            plan.pushes
                .iter()
                .filter(|p| matches!(p.lane, LaneKind::Branch(_)))
                .all(|p| !p.fails)
        );
    }

    #[test]
    fn the_faults_include_one_outage_leader_kills_and_service_kills() {
        let plan = Plan::new(PlanConfig::new(5, 300));
        let count = |f: fn(&Fault) -> bool| plan.faults.iter().filter(|x| f(x)).count();
        assert_eq!(count(|f| matches!(f, Fault::ClusterOutage)), 1);
        assert!(count(|f| matches!(f, Fault::RestartLeader)) >= 1);
        assert!(count(|f| matches!(f, Fault::RestartNode { .. })) >= 1);
        assert!(count(|f| matches!(f, Fault::KillService { .. })) >= 5);
        assert!(
            matches!(plan.faults[2], Fault::KillService { service: 1, .. }),
            "the third fault kills a dispatcher (and the builds its runner runs)"
        );
    }
}
