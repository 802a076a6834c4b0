//! The Builds page (`/`): builds in flight, then recent ones, filtered by repository, branch,
//! status and architecture; refreshed live on topic `builds`.

use axum::extract::{Query, State};
use axum::response::Html;
use maud::html;
use prx_ci_proto::v1::{Architecture, BuildState, BuildView, ordering_key::Lane};
use serde::Deserialize;

use crate::web::layout::{self, Section};
use crate::web::{Session, Web, render};

/// The filters (query string); empty = any.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filters {
    pub repository: String,
    pub branch: String,
    /// A state word (`running`, `failed`, ...; see [`layout::state_word`]).
    pub status: String,
    /// `x86_64` or `aarch64`.
    pub architecture: String,
}

/// A build's branch, or `PR #n` for a pull request.
pub fn lane(view: &BuildView) -> String {
    match view.ordering_key.as_ref().and_then(|k| k.lane.as_ref()) {
        Some(Lane::Branch(branch)) => branch.clone(),
        Some(Lane::PullRequest(n)) => format!("PR #{n}"),
        None => String::new(),
    }
}

/// `x86_64` / `aarch64` / "".
pub fn architecture(view: &BuildView) -> &'static str {
    layout::architecture(
        view.build
            .as_ref()
            .map_or(Architecture::Unspecified, |b| b.architecture()),
    )
}

impl Filters {
    /// Whether `view` passes every filter.
    /// Runs for every kept build when a filter is set, so it copies nothing it can borrow.
    pub fn matches(&self, view: &BuildView) -> bool {
        let repository = view.build.as_ref().map_or("", |b| b.repository.as_str());
        let branch_matches = || match view.ordering_key.as_ref().and_then(|k| k.lane.as_ref()) {
            Some(Lane::Branch(branch)) => *branch == self.branch,
            _ => lane(view) == self.branch,
        };
        (self.repository.is_empty() || repository.eq_ignore_ascii_case(&self.repository))
            && (self.branch.is_empty() || branch_matches())
            && (self.status.is_empty() || layout::state_word(view.state()) == self.status)
            && (self.architecture.is_empty() || architecture(view) == self.architecture)
    }
}

const STATES: [BuildState; 8] = [
    BuildState::Requested,
    BuildState::Running,
    BuildState::Succeeded,
    BuildState::Failed,
    BuildState::Fault,
    BuildState::Stopped,
    BuildState::TimedOut,
    BuildState::Cancelled,
];

/// `GET /`.
pub async fn page(
    State(web): State<Web>,
    session: Session,
    Query(filters): Query<Filters>,
) -> Html<String> {
    let (in_flight, recent, repositories) = {
        let projection = web.projection.read().await;
        let builds = projection.builds();
        let in_flight: Vec<BuildView> = builds
            .in_flight("")
            .into_iter()
            .rev()
            .filter(|v| filters.matches(v))
            .collect();
        let recent: Vec<BuildView> =
            builds.recent_matching(web.recent_builds, |v| filters.matches(v));
        let repositories: Vec<String> = projection
            .branches()
            .map(|(repository, _)| repository.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        (in_flight, recent, repositories)
    };
    let body = html! {
        h1 { "Builds" }
        form.filters id="filters" method="get" action="/" {
            label { "Repository"
                select name="repository" {
                    option value="" { "any" }
                    @for repository in &repositories {
                        option value=(repository) selected[*repository == filters.repository] { (repository) }
                    }
                }
            }
            label { "Branch" input name="branch" value=(filters.branch) placeholder="any"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for state in STATES {
                        @let word = layout::state_word(state);
                        option value=(word) selected[word == filters.status] { (word.replace('_', " ")) }
                    }
                }
            }
            label { "Architecture"
                select name="architecture" {
                    option value="" { "any" }
                    @for arch in ["x86_64", "aarch64"] {
                        option value=(arch) selected[arch == filters.architecture] { (arch) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p.muted { (in_flight.len()) " in flight · " (recent.len()) " recent" }
        div.table-wrap {
            table id="builds" {
                caption.muted { "Newest first; in-flight builds above finished ones." }
                thead { tr {
                    th scope="col" { "Status" }
                    th scope="col" { "Repository" }
                    th scope="col" { "Branch" }
                    th scope="col" { "Commit" }
                    th scope="col" { "Arch" }
                    th.wide scope="col" { "Requested" }
                    th.wide scope="col" { "Duration" }
                } }
                tbody {
                    @for view in in_flight.iter().chain(recent.iter()) {
                        @let build = view.build.clone().unwrap_or_default();
                        tr data-build=(view.key)
                           data-status=(view.state().as_str_name().trim_start_matches("BUILD_STATE_"))
                           data-repository=(build.repository) {
                            td { a href=(format!("/builds/{}", urlencoding(&view.key))) { (layout::state(view.state())) } }
                            td { (build.repository) }
                            td { (lane(view)) }
                            td.mono { (layout::short(&build.commit)) }
                            td { (architecture(view)) }
                            td.wide { (layout::time(view.requested_at.as_ref())) }
                            td.wide { @if view.duration_ms > 0 { (layout::duration(view.duration_ms)) } }
                        }
                    }
                }
            }
        }
        @if in_flight.is_empty() && recent.is_empty() {
            p.notice { "No builds yet. Push to a repository whose webhook points here, or run "
                code { "prx-ci demo" } "." }
        }
    };
    render("Builds", Section::Builds, &session, "builds", body)
}

/// A path segment, percent-encoded.
pub fn urlencoding(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use prx_ci_proto::v1::{self, OrderingKey};

    use super::*;

    #[test]
    fn filters_match_each_field() {
        let mut view = BuildView {
            key: "r1".into(),
            build: Some(v1::BuildRef {
                repository: "PRX/app".into(),
                architecture: Architecture::Aarch64 as i32,
                ..Default::default()
            }),
            ordering_key: Some(OrderingKey {
                repository: "PRX/app".into(),
                lane: Some(Lane::Branch("main".into())),
            }),
            ..Default::default()
        };
        view.set_state(BuildState::Running);
        let all = Filters::default();
        assert!(all.matches(&view));
        let f = |repository: &str, branch: &str, status: &str, architecture: &str| Filters {
            repository: repository.into(),
            branch: branch.into(),
            status: status.into(),
            architecture: architecture.into(),
        };
        assert!(f("prx/app", "main", "running", "aarch64").matches(&view));
        assert!(!f("PRX/other", "", "", "").matches(&view));
        assert!(!f("", "dev", "", "").matches(&view));
        assert!(!f("", "", "failed", "").matches(&view));
        assert!(!f("", "", "", "x86_64").matches(&view));
        view.ordering_key = Some(OrderingKey {
            repository: "PRX/app".into(),
            lane: Some(Lane::PullRequest(7)),
        });
        assert!(f("", "PR #7", "", "").matches(&view));
        assert!(!f("", "main", "", "").matches(&view));
        view.ordering_key = None;
        assert!(!f("", "main", "", "").matches(&view));
        assert!(f("PRX/app", "", "", "").matches(&view));
    }
}
