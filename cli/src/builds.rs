//! `prx-ci builds`: builds in flight and recent ones, with state and log link.

use std::io::Write as _;

use prx_ci_proto::v1;
use prx_ci_shared::domain::OrderingKey;

use crate::history::{OpsArgs, arch, rfc3339, status_error};
use prx_ci_shared::domain::short_sha;

/// Arguments of `prx-ci builds`.
#[derive(Debug, clap::Args)]
pub struct BuildsArgs {
    /// Only builds of this `owner/repo`.
    #[arg(long)]
    repository: Option<String>,
    /// How many finished builds to show (default: the server's).
    #[arg(long)]
    recent: Option<u32>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

pub async fn run(args: BuildsArgs) -> anyhow::Result<()> {
    let mut client = args.ops.connect().await?;
    let response = client
        .builds(v1::BuildsRequest {
            recent: args.recent.unwrap_or(0),
            repository: args.repository.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    for line in render(&response, args.json) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn state(view: &v1::BuildView) -> String {
    view.state()
        .as_str_name()
        .strip_prefix("BUILD_STATE_")
        .unwrap_or("?")
        .to_ascii_lowercase()
}

fn render(response: &v1::BuildsResponse, json: bool) -> Vec<String> {
    let groups = [
        ("in flight", &response.in_flight),
        ("recent", &response.recent),
    ];
    let mut lines = Vec::new();
    for (group, views) in groups {
        if !json {
            lines.push(format!("{group}:"));
            if views.is_empty() {
                lines.push("  (none)".to_owned());
            }
        }
        for view in views {
            if json {
                let mut value = serde_json::json!({
                    "group": group,
                    "key": view.key,
                    "state": state(view),
                    "updated_at": rfc3339(view.updated_at.as_ref()),
                    "requested_at": rfc3339(view.requested_at.as_ref()),
                    "correlation_id": view.correlation_id,
                    "push_sequence": view.push_sequence,
                    "failed_phase": view.failed_phase,
                    "duration_ms": view.duration_ms,
                });
                if let Some(b) = &view.build {
                    value["build"] = serde_json::json!({
                        "build_id": b.build_id,
                        "repository": b.repository,
                        "commit": b.commit,
                        "architecture": arch(b.architecture),
                        "log_url": b.log_url,
                    });
                }
                lines.push(value.to_string());
                continue;
            }
            let build = view.build.clone().unwrap_or_default();
            let key = view
                .ordering_key
                .as_ref()
                .and_then(OrderingKey::from_proto)
                .map_or_else(|| build.repository.clone(), |k| k.to_string());
            let mut line = format!(
                "  {} {:<9} {:<7} {} {} {}",
                rfc3339(view.updated_at.as_ref()),
                state(view),
                arch(build.architecture),
                short_sha(&build.commit),
                key,
                if build.log_url.is_empty() {
                    "-"
                } else {
                    &build.log_url
                },
            );
            if !view.failed_phase.is_empty() {
                line.push_str(&format!(" (failed in {})", view.failed_phase));
            }
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_render_grouped_with_state_and_log_link() {
        let view = v1::BuildView {
            key: "r1".into(),
            state: v1::BuildState::Running as i32,
            build: Some(v1::BuildRef {
                commit: "abcdef0123".into(),
                repository: "PRX/app".into(),
                architecture: v1::Architecture::X8664 as i32,
                log_url: "https://logs/1".into(),
                ..Default::default()
            }),
            ordering_key: Some(v1::OrderingKey {
                repository: "PRX/app".into(),
                lane: Some(v1::ordering_key::Lane::PullRequest(4)),
            }),
            ..Default::default()
        };
        let response = v1::BuildsResponse {
            in_flight: vec![view],
            recent: vec![],
        };
        assert_eq!(
            render(&response, false),
            [
                "in flight:",
                "   running   x86_64  abcdef0 PRX/app#4 https://logs/1",
                "recent:",
                "  (none)"
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&render(&response, true)[0]).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["build"]["log_url"], "https://logs/1");
    }
}
