//! The history index (pure: no I/O): where each repository's, branch's, pull request's and
//! commit's events are stored, so a `History` query reads only the messages of its answer.
//!
//! Folded from every message of `PRX_WEBHOOKS` and `PRX_EVENTS` (each stream in stream order;
//! the two may interleave in any way). A message belongs to the repository its subject names
//! (`prx.webhook.*.<owner>.<repo>`, `prx.*.*.<owner>.<repo>`: what the scanning query's subject
//! filters selected). Within a repository the messages are grouped by correlation id (the GitHub
//! delivery); a group belongs to every branch, pull request and commit one of its events names
//! by its own facts ([`crate::history::own_facts`]), which is the rule of
//! [`crate::history::select`]: a skip decision joins its push's branch through the correlation
//! id whichever of the two is stored first. A message without a correlation id is a group of
//! its own. The index holds sequences and store times only (24 bytes per message plus the
//! group and key tables); the messages themselves stay in the streams.

use std::collections::{BTreeMap, HashMap};

use prx_ci_proto::v1::Envelope;

use crate::dashboard_projection::Source;
use crate::history::{HistoryFilter, own_facts};

/// Where one message is stored, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef {
    pub source: Source,
    pub sequence: u64,
    /// The stream's store time, in nanoseconds since the Unix epoch.
    pub stored_at: i128,
}

/// A correlation's messages and the keys its events name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Group {
    events: Vec<EventRef>,
    keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Branch(String),
    PullRequest(u64),
    Commit(String),
}

/// One repository's groups and the groups of each of its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Repository {
    groups: Vec<Group>,
    by_correlation: HashMap<String, usize>,
    branches: HashMap<String, Vec<usize>>,
    pull_requests: HashMap<u64, Vec<usize>>,
    /// Lower-case commit SHAs, ordered so a prefix is a range.
    commits: BTreeMap<String, Vec<usize>>,
}

impl Repository {
    fn add_key(&mut self, group: usize, key: Key) {
        if self.groups[group].keys.contains(&key) {
            return;
        }
        match &key {
            Key::Branch(b) => self.branches.entry(b.clone()).or_default().push(group),
            Key::PullRequest(n) => self.pull_requests.entry(*n).or_default().push(group),
            Key::Commit(c) => self.commits.entry(c.clone()).or_default().push(group),
        }
        self.groups[group].keys.push(key);
    }

    /// Drops the messages of `source` below `first` and the groups left with none (see
    /// [`HistoryIndex::forget_before`]); returns how many messages it dropped.
    fn forget_before(&mut self, source: Source, first: u64) -> u64 {
        let mut dropped = 0;
        for group in &mut self.groups {
            let before = group.events.len();
            group
                .events
                .retain(|e| e.source != source || e.sequence >= first);
            dropped += before - group.events.len();
        }
        if dropped == 0 {
            return 0;
        }
        // Renumber the groups that keep a message, and every table with them.
        let mut renumbered = Vec::with_capacity(self.groups.len());
        let mut kept = Vec::new();
        for group in std::mem::take(&mut self.groups) {
            if group.events.is_empty() {
                renumbered.push(None);
            } else {
                renumbered.push(Some(kept.len()));
                kept.push(group);
            }
        }
        self.groups = kept;
        let remap = |groups: &mut Vec<usize>| {
            groups.retain_mut(|g| match renumbered[*g] {
                Some(n) => {
                    *g = n;
                    true
                }
                None => false,
            });
            !groups.is_empty()
        };
        self.by_correlation.retain(|_, g| match renumbered[*g] {
            Some(n) => {
                *g = n;
                true
            }
            None => false,
        });
        self.branches.retain(|_, groups| remap(groups));
        self.pull_requests.retain(|_, groups| remap(groups));
        self.commits.retain(|_, groups| remap(groups));
        dropped as u64
    }

    /// The groups `filter` selects (each once).
    fn groups_of(&self, filter: &HistoryFilter) -> Vec<usize> {
        let mut groups: Vec<usize> = match filter {
            HistoryFilter::All => return (0..self.groups.len()).collect(),
            HistoryFilter::Branch(b) => self.branches.get(b).cloned().unwrap_or_default(),
            HistoryFilter::PullRequest(n) => self.pull_requests.get(n).cloned().unwrap_or_default(),
            HistoryFilter::Commit(prefix) => self
                .commits
                .range(prefix.clone()..)
                .take_while(|(c, _)| c.starts_with(prefix.as_str()))
                .flat_map(|(_, g)| g.iter().copied())
                .collect(),
        };
        groups.sort_unstable();
        groups.dedup();
        groups
    }
}

/// The index (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryIndex {
    /// By the subject's `<owner>.<repo>` tokens.
    repositories: HashMap<String, Repository>,
    events_position: u64,
    webhooks_position: u64,
    messages: u64,
    /// What [`HistoryIndex::forget_before`] last dropped below, per source.
    events_forgotten_below: u64,
    webhooks_forgotten_below: u64,
}

