//! What a person is shown of each parameter (`prx-ci params`): the store's value, the push
//! that wrote it (from the fence record), and the latest skipped publish (from the skips
//! bucket).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Context as _;
use async_nats::jetstream;
use prx_ci_shared::domain::push_position::display_wire;
use prx_ci_shared::domain::short_sha;
use prx_ci_shared::kv::{Records, decode_key_token};
use serde::Serialize;

use crate::fence::FenceRecord;
use crate::fence_store::FENCE_BUCKET;
use crate::parameter_store::ParameterStore;
use crate::skip_store::{SkipRecord, SkipStore};

/// One parameter, as `prx-ci params` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParameterView {
    pub parameter: String,
    /// The store's current value (`None`: not in the store).
    pub value: Option<String>,
    /// SSM version / KV revision of that value.
    pub version: Option<i64>,
    /// The commit, push sequence, ordering key, architecture and build that wrote it (from the
    /// fence record; `None` when the publisher did not write the current value).
    pub commit: Option<String>,
    pub push_sequence: Option<u64>,
    pub ordering_key: Option<String>,
    pub architecture: Option<String>,
    pub build_id: Option<String>,
    pub written_at: Option<String>,
    /// A write in flight (a claim), as `push <seq> <commit>`.
    pub in_flight: Option<String>,
    /// The latest skipped publish for this parameter.
    pub last_skip: Option<SkipRecord>,
}

impl ParameterView {
    /// One human line: `name = value  (push 42 abc1234 PRX/app@main x86_64)  last skip: ...`.
    pub fn one_line(&self) -> String {
        let mut line = format!(
            "{} = {}",
            self.parameter,
            self.value.as_deref().unwrap_or("(not set)")
        );
        match (&self.push_sequence, &self.commit) {
            (Some(seq), Some(commit)) => {
                line.push_str(&format!(
                    "  (push {} {}",
                    display_wire(*seq),
                    short_sha(commit)
                ));
                if let Some(key) = &self.ordering_key {
                    line.push_str(&format!(" {key}"));
                }
                if let Some(arch) = self.architecture.as_deref().filter(|a| !a.is_empty()) {
                    line.push_str(&format!(" {arch}"));
                }
                line.push(')');
            }
            _ if self.value.is_some() => line.push_str("  (not written by the publisher)"),
            _ => {}
        }
        if let Some(flight) = &self.in_flight {
            line.push_str(&format!("  writing: {flight}"));
        }
        if let Some(skip) = &self.last_skip {
            line.push_str(&format!(
                "  last skip: {} (push {} {}): {}",
                skip.reason,
                display_wire(skip.push_sequence),
                short_sha(&skip.commit),
                skip.detail
            ));
        }
        line
    }
}

impl fmt::Display for ParameterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Every parameter under `prefix` known to the store, the fence or the skip log, sorted by
/// name. `js` holds the fence and skip buckets; `store` is the parameter store (KV locally,
/// SSM in production).
pub async fn parameter_views(
    js: &jetstream::Context,
    store: &dyn ParameterStore,
    prefix: &str,
) -> anyhow::Result<Vec<ParameterView>> {
    let mut reports: BTreeMap<String, ParameterView> = BTreeMap::new();
    let entry = |reports: &mut BTreeMap<String, ParameterView>, name: &str| {
        reports
            .entry(name.to_owned())
            .or_insert_with(|| ParameterView {
                parameter: name.to_owned(),
                ..ParameterView::default()
            })
            .clone()
    };
    for p in store.list(prefix).await.context("cannot list parameters")? {
        let mut r = entry(&mut reports, &p.name);
        r.value = Some(p.value);
        r.version = Some(p.version);
        reports.insert(p.name, r);
    }
    for record in fence_records(js, prefix).await? {
        let mut r = entry(&mut reports, &record.parameter);
        if let Some(w) = &record.written {
            // Only claim authorship of the value the store actually holds.
            if r.value.is_none() || r.value.as_deref() == Some(w.publication.value.as_str()) {
                r.commit = Some(w.publication.commit.clone());
                r.push_sequence = Some(w.publication.position.push_sequence);
                r.ordering_key = Some(w.publication.ordering_key.clone());
                r.architecture = Some(w.publication.architecture.clone());
                r.build_id = Some(w.publication.build_id.clone());
                r.written_at = Some(w.at.clone());
            }
        }
        if let Some(c) = &record.claim {
            r.in_flight = Some(format!(
                "push {} {}",
                display_wire(c.publication.position.push_sequence),
                short_sha(&c.publication.commit)
            ));
        }
        reports.insert(record.parameter.clone(), r);
    }
    if let Ok(log) = SkipStore::open(js).await {
        for skip in log.all(prefix).await? {
            let mut r = entry(&mut reports, &skip.parameter);
            let name = skip.parameter.clone();
            r.last_skip = Some(skip);
            reports.insert(name, r);
        }
    }
    Ok(reports.into_values().collect())
}

async fn fence_records(js: &jetstream::Context, prefix: &str) -> anyhow::Result<Vec<FenceRecord>> {
    let Ok(records) = Records::<FenceRecord>::open(js, FENCE_BUCKET).await else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for key in records.keys().await? {
        if !decode_key_token(&key).is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        match records.get(&key).await {
            Ok(read) => out.extend(read.record),
            // A record this version cannot read is left out of the view.
            Err(e) if !e.is_transient() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_rendering() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let report = ParameterView {
            parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
            value: Some(format!("github/prx/app:{sha}-x86_64")),
            version: Some(4),
            commit: Some(sha.into()),
            push_sequence: Some(42),
            ordering_key: Some("PRX/app@main".into()),
            architecture: Some("x86_64".into()),
            build_id: Some("b".into()),
            written_at: Some("2026-01-01T00:00:00Z".into()),
            in_flight: None,
            last_skip: Some(SkipRecord {
                parameter: "/prx/stag/Spire/App/pkg/docker-image-tag".into(),
                reason: "SUPERSEDED".into(),
                detail: "push 42 (0123456) already published".into(),
                value: "v".into(),
                commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
                push_sequence: 40,
                build_id: "b40".into(),
                superseded_by_sequence: 42,
                superseded_by_commit: sha.into(),
                at: "2026-01-01T00:00:01Z".into(),
            }),
        };
        assert_eq!(
            report.one_line(),
            format!(
                "/prx/stag/Spire/App/pkg/docker-image-tag = github/prx/app:{sha}-x86_64  \
                 (push #42 0123456 PRX/app@main x86_64)  last skip: SUPERSEDED (push #40 fedcba9): \
                 push 42 (0123456) already published"
            ),
            "positions written before GitHub's order read as their stream sequence"
        );
        let positioned = ParameterView {
            push_sequence: Some(
                prx_ci_shared::domain::push_position::PushPosition::new(1_795_000_000, 129, 7)
                    .wire(),
            ),
            last_skip: None,
            ..report.clone()
        };
        assert!(
            positioned
                .one_line()
                .contains("(push 2026-11-18T11:06:40Z+1#7 0123456 PRX/app@main x86_64)"),
            "{}",
            positioned.one_line()
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["push_sequence"], 42);
        assert_eq!(json["last_skip"]["reason"], "SUPERSEDED");

        let bare = ParameterView {
            parameter: "/p".into(),
            value: Some("x".into()),
            ..ParameterView::default()
        };
        assert_eq!(bare.one_line(), "/p = x  (not written by the publisher)");
    }
}
