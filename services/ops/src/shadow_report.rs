//! The shadow report (pure: no I/O): per webhook, what this system decided in shadow mode beside
//! what the original system did, and per parameter where each would have left it
//! (docs/migrating.md).
//!
//! Everything comes from the event log. In shadow mode the dispatcher records its decisions
//! (`BuildRequested.shadow`, `BuildSkipped`) and starts nothing; the build-watcher adopts the
//! original's build of the same repository, commit and architecture into the request's chain
//! (`BuildRef.shadowed`), so its `BuildStarted` carries the original's environment and its
//! `BuildCompleted` the original's variables; the publisher records what it would have written
//! (`PublishApplied.shadow`). What the original wrote is not read back from the parameter store
//! (its later writes would hide the earlier ones): it is replayed from each successful original
//! build's variables with the original updater's rules ([`original_writes`]), in the order its
//! builds finished, which is the order its updater ran.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::from_timestamp;
use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::Architecture;
use time::OffsetDateTime;

/// The original updater wrote only names under this prefix (reference §4.6).
pub const ORIGINAL_PARAMETER_PREFIX: &str = "/prx/stag/Spire/";

/// The variables compared per build: the ones the dispatcher decides (reference §2.2), without
/// the request id, which only this system sets.
fn compared_variables() -> impl Iterator<Item = &'static str> {
    env::DISPATCHER_VARIABLES
        .into_iter()
        .filter(|name| *name != env::CI_REQUEST_ID)
}

/// What the original's parameter-store updater wrote for one successful build (reference §4):
/// only when the merged `PRX_CI_PUBLISH` is `true`; ECR mappings then S3 mappings, each mapping
/// split on `;` and used only when `=` splits it in exactly two; names split on `,`, nothing
/// trimmed; the value is the variable named by the label, skipped when missing or empty; only
/// names under [`ORIGINAL_PARAMETER_PREFIX`]. In write order, `(name, value)`.
pub fn original_writes(variables: &HashMap<String, String>) -> Vec<(String, String)> {
    if variables.get(env::CI_PUBLISH).map(String::as_str) != Some("true") {
        return Vec::new();
    }
    let mut writes = Vec::new();
    for mapping_variable in [env::SPIRE_ECR_PKG_PARAMETERS, env::SPIRE_S3_PKG_PARAMETERS] {
        let Some(text) = variables.get(mapping_variable).filter(|t| !t.is_empty()) else {
            continue;
        };
        for mapping in text.split(';') {
            let parts: Vec<&str> = mapping.split('=').collect();
            let [label, names] = parts.as_slice() else {
                continue;
            };
            let Some(value) = variables.get(*label).filter(|v| !v.is_empty()) else {
                continue;
            };
            for name in names.split(',') {
                if name.starts_with(ORIGINAL_PARAMETER_PREFIX) {
                    writes.push((name.to_owned(), value.clone()));
                }
            }
        }
    }
    writes
}

/// One webhook as the fold has seen it so far.
#[derive(Debug, Default)]
struct Webhook {
    repository: String,
    commit: String,
    ordering_key: Option<v1::OrderingKey>,
    push_sequence: u64,
    /// This system's requested builds: architecture -> the request's environment.
    this_system: BTreeMap<i32, BTreeMap<String, String>>,
    /// Why this system skipped, when it did.
    skip: Option<String>,
    /// The original's builds of it: architecture -> its environment.
    original: BTreeMap<i32, BTreeMap<String, String>>,
}

/// A build of the original that no shadow request adopted.
#[derive(Debug)]
struct UnrequestedBuild {
    build_id: String,
    repository: String,
    commit: String,
    architecture: i32,
    environment: BTreeMap<String, String>,
}

/// One write, by either system.
#[derive(Debug, Clone)]
struct Write {
    value: String,
    commit: String,
    push_sequence: u64,
}

/// One original write with what orders it (when its build finished, then the log's order).
#[derive(Debug)]
struct OriginalWrite {
    finished_at: OffsetDateTime,
    index: u64,
    parameter: String,
    write: Write,
}

