//! A deterministic simulation of the ordering fence: 2 to 4 publisher replicas (each with one
//! or two handler slots) drive the real protocol machine ([`crate::fence_protocol::Attempt`],
//! the code [`crate::fence_store::KvFence`] runs) over an in-memory KV (revisions,
//! compare-and-set, occasionally stale reads, as `shared::kv` over JetStream KV) and an
//! in-memory SSM with history, in virtual time. One seed fixes everything: the workload,
//! latencies, stalls (process freezes, possibly longer than the lease and the ack wait, which
//! makes JetStream redeliver to another replica while the frozen one carries on), crashes
//! before or after the effect of every step (the message is redelivered after the ack wait, or
//! lost for good), refused writes, writes whose answer is lost, writes past the write timeout.
//! After each schedule [`Run::violations`] checks the invariant of `docs/ordering.md`.

pub mod rng;
pub mod workload;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use crate::fence::{FenceRecord, Position};
use crate::fence_protocol::{self, Attempt, FenceOutcome, FenceSettings, Input, PutResult, Step};
use crate::parameter_store::StoreError;
use rng::Rng;
use workload::{Timing, Workload};

const PARAMETER: &str = "/prx/stag/Spire/App/pkg/docker-image-tag";

/// Which publisher the simulation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The fence, as shipped.
    Fence,
    /// Deliberately broken: the original, every successful report writes (no fence).
    LastWriterWins,
    /// Deliberately broken: an abandoned claim is resolved without looking at the store
    /// (always "did not land"), so a write that landed but lost its answer sets no floor.
    BlindResolve,
    /// Deliberately broken: the write is not abandoned at the write timeout; a replica frozen
    /// past its lease sends it when it resumes (the residual race 2 of `docs/ordering.md`
    /// without its bound).
    UnboundedWrite,
}

/// The fence settings of the simulation (virtual time; the ratio is the defaults').
pub const SETTINGS: FenceSettings = FenceSettings {
    lease: Duration::from_secs(60),
    write_timeout: Duration::from_secs(10),
    poll_interval: Duration::from_secs(5),
};
/// JetStream's ack wait: a crashed (or frozen) handler's message is redelivered after it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Virtual time after the last report by which every message must be settled.
const HORIZON: Duration = Duration::from_secs(6 * 3600);

/// Fault rates of one schedule (drawn from its seed).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Per step: crash before its effect, and (again) after its effect.
    pub crash: f64,
    /// Per crash: the message is never redelivered (max deliveries exhausted).
    pub lost_for_good: f64,
    /// Per step: the handler stalls before the step (a freeze, a hung call).
    pub stall: f64,
    /// Per store write: refused (nothing written), answer lost after landing.
    pub refused: f64,
    pub answer_lost: f64,
    /// Per read: served by a lagging follower (an older revision).
    pub stale_read: f64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Self {
        Self {
            crash: [0.0, 0.005, 0.02, 0.05][usize::try_from(rng.below(4)).unwrap_or(0)],
            lost_for_good: 0.2,
            stall: [0.0, 0.01, 0.04][usize::try_from(rng.below(3)).unwrap_or(0)],
            refused: 0.1,
            answer_lost: 0.1,
            stale_read: 0.05,
        }
    }
}

#[derive(Debug, Clone)]
struct Message {
    build: usize,
    settled: Option<FenceOutcome>,
    lost: bool,
}

#[derive(Debug)]
enum Task {
    /// The handler's read-only look before the artifact check.
    Precheck,
    Fence(Box<Attempt>),
    /// The original: one unconditional write.
    Lww,
}

#[derive(Debug)]
struct Slot {
    message: usize,
    task: Task,
    /// The answer waiting to be fed at the next `Answer` event.
    pending: Option<Input>,
    /// Whether a freeze longer than the ack wait already made JetStream redeliver.
    redelivered: bool,
}

#[derive(Debug)]
struct Replica {
    slots: Vec<Option<Slot>>,
    /// Bumped on every crash: events of the dead process are ignored.
    generation: u64,
    down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A message (re)delivered to the consumer.
    Deliver(usize),
    /// The effect of a slot's current step happens (KV/SSM state changes now).
    Effect {
        replica: usize,
        slot: usize,
        generation: u64,
    },
    /// The answer reaches the slot.
    Answer {
        replica: usize,
        slot: usize,
        generation: u64,
    },
    Restart(usize),
}