/// The `<owner>.<repo>` tokens of a subject the history of a repository reads (`None` for
/// other subjects).
fn repository_of(source: Source, subject: &str) -> Option<&str> {
    let mut tokens = subject.splitn(4, '.');
    let (prx, domain, _kind, rest) = (
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
    );
    let webhook_domain = matches!(source, Source::Webhooks);
    if prx != "prx" || (webhook_domain && domain != "webhook") {
        return None;
    }
    // Exactly two more tokens, both non-empty.
    let (owner, repo) = rest.split_once('.')?;
    (!owner.is_empty() && !repo.is_empty() && !repo.contains('.')).then_some(rest)
}

impl HistoryIndex {
    /// The last sequence applied from `source` (0 = none).
    pub fn position(&self, source: Source) -> u64 {
        match source {
            Source::Events => self.events_position,
            Source::Webhooks => self.webhooks_position,
        }
    }

    /// Messages indexed (in a repository's history).
    pub fn len(&self) -> u64 {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Folds the message stored at `sequence` of `source` under `subject` (an undecodable one
    /// as an empty envelope: it is part of its repository's whole history, of no branch).
    /// Sequences at or below the source's position change nothing.
    pub fn apply(
        &mut self,
        source: Source,
        sequence: u64,
        subject: &str,
        stored_at: i128,
        envelope: &Envelope,
    ) {
        let position = match source {
            Source::Events => &mut self.events_position,
            Source::Webhooks => &mut self.webhooks_position,
        };
        if sequence <= *position {
            return;
        }
        *position = sequence;
        let Some(repository) = repository_of(source, subject) else {
            return;
        };
        self.messages += 1;
        if !self.repositories.contains_key(repository) {
            self.repositories
                .insert(repository.to_owned(), Repository::default());
        }
        let repository = self
            .repositories
            .get_mut(repository)
            .expect("inserted above");
        let group = if envelope.correlation_id.is_empty() {
            None
        } else {
            repository
                .by_correlation
                .get(&envelope.correlation_id)
                .copied()
        };
        let group = group.unwrap_or_else(|| {
            repository.groups.push(Group::default());
            let group = repository.groups.len() - 1;
            if !envelope.correlation_id.is_empty() {
                repository
                    .by_correlation
                    .insert(envelope.correlation_id.clone(), group);
            }
            group
        });
        repository.groups[group].events.push(EventRef {
            source,
            sequence,
            stored_at,
        });
        if let Some(facts) = own_facts(envelope) {
            if let Some(branch) = facts.branch {
                repository.add_key(group, Key::Branch(branch));
            }
            if let Some(n) = facts.pull_request {
                repository.add_key(group, Key::PullRequest(n));
            }
            if let Some(commit) = facts.commit {
                repository.add_key(group, Key::Commit(commit));
            }
        }
    }

    /// Forgets the messages of `source` below sequence `first` (the stream's first sequence:
    /// the older ones expired or were purged), so the index holds what the stream holds and
    /// does not grow with the log's whole past. A group keeps the branch, pull request and
    /// commit its expired messages named while it has a message left (a skip decision stays in
    /// its push's branch after the push's webhook expired). Returns how many it dropped; a
    /// `first` at or below an earlier call's changes nothing and costs nothing.
    pub fn forget_before(&mut self, source: Source, first: u64) -> u64 {
        let below = match source {
            Source::Events => &mut self.events_forgotten_below,
            Source::Webhooks => &mut self.webhooks_forgotten_below,
        };
        if first <= *below {
            return 0;
        }
        *below = first;
        let mut dropped = 0;
        for repository in self.repositories.values_mut() {
            dropped += repository.forget_before(source, first);
        }
        self.repositories.retain(|_, r| !r.groups.is_empty());
        self.messages -= dropped;
        dropped
    }

    /// The messages of `filter`'s history of the repository with subject tokens `repository`
    /// (`<owner>.<repo>`, as [`prx_ci_shared::bus::subject::repository_tokens`] gives them), in
    /// the order the scanning query gave: each stream in stream order, merged by store time
    /// (webhooks first on equal times). Its cost grows with the answer, not the log.
    pub fn select(&self, repository: &str, filter: &HistoryFilter) -> Vec<EventRef> {
        let Some(repo) = self.repositories.get(repository) else {
            return Vec::new();
        };
        let (mut webhooks, mut events): (Vec<EventRef>, Vec<EventRef>) = repo
            .groups_of(filter)
            .into_iter()
            .flat_map(|g| repo.groups[g].events.iter().copied())
            .partition(|e| e.source == Source::Webhooks);
        webhooks.sort_unstable_by_key(|e| e.sequence);
        events.sort_unstable_by_key(|e| e.sequence);
        merge_by_time(webhooks, events)
    }
}

/// Merges two lists (each in stream order) into one ordered by store time; each list's own
/// order is always kept, and on equal times `first` goes first.
pub fn merge_by_time(first: Vec<EventRef>, second: Vec<EventRef>) -> Vec<EventRef> {
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut a, mut b) = (first.into_iter().peekable(), second.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.stored_at < x.stored_at => b.next(),
            (Some(_), _) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

#[cfg(test)]
#[path = "history_index_tests.rs"]
mod tests;