/// Folds stored events (in stream order) into the report.
#[derive(Debug, Default)]
pub struct ShadowFold {
    webhooks: HashMap<String, Webhook>,
    unrequested: Vec<UnrequestedBuild>,
    this_system_writes: BTreeMap<String, Vec<Write>>,
    original_writes: Vec<OriginalWrite>,
    /// Original builds whose completion was already replayed (a redelivered event is one build).
    completed: BTreeSet<String>,
    events: u64,
}

impl ShadowFold {
    /// Applies one event of PRX_EVENTS; events that say nothing about shadow mode are counted
    /// and otherwise ignored.
    pub fn apply(&mut self, envelope: &v1::Envelope) {
        self.events += 1;
        let Some(payload) = &envelope.payload else {
            return;
        };
        match payload {
            Payload::BuildRequested(request) if request.shadow => {
                let build = request.build.clone().unwrap_or_default();
                let webhook = self.webhook(envelope, &build.repository, &build.commit);
                webhook
                    .this_system
                    .insert(build.architecture, sorted(&request.environment));
            }
            Payload::BuildSkipped(skipped) if skipped.shadow => {
                let reason = v1::SkipReason::try_from(skipped.reason)
                    .map_or("UNKNOWN", |r| r.as_str_name())
                    .trim_start_matches("SKIP_REASON_")
                    .to_ascii_lowercase();
                let skip = if skipped.detail.is_empty() {
                    reason
                } else {
                    format!("{reason}: {}", skipped.detail)
                };
                let webhook = self.webhook(envelope, &skipped.repository, &skipped.commit);
                webhook.skip = Some(skip);
            }
            Payload::BuildStarted(started) => {
                let build = started.build.clone().unwrap_or_default();
                self.original_build(envelope, &build, started.requested.is_none(), || {
                    sorted(&started.environment)
                });
            }
            Payload::BuildCompleted(completed) => {
                let build = completed.build.clone().unwrap_or_default();
                let unrequested = completed.requested.is_none();
                self.original_build(envelope, &build, unrequested, || {
                    // The environment alone: the merged variables without the exported ones.
                    completed
                        .variables
                        .iter()
                        .filter(|(k, _)| !completed.exported_variables.contains_key(*k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                let original = build.shadowed || unrequested;
                if original
                    && completed.status == v1::BuildStatus::Succeeded as i32
                    && self.completed.insert(build.build_id.clone())
                {
                    let variables: HashMap<String, String> = completed
                        .variables
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let finished_at = from_timestamp(completed.finished_at.as_ref())
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                    // An unrequested build has no place in push order (0).
                    let push_sequence = if build.shadowed {
                        envelope.push_sequence
                    } else {
                        0
                    };
                    for (parameter, value) in original_writes(&variables) {
                        self.original_writes.push(OriginalWrite {
                            finished_at,
                            index: self.events,
                            parameter,
                            write: Write {
                                value,
                                commit: build.commit.clone(),
                                push_sequence,
                            },
                        });
                    }
                }
            }
            Payload::PublishApplied(applied) if applied.shadow => {
                let commit = applied
                    .build
                    .as_ref()
                    .map(|b| b.commit.clone())
                    .unwrap_or_default();
                self.this_system_writes
                    .entry(applied.parameter.clone())
                    .or_default()
                    .push(Write {
                        value: applied.value.clone(),
                        commit,
                        push_sequence: envelope.push_sequence,
                    });
            }
            _ => {}
        }
    }

    /// The webhook of the envelope's chain, filled in from its first event.
    fn webhook(&mut self, envelope: &v1::Envelope, repository: &str, commit: &str) -> &mut Webhook {
        let webhook = self
            .webhooks
            .entry(envelope.correlation_id.clone())
            .or_default();
        if webhook.repository.is_empty() {
            webhook.repository = repository.to_owned();
        }
        if webhook.commit.is_empty() {
            webhook.commit = commit.to_owned();
        }
        if webhook.ordering_key.is_none() {
            webhook.ordering_key = envelope.ordering_key.clone();
        }
        if webhook.push_sequence == 0 {
            webhook.push_sequence = envelope.push_sequence;
        }
        webhook
    }

    /// Records a build of the original: adopted into a shadow request's chain (`shadowed`), or
    /// nobody's (`unrequested`). This system's own builds are not the original's.
    fn original_build(
        &mut self,
        envelope: &v1::Envelope,
        build: &v1::BuildRef,
        unrequested: bool,
        environment: impl FnOnce() -> BTreeMap<String, String>,
    ) {
        if build.shadowed {
            let webhook = self.webhook(envelope, &build.repository, &build.commit);
            webhook
                .original
                .entry(build.architecture)
                .or_insert_with(environment);
        } else if unrequested
            && !self
                .unrequested
                .iter()
                .any(|b| b.build_id == build.build_id)
        {
            self.unrequested.push(UnrequestedBuild {
                build_id: build.build_id.clone(),
                repository: build.repository.clone(),
                commit: build.commit.clone(),
                architecture: build.architecture,
                environment: environment(),
            });
        }
    }

    /// The report of everything applied.
    pub fn report(mut self) -> v1::ShadowReportResponse {
        // Original builds nobody requested belong to a webhook of the same repository and
        // commit that did not build that architecture (typically one this system skipped).
        let mut unmatched = Vec::new();
        for build in std::mem::take(&mut self.unrequested) {
            let webhook = self
                .webhooks
                .values_mut()
                .filter(|w| {
                    w.repository == build.repository
                        && w.commit == build.commit
                        && !w.this_system.contains_key(&build.architecture)
                        && !w.original.contains_key(&build.architecture)
                })
                .max_by_key(|w| w.push_sequence);
            match webhook {
                Some(webhook) => {
                    webhook
                        .original
                        .insert(build.architecture, build.environment);
                }
                None => unmatched.push(format!(
                    "{}@{} ({})",
                    build.repository,
                    build.commit,
                    architecture_name(build.architecture)
                )),
            }
        }

        let mut webhooks: Vec<v1::ShadowWebhook> = self
            .webhooks
            .into_iter()
            // A chain with neither a decision nor an adopted build is not shadow mode's.
            .filter(|(_, w)| !w.this_system.is_empty() || w.skip.is_some() || !w.original.is_empty())
            .map(|(delivery_id, w)| compare(delivery_id, w))
            .collect();
        webhooks.sort_by(|a, b| {
            let lane = |w: &v1::ShadowWebhook| {
                w.ordering_key
                    .as_ref()
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_default()
            };
            (&a.repository, lane(a), a.push_sequence, &a.delivery_id).cmp(&(
                &b.repository,
                lane(b),
                b.push_sequence,
                &b.delivery_id,
            ))
        });

        let mut original: BTreeMap<String, Vec<Write>> = BTreeMap::new();
        self.original_writes
            .sort_by_key(|w| (w.finished_at, w.index));
        for w in self.original_writes {
            original.entry(w.parameter).or_default().push(w.write);
        }
        let names: BTreeSet<&String> = original
            .keys()
            .chain(self.this_system_writes.keys())
            .collect();
        let parameters = names
            .into_iter()
            .map(|name| {
                parameter(
                    name,
                    self.this_system_writes
                        .get(name)
                        .map_or(&[][..], Vec::as_slice),
                    original.get(name).map_or(&[][..], Vec::as_slice),
                )
            })
            .collect();
        v1::ShadowReportResponse {
            webhooks,
            parameters,
            events_read: self.events,
            unmatched_original_builds: unmatched,
        }
    }
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `x86_64`, `aarch64`, or `?`.
pub fn architecture_name(architecture: i32) -> &'static str {
    Architecture::from_proto(architecture).map_or("?", Architecture::as_str)
}

/// A verdict as one word (`agree`, `disagree`, `waiting`).
pub fn verdict_name(verdict: v1::ShadowVerdict) -> &'static str {
    match verdict {
        v1::ShadowVerdict::Agree => "agree",
        v1::ShadowVerdict::Disagree => "disagree",
        v1::ShadowVerdict::Waiting => "waiting",
        v1::ShadowVerdict::Unspecified => "unknown",
    }
}

/// A difference as one phrase, for the CLI and the dashboard.
pub fn describe(d: &v1::ShadowDifference) -> String {
    let quoted = |value: &str, set: bool| {
        if set {
            format!("{value:?}")
        } else {
            "unset".to_owned()
        }
    };
    let arch = architecture_name(d.architecture);
    match d.kind() {
        v1::ShadowDifferenceKind::OnlyThisSystemBuilds => {
            format!("{arch}: only this system builds it")
        }
        v1::ShadowDifferenceKind::OnlyOriginalBuilds => {
            format!("{arch}: only the original built it")
        }
        v1::ShadowDifferenceKind::Variable => format!(
            "{arch}: {} is {} here, {} in the original",
            d.variable,
            quoted(&d.this_system, d.this_system_set),
            quoted(&d.original, d.original_set),
        ),
        v1::ShadowDifferenceKind::Unspecified => "unknown difference".to_owned(),
    }
}

/// One webhook's verdict and differences.
fn compare(delivery_id: String, w: Webhook) -> v1::ShadowWebhook {
    let mut differences = Vec::new();
    let difference = |kind: v1::ShadowDifferenceKind, architecture: i32| v1::ShadowDifference {
        kind: kind as i32,
        architecture,
        ..Default::default()
    };
    for (architecture, ours) in &w.this_system {
        let Some(theirs) = w.original.get(architecture) else {
            differences.push(difference(
                v1::ShadowDifferenceKind::OnlyThisSystemBuilds,
                *architecture,
            ));
            continue;
        };
        for name in compared_variables() {
            let (a, b) = (ours.get(name), theirs.get(name));
            if a != b {
                differences.push(v1::ShadowDifference {
                    variable: name.to_owned(),
                    this_system: a.cloned().unwrap_or_default(),
                    original: b.cloned().unwrap_or_default(),
                    this_system_set: a.is_some(),
                    original_set: b.is_some(),
                    ..difference(v1::ShadowDifferenceKind::Variable, *architecture)
                });
            }
        }
    }
    for architecture in w.original.keys() {
        if !w.this_system.contains_key(architecture) {
            differences.push(difference(
                v1::ShadowDifferenceKind::OnlyOriginalBuilds,
                *architecture,
            ));
        }
    }
    let verdict = if !w.this_system.is_empty() && w.original.is_empty() {
        v1::ShadowVerdict::Waiting
    } else if differences.is_empty() {
        v1::ShadowVerdict::Agree
    } else {
        v1::ShadowVerdict::Disagree
    };
    v1::ShadowWebhook {
        delivery_id,
        repository: w.repository,
        commit: w.commit,
        ordering_key: w.ordering_key,
        push_sequence: w.push_sequence,
        verdict: verdict as i32,
        this_system_builds: w.this_system.keys().copied().collect(),
        this_system_skip: if w.this_system.is_empty() {
            w.skip.unwrap_or_default()
        } else {
            String::new()
        },
        original_builds: w.original.keys().copied().collect(),
        differences,
    }
}

/// Where each system left one parameter, and whether the original moved it back.
fn parameter(name: &str, ours: &[Write], original: &[Write]) -> v1::ShadowParameter {
    let last_ours = ours.last();
    let last_original = original.last();
    // The newest push the original wrote before its last write, when newer than the last's.
    let regressed_from = last_original
        .filter(|w| w.push_sequence > 0)
        .and_then(|last| {
            original[..original.len() - 1]
                .iter()
                .filter(|w| w.push_sequence > last.push_sequence && w.commit != last.commit)
                .max_by_key(|w| w.push_sequence)
        });
    v1::ShadowParameter {
        name: name.to_owned(),
        this_system_value: last_ours.map(|w| w.value.clone()).unwrap_or_default(),
        this_system_commit: last_ours.map(|w| w.commit.clone()).unwrap_or_default(),
        this_system_push_sequence: last_ours.map_or(0, |w| w.push_sequence),
        original_value: last_original.map(|w| w.value.clone()).unwrap_or_default(),
        original_commit: last_original.map(|w| w.commit.clone()).unwrap_or_default(),
        original_push_sequence: last_original.map_or(0, |w| w.push_sequence),
        agree: last_ours.map(|w| &w.value) == last_original.map(|w| &w.value),
        original_regressed: regressed_from.is_some(),
        regressed_from_commit: regressed_from.map(|w| w.commit.clone()).unwrap_or_default(),
        this_system_writes: ours.len() as u32,
        original_writes: original.len() as u32,
    }
}

#[cfg(test)]
#[path = "shadow_report_tests.rs"]
mod tests;