/// What a step does at its effect time.
#[derive(Debug)]
enum Pending {
    Read,
    Sleep(Duration),
    StoreGet,
    Cas {
        record: Box<FenceRecord>,
        revision: u64,
        /// Resolves an abandoned claim (a takeover, counted when applied).
        resolve: bool,
    },
    Put {
        deadline: Duration,
    },
    Modify(fence_protocol::Change),
}

/// Counters of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub steps: u64,
    pub crashes: u64,
    pub stalls: u64,
    pub lost_messages: u64,
    pub writes: u64,
    pub takeovers: u64,
    pub stale_reads: u64,
    pub timed_out_writes: u64,
}

/// One simulated schedule.
#[derive(Debug)]
pub struct Run {
    pub seed: u64,
    pub variant: Variant,
    pub replicas_count: usize,
    pub workload: Workload,
    faults: Faults,
    rng: Rng,
    now: Duration,
    sequence: u64,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    messages: Vec<Message>,
    ready: VecDeque<usize>,
    replicas: Vec<Replica>,
    /// (step, its effect) per slot, between issuing and the effect.
    in_flight: Vec<Vec<Option<Pending>>>,
    /// Every revision of the fence record (revision = index + 1).
    kv: Vec<FenceRecord>,
    /// SSM history: (value, version).
    pub ssm: Vec<(String, i64)>,
    tokens: u64,
    pub stats: Stats,
}

impl Run {
    /// Sets up the schedule of `seed`.
    pub fn new(seed: u64, variant: Variant) -> Self {
        Self::with_timing(seed, variant, None)
    }

