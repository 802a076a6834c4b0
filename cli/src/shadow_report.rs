//! `prx-ci shadow-report`: in shadow mode, what this system would have done beside what the
//! original did, per webhook and per parameter (docs/migrating.md).

use std::io::Write as _;

use prx_ci_proto::v1;
use prx_ci_shared::bus::envelope::timestamp;
use prx_ci_shared::domain::{OrderingKey, short_sha};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use prx_ci_ops::shadow_report::{describe, verdict_name};

use crate::history::{OpsArgs, arch, status_error};

/// Arguments of `prx-ci shadow-report`.
#[derive(Debug, clap::Args)]
pub struct ShadowReportArgs {
    /// Only this `owner/repo`.
    #[arg(long)]
    repository: Option<String>,
    /// Only events stored from this time on (RFC 3339, e.g. the day shadow mode began).
    #[arg(long, value_parser = parse_time)]
    since: Option<OffsetDateTime>,
    /// Only the webhooks that disagree (and the parameters that differ).
    #[arg(long)]
    differences: bool,
    /// The whole report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2026-12-01T00:00:00Z): {e}"))
}

pub async fn run(args: ShadowReportArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .shadow_report(v1::ShadowReportRequest {
            repository: args.repository.unwrap_or_default(),
            since: args.since.map(timestamp),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", to_json(&response))?;
    } else {
        for line in render(&response, args.differences) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn verdict(w: &v1::ShadowWebhook) -> &'static str {
    verdict_name(w.verdict())
}

fn lane(w: &v1::ShadowWebhook) -> String {
    w.ordering_key
        .as_ref()
        .and_then(OrderingKey::from_proto)
        .map_or_else(|| w.repository.clone(), |k| k.to_string())
}

fn archs(list: &[i32]) -> String {
    if list.is_empty() {
        return "nothing".to_owned();
    }
    list.iter().map(|a| arch(*a)).collect::<Vec<_>>().join("+")
}

/// The report as text: a summary line, then webhooks (in GitHub's push order per lane), then
/// parameters.
fn render(report: &v1::ShadowReportResponse, differences_only: bool) -> Vec<String> {
    let count = |v: v1::ShadowVerdict| report.webhooks.iter().filter(|w| w.verdict() == v).count();
    let regressed = report
        .parameters
        .iter()
        .filter(|p| p.original_regressed)
        .count();
    let differing = report.parameters.iter().filter(|p| !p.agree).count();
    let mut lines = vec![format!(
        "{} webhooks: {} agree, {} disagree, {} waiting for the original's build; {} parameters: {} differ, {} moved back by the original ({} events read)",
        report.webhooks.len(),
        count(v1::ShadowVerdict::Agree),
        count(v1::ShadowVerdict::Disagree),
        count(v1::ShadowVerdict::Waiting),
        report.parameters.len(),
        differing,
        regressed,
        report.events_read,
    )];
    lines.push(String::new());
    lines.push("webhooks:".to_owned());
    for w in &report.webhooks {
        if differences_only && w.verdict() == v1::ShadowVerdict::Agree {
            continue;
        }
        let decided = if w.this_system_builds.is_empty() && !w.this_system_skip.is_empty() {
            format!("skipped ({})", w.this_system_skip)
        } else {
            format!("builds {}", archs(&w.this_system_builds))
        };
        lines.push(format!(
            "  {:<8} {} {} (delivery {}): this system {decided}; the original built {}",
            verdict(w),
            lane(w),
            short_sha(&w.commit),
            w.delivery_id,
            archs(&w.original_builds),
        ));
        for d in &w.differences {
            lines.push(format!("             {}", describe(d)));
        }
    }
    lines.push(String::new());
    lines.push("parameters:".to_owned());
    for p in &report.parameters {
        if differences_only && p.agree {
            continue;
        }
        let side = |value: &str, commit: &str, writes: u32| {
            if writes == 0 {
                "nothing written".to_owned()
            } else {
                format!("{value} (commit {}, {writes} writes)", short_sha(commit))
            }
        };
        lines.push(format!(
            "  {} {}",
            if p.agree { "agree   " } else { "differ  " },
            p.name
        ));
        lines.push(format!(
            "             this system: {}",
            side(
                &p.this_system_value,
                &p.this_system_commit,
                p.this_system_writes
            )
        ));
        lines.push(format!(
            "             original:    {}",
            side(&p.original_value, &p.original_commit, p.original_writes)
        ));
        if p.original_regressed {
            lines.push(format!(
                "             the original moved the pointer back: its last write, from commit {}, is an older push than commit {}, which it had written before",
                short_sha(&p.original_commit),
                short_sha(&p.regressed_from_commit),
            ));
        }
    }
    if !report.unmatched_original_builds.is_empty() {
        lines.push(String::new());
        lines.push("original builds matching no webhook of this system:".to_owned());
        for b in &report.unmatched_original_builds {
            lines.push(format!("  {b}"));
        }
    }
    lines
}

fn to_json(report: &v1::ShadowReportResponse) -> serde_json::Value {
    let webhooks: Vec<serde_json::Value> = report
        .webhooks
        .iter()
        .map(|w| {
            serde_json::json!({
                "delivery_id": w.delivery_id,
                "repository": w.repository,
                "lane": lane(w),
                "commit": w.commit,
                "push_sequence": w.push_sequence,
                "verdict": verdict(w),
                "this_system_builds": w.this_system_builds.iter().map(|a| arch(*a)).collect::<Vec<_>>(),
                "this_system_skip": w.this_system_skip,
                "original_builds": w.original_builds.iter().map(|a| arch(*a)).collect::<Vec<_>>(),
                "differences": w.differences.iter().map(|d| serde_json::json!({
                    "kind": d.kind().as_str_name().trim_start_matches("SHADOW_DIFFERENCE_KIND_").to_ascii_lowercase(),
                    "architecture": arch(d.architecture),
                    "variable": d.variable,
                    "this_system": d.this_system_set.then_some(&d.this_system),
                    "original": d.original_set.then_some(&d.original),
                    "text": describe(d),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let parameters: Vec<serde_json::Value> = report
        .parameters
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "agree": p.agree,
                "this_system": {"value": p.this_system_value, "commit": p.this_system_commit, "push_sequence": p.this_system_push_sequence, "writes": p.this_system_writes},
                "original": {"value": p.original_value, "commit": p.original_commit, "push_sequence": p.original_push_sequence, "writes": p.original_writes},
                "original_regressed": p.original_regressed,
                "regressed_from_commit": p.regressed_from_commit,
            })
        })
        .collect();
    serde_json::json!({
        "events_read": report.events_read,
        "webhooks": webhooks,
        "parameters": parameters,
        "unmatched_original_builds": report.unmatched_original_builds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> v1::ShadowReportResponse {
        let key = |branch: &str| {
            Some(v1::OrderingKey {
                repository: "PRX/my-app".into(),
                lane: Some(v1::ordering_key::Lane::Branch(branch.into())),
            })
        };
        let x86 = v1::Architecture::X8664 as i32;
        let webhook = |c: char, verdict: v1::ShadowVerdict| v1::ShadowWebhook {
            delivery_id: format!("d-{c}"),
            repository: "PRX/my-app".into(),
            commit: std::iter::repeat_n(c, 40).collect(),
            ordering_key: key("main"),
            verdict: verdict as i32,
            this_system_builds: vec![x86],
            original_builds: vec![x86],
            ..Default::default()
        };
        let mut b = webhook('b', v1::ShadowVerdict::Disagree);
        b.differences.push(v1::ShadowDifference {
            kind: v1::ShadowDifferenceKind::Variable as i32,
            architecture: x86,
            variable: "PRX_BRANCH".into(),
            this_system: "main".into(),
            original: "master".into(),
            this_system_set: true,
            original_set: true,
        });
        v1::ShadowReportResponse {
            webhooks: vec![webhook('a', v1::ShadowVerdict::Agree), b],
            parameters: vec![v1::ShadowParameter {
                name: "/prx/stag/Spire/MyApp/pkg/docker-image-tag".into(),
                this_system_value: "github/prx/my-app:cccccc-x86_64".into(),
                this_system_commit: "c".repeat(40),
                this_system_writes: 2,
                original_value: "github/prx/my-app:bbbbbb-x86_64".into(),
                original_commit: "b".repeat(40),
                original_writes: 3,
                original_regressed: true,
                regressed_from_commit: "c".repeat(40),
                ..Default::default()
            }],
            events_read: 11,
            unmatched_original_builds: vec![],
        }
    }

    #[test]
    fn the_text_names_each_verdict_difference_and_regression() {
        let text = render(&report(), false).join("\n");
        insta::assert_snapshot!(text);
        let only = render(&report(), true).join("\n");
        assert!(!only.contains("d-a"), "{only}");
        assert!(only.contains("d-b"), "{only}");
    }

    #[test]
    fn json_has_every_field_a_script_needs() {
        let json = to_json(&report());
        assert_eq!(json["webhooks"][1]["verdict"], "disagree");
        assert_eq!(json["webhooks"][1]["differences"][0]["kind"], "variable");
        assert_eq!(json["webhooks"][1]["differences"][0]["original"], "master");
        assert_eq!(json["parameters"][0]["original_regressed"], true);
        assert_eq!(json["parameters"][0]["original"]["writes"], 3);
    }
}