    /// Sets up the schedule of `seed`, its reports at `timing` instead of the seed's.
    pub fn with_timing(seed: u64, variant: Variant, timing: Option<Timing>) -> Self {
        let mut rng = Rng::new(seed);
        let replicas_count = usize::try_from(rng.between(2, 4)).unwrap_or(2);
        let drawn = if rng.chance(0.7) {
            Timing::Burst {
                window: Duration::from_millis(rng.below(5_000)),
            }
        } else {
            Timing::Realistic {
                mean_push_gap: Duration::from_secs(20),
                median_build: Duration::from_secs(60),
                sigma: 0.6,
            }
        };
        let workload = Workload::generate(&mut rng, timing.unwrap_or(drawn));
        let faults = Faults::draw(&mut rng);
        let replicas = (0..replicas_count)
            .map(|_| Replica {
                slots: (0..rng.between(1, 2)).map(|_| None).collect(),
                generation: 0,
                down: false,
            })
            .collect::<Vec<_>>();
        let in_flight = replicas
            .iter()
            .map(|r| r.slots.iter().map(|_| None).collect())
            .collect();
        let mut run = Self {
            seed,
            variant,
            replicas_count,
            faults,
            rng,
            now: Duration::ZERO,
            sequence: 0,
            events: BinaryHeap::new(),
            messages: Vec::new(),
            ready: VecDeque::new(),
            replicas,
            in_flight,
            kv: Vec::new(),
            ssm: Vec::new(),
            tokens: 0,
            stats: Stats::default(),
            workload,
        };
        // Only successful builds reach the fence (failed ones are skipped before it).
        for delivery in run.workload.deliveries.clone() {
            if run.workload.builds[delivery.build].succeeded {
                run.messages.push(Message {
                    build: delivery.build,
                    settled: None,
                    lost: false,
                });
                let id = run.messages.len() - 1;
                run.schedule(delivery.at, Event::Deliver(id));
            }
        }
        run
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((at, self.sequence, event)));
    }

    fn latency(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(1, 40))
    }

    /// Runs to the end; false when the horizon was reached with messages unsettled.
    pub fn run(&mut self) -> bool {
        let last_report = self
            .workload
            .deliveries
            .last()
            .map_or(Duration::ZERO, |d| d.at);
        while let Some(Reverse((at, _, event))) = self.events.pop() {
            if at > last_report + HORIZON {
                return false;
            }
            self.now = at;
            match event {
                Event::Deliver(message) => {
                    if self.messages[message].settled.is_none() && !self.messages[message].lost {
                        self.ready.push_back(message);
                    }
                }
                Event::Restart(replica) => self.replicas[replica].down = false,
                Event::Effect {
                    replica,
                    slot,
                    generation,
                } if generation == self.replicas[replica].generation => {
                    self.effect(replica, slot);
                }
                Event::Answer {
                    replica,
                    slot,
                    generation,
                } if generation == self.replicas[replica].generation => {
                    self.answer(replica, slot);
                }
                Event::Effect { .. } | Event::Answer { .. } => {}
            }
            self.dispatch();
        }
        self.messages.iter().all(|m| m.settled.is_some() || m.lost)
    }

    /// Hands ready messages to free slots of live replicas (a random one).
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let free: Vec<(usize, usize)> = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.down)
                .flat_map(|(i, r)| {
                    r.slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .map(move |(j, _)| (i, j))
                })
                .collect();
            if free.is_empty() {
                return;
            }
            let Some(message) = self.ready.pop_front() else {
                return;
            };
            if self.messages[message].settled.is_some() {
                continue;
            }
            let (replica, slot) =
                free[usize::try_from(self.rng.below(free.len() as u64)).unwrap_or(0)];
            let task = if self.variant == Variant::LastWriterWins {
                Task::Lww
            } else {
                Task::Precheck
            };
            self.replicas[replica].slots[slot] = Some(Slot {
                message,
                task,
                pending: None,
                redelivered: false,
            });
            let first = if self.variant == Variant::LastWriterWins {
                Pending::Put {
                    deadline: self.now + SETTINGS.write_timeout,
                }
            } else {
                Pending::Read
            };
            self.issue(replica, slot, first);
        }
    }

    fn crash(&mut self, replica: usize) {
        self.stats.crashes += 1;
        let r = &mut self.replicas[replica];
        r.generation += 1;
        r.down = true;
        let messages: Vec<(usize, bool)> = r
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .map(|s| (s.message, s.redelivered))
            .collect();
        for pending in &mut self.in_flight[replica] {
            *pending = None;
        }
        for (message, redelivered) in messages {
            if redelivered {
                continue; // already handed to another replica
            }
            if self.rng.chance(self.faults.lost_for_good) {
                self.messages[message].lost = true;
                self.stats.lost_messages += 1;
            } else {
                self.schedule(self.now + ACK_WAIT, Event::Deliver(message));
            }
        }
        let back = self.now + Duration::from_millis(self.rng.between(500, 10_000));
        self.schedule(back, Event::Restart(replica));
    }

    /// Starts a step: maybe crash or freeze first, then its effect after a latency.
    fn issue(&mut self, replica: usize, slot: usize, pending: Pending) {
        self.stats.steps += 1;
        if self.rng.chance(self.faults.crash) {
            self.crash(replica);
            return;
        }
        let mut delay = self.latency();
        if let Pending::Sleep(pause) = pending {
            delay = pause;
        }
        if self.rng.chance(self.faults.stall) {
            self.stats.stalls += 1;
            let lease_ms = u64::try_from(SETTINGS.lease.as_millis()).unwrap_or(60_000);
            let stall = Duration::from_millis(match self.rng.below(3) {
                0 => self.rng.below(2_000),
                1 => self.rng.between(lease_ms / 2, lease_ms * 3 / 2),
                _ => self.rng.between(lease_ms, lease_ms * 3),
            });
            delay += stall;
            // A frozen process sends no progress acks: JetStream redelivers the message.
            if stall > ACK_WAIT
                && let Some(s) = self.replicas[replica].slots[slot].as_mut()
                && !s.redelivered
            {
                s.redelivered = true;
                let message = s.message;
                self.schedule(self.now + ACK_WAIT, Event::Deliver(message));
            }
        }
        let generation = self.replicas[replica].generation;
        self.in_flight[replica][slot] = Some(pending);
        self.schedule(
            self.now + delay,
            Event::Effect {
                replica,
                slot,
                generation,
            },
        );
    }

    fn read_record(&mut self) -> (FenceRecord, u64) {
        let latest = self.kv.len();
        let revision = if latest > 1 && self.rng.chance(self.faults.stale_read) {
            self.stats.stale_reads += 1;
            latest
                - usize::try_from(self.rng.between(1, 3))
                    .unwrap_or(1)
                    .min(latest - 1)
        } else {
            latest
        };
        let record = match revision {
            0 => FenceRecord {
                parameter: PARAMETER.to_owned(),
                ..FenceRecord::default()
            },
            r => self.kv[r - 1].clone(),
        };
        (record, revision as u64)
    }

    fn put(&mut self, value: &str) -> i64 {
        self.stats.writes += 1;
        let version = i64::try_from(self.ssm.len()).unwrap_or(i64::MAX) + 1;
        self.ssm.push((value.to_owned(), version));
        version
    }

    /// The effect of a slot's step, then (unless the process dies now) its answer later.
    fn effect(&mut self, replica: usize, slot: usize) {
        let Some(pending) = self.in_flight[replica][slot].take() else {
            return;
        };
        let Some(message) = self.replicas[replica].slots[slot]
            .as_ref()
            .map(|s| s.message)
        else {
            return;
        };
        let value = self.workload.builds[self.messages[message].build]
            .publication
            .value
            .clone();
        let mut answer_at = self.now + self.latency();
        let input = match pending {
            Pending::Read => {
                let (record, revision) = self.read_record();
                Input::Record {
                    record: Box::new(record),
                    revision,
                }
            }
            Pending::Sleep(_) => Input::Resumed,
            Pending::StoreGet => Input::Stored(if self.variant == Variant::BlindResolve {
                None
            } else {
                self.ssm.last().cloned()
            }),
            Pending::Cas {
                record,
                revision,
                resolve,
            } => {
                let applied = revision == self.kv.len() as u64;
                if applied {
                    self.kv.push(*record);
                    // Counted when applied, as the real fence's takeover metric.
                    if resolve {
                        self.stats.takeovers += 1;
                    }
                }
                Input::Cas(applied)
            }
            Pending::Modify(change) => {
                let current = self.read_latest();
                if let Some(changed) = change.apply(&current, "t") {
                    self.kv.push(changed);
                }
                Input::Modified
            }
            Pending::Put { deadline } => {
                if self.now >= deadline && self.variant != Variant::UnboundedWrite {
                    // Frozen until past the timeout: the write future was dropped unsent.
                    self.stats.timed_out_writes += 1;
                    Input::Put(PutResult::TimedOut)
                } else if self.rng.chance(self.faults.refused) {
                    Input::Put(PutResult::Failed(StoreError::NotWritten {
                        message: "ThrottlingException".into(),
                        retryable: true,
                    }))
                } else {
                    let version = self.put(&value);
                    if self.rng.chance(self.faults.answer_lost) {
                        Input::Put(PutResult::Failed(StoreError::Unknown {
                            message: "connection reset".into(),
                        }))
                    } else if (answer_at >= deadline || self.rng.chance(0.02))
                        && self.variant != Variant::UnboundedWrite
                    {
                        // The answer comes after the write timeout.
                        self.stats.timed_out_writes += 1;
                        answer_at = answer_at.max(deadline);
                        Input::Put(PutResult::TimedOut)
                    } else {
                        Input::Put(PutResult::Written(version))
                    }
                }
            }
        };
        if self.rng.chance(self.faults.crash) {
            self.crash(replica);
            return;
        }
        let generation = self.replicas[replica].generation;
        if let Some(s) = self.replicas[replica].slots[slot].as_mut() {
            s.pending = Some(input);
        }
        self.schedule(
            answer_at,
            Event::Answer {
                replica,
                slot,
                generation,
            },
        );
    }

    fn read_latest(&self) -> FenceRecord {
        self.kv.last().cloned().unwrap_or_else(|| FenceRecord {
            parameter: PARAMETER.to_owned(),
            ..FenceRecord::default()
        })
    }

    /// Feeds the answer to the slot's task and issues its next step.
    fn answer(&mut self, replica: usize, slot: usize) {
        let Some(mut s) = self.replicas[replica].slots[slot].take() else {
            return;
        };
        let Some(input) = s.pending.take() else {
            self.replicas[replica].slots[slot] = Some(s);
            return;
        };
        let publication = self.workload.builds[self.messages[s.message].build]
            .publication
            .clone();
        let step = match (&mut s.task, input) {
            (Task::Lww, Input::Put(result)) => Step::Done(match result {
                PutResult::Written(version) => Ok(FenceOutcome::Applied {
                    version,
                    again: false,
                }),
                _ => Err(fence_protocol::FenceError::ClaimLost {
                    parameter: PARAMETER.to_owned(),
                }),
            }),
            (Task::Precheck, Input::Record { record, .. }) => {
                match fence_protocol::settled(&record, &publication) {
                    Some(outcome) => Step::Done(Ok(outcome)),
                    None => {
                        self.tokens += 1;
                        let token = format!("token-{}", self.tokens);
                        let mut attempt = Attempt::new(PARAMETER, publication, SETTINGS, token);
                        let step = attempt.step(Input::Start, self.now, "t");
                        s.task = Task::Fence(Box::new(attempt));
                        step
                    }
                }
            }
            (Task::Fence(attempt), input) => attempt.step(input, self.now, "t"),
            (_, input) => Step::Done(Err(fence_protocol::FenceError::Kv {
                parameter: PARAMETER.to_owned(),
                source: anyhow::anyhow!("simulation misuse: {input:?}"),
            })),
        };
        let next = match step {
            Step::Done(result) => {
                let message = s.message;
                match result {
                    Ok(outcome) => {
                        if self.messages[message].settled.is_none() {
                            self.messages[message].settled = Some(outcome);
                        }
                    }
                    Err(_) if !s.redelivered => {
                        // Nak: retried after the backoff.
                        let backoff = Duration::from_millis(self.rng.between(1_000, 5_000));
                        self.schedule(self.now + backoff, Event::Deliver(message));
                    }
                    Err(_) => {}
                }
                return; // the slot is free
            }
            Step::Read => Pending::Read,
            Step::Sleep(pause) => Pending::Sleep(pause),
            Step::StoreGet => Pending::StoreGet,
            Step::Cas {
                record,
                revision,
                kind,
            } => Pending::Cas {
                record,
                revision,
                resolve: matches!(kind, fence_protocol::CasKind::Resolve { .. }),
            },
            Step::Put { timeout } => Pending::Put {
                deadline: self.now + timeout,
            },
            Step::Modify(change) => Pending::Modify(change),
        };
        self.replicas[replica].slots[slot] = Some(s);
        self.issue(replica, slot, next);
    }

    /// The SSM history as positions.
    pub fn history(&self) -> Vec<Position> {
        self.ssm
            .iter()
            .filter_map(|(value, _)| self.workload.position_of(value))
            .collect()
    }

    /// What went wrong, empty when the invariant held:
    /// - the parameter's SSM history strictly increases in position (push order, then the
    ///   primary architecture above the other; no position written twice);
    /// - it ends on the highest position among the publications whose messages were settled
    ///   (acknowledged as applied or skipped), unless a publication whose message was lost
    ///   for good (a crash after its write landed, never redelivered) stands above that: then
    ///   it ends on such a lost publication (its write landed; nobody can be told);
    /// - every message was settled or lost before the horizon (liveness).
    pub fn violations(&self, finished: bool) -> Vec<String> {
        let mut out = Vec::new();
        if !finished {
            out.push("messages left unsettled at the horizon".to_owned());
        }
        let history = self.history();
        for pair in history.windows(2) {
            if pair[1] <= pair[0] {
                out.push(format!("history went from {:?} to {:?}", pair[0], pair[1]));
            }
        }
        let position = |m: &Message| self.workload.builds[m.build].publication.position;
        let settled_max = self
            .messages
            .iter()
            .filter(|m| m.settled.is_some())
            .map(position)
            .max();
        let last = history.last().copied();
        let lost_above = |p: Position| {
            self.messages
                .iter()
                .any(|m| m.lost && m.settled.is_none() && position(m) == p)
                && settled_max.is_none_or(|s| p > s)
        };
        let ok = last == settled_max || last.is_some_and(lost_above);
        if !ok {
            out.push(format!(
                "history ends on {last:?}, expected the newest settled publication {settled_max:?} (or a newer lost one)"
            ));
        }
        out
    }
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub violations: Vec<String>,
    pub stats: Stats,
    pub replicas: usize,
}

/// Simulates the schedule of `seed` and checks it.
pub fn simulate(seed: u64, variant: Variant) -> SeedResult {
    let mut run = Run::new(seed, variant);
    let finished = run.run();
    SeedResult {
        seed,
        violations: run.violations(finished),
        stats: run.stats,
        replicas: run.replicas_count,
    }
}

/// Describes the schedule of `seed` in full (for a failing seed).
pub fn describe(seed: u64, variant: Variant) -> String {
    let mut run = Run::new(seed, variant);
    let finished = run.run();
    format!(
        "seed {seed} ({variant:?}, {} replicas, faults {:?})\nworkload {:#?}\nSSM history {:?}\nsettled {:?}\nviolations {:?}",
        run.replicas_count,
        run.faults,
        run.workload,
        run.ssm,
        run.messages
            .iter()
            .map(|m| (
                run.workload.builds[m.build].publication.value.clone(),
                m.settled.clone(),
                m.lost
            ))
            .collect::<Vec<_>>(),
        run.violations(finished)
    )
}

#[cfg(test)]
mod tests;
