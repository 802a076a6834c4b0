//! Branches (`/branches`) and a branch's timeline (`/branches/<owner>/<repo>/<branch>`): each
//! push in GitHub's order with its decision, its builds per architecture and what it published,
//! so a superseded or out-of-order build reads at a glance. Refreshed live on topic
//! `branch:<repo>/<branch>`.

use axum::extract::{Path, State};
use axum::response::Html;
use maud::{Markup, html};
use prx_ci_shared::domain::push_position::display_wire;

use super::builds::urlencoding;
use crate::dashboard_projection::{DashboardProjection, Decision, Outcome, Push};
use crate::web::layout::{self, Section};
use crate::web::{Session, Web, render};

/// `GET /branches`.
pub async fn index(State(web): State<Web>, session: Session) -> Html<String> {
    let body = {
        let projection = web.projection.read().await;
        html! {
            h1 { "Branches" }
            @let branches: Vec<_> = projection.branches().collect();
            @if branches.is_empty() { p.notice { "No pushes yet." } }
            ul id="branches" {
                @for (repository, branch) in branches {
                    @let latest = projection.timeline(repository, branch).into_iter().next();
                    li {
                        a href=(timeline_href(repository, branch)) { (repository) " · " (branch) }
                        @if let Some(push) = latest {
                            " " span.muted { "latest " code { (layout::short(&push.commit)) } }
                            " " (outcome_badge(push.outcome()))
                        }
                    }
                }
            }
        }
    };
    render("Branches", Section::Branches, &session, "branches", body)
}

/// The link to a branch's timeline.
pub fn timeline_href(repository: &str, branch: &str) -> String {
    format!("/branches/{repository}/{}", urlencoding(branch))
}

/// `GET /branches/<owner>/<repo>/<branch>`.
pub async fn timeline(
    State(web): State<Web>,
    session: Session,
    Path((owner, repo, branch)): Path<(String, String, String)>,
) -> Html<String> {
    let repository = format!("{owner}/{repo}");
    let body = body(&*web.projection.read().await, &repository, &branch);
    let topics = format!("branch:{repository}/{branch}");
    render(
        &format!("{repository} {branch}"),
        Section::Branches,
        &session,
        &topics,
        body,
    )
}

/// The timeline's body (pure).
pub fn body(projection: &DashboardProjection, repository: &str, branch: &str) -> Markup {
    let pushes = projection.timeline(repository, branch);
    html! {
        h1 { (repository) " · " (branch) }
        p.muted { "Pushes in GitHub's order, newest first. Only the newest push's build may move a deploy parameter; an older build finishing later is skipped as superseded." }
        @if pushes.is_empty() { p.notice { "No pushes to this branch are known." } }
        ol.timeline id="timeline" {
            @for push in pushes { (push_item(projection, repository, branch, push)) }
        }
    }
}

fn outcome_badge(outcome: Outcome) -> Markup {
    let symbol = match outcome {
        Outcome::Published => "✓",
        Outcome::Superseded => "⤼",
        Outcome::Failed => "✗",
        Outcome::Building | Outcome::Pending => "◐",
        Outcome::Skipped | Outcome::NotPublished => "–",
    };
    html! {
        span class=(format!("badge outcome-{}", outcome.as_str())) {
            span aria-hidden="true" { (symbol) } " " (outcome.as_str().replace('-', " "))
        }
    }
}

fn push_item(
    projection: &DashboardProjection,
    repository: &str,
    branch: &str,
    push: &Push,
) -> Markup {
    let outcome = push.outcome();
    html! {
        li class=(format!("outcome-{}", outcome.as_str())) data-commit=(push.commit)
           data-outcome=(outcome.as_str()) {
            div {
                code { (layout::short(&push.commit)) } " " (outcome_badge(outcome)) " "
                strong { (push.message) }
            }
            div.muted {
                @if push.push_sequence == 0 { "position not decided yet" }
                @else { "push " code { (display_wire(push.push_sequence)) } }
                " · received " (layout::time(push.received_at.as_ref()))
                @if !push.pusher.is_empty() { " · pushed by " (push.pusher) }
                @if !push.requested_by.is_empty() { " · rebuild by " (push.requested_by) }
                " · " a.rebuild href=(super::actions::rebuild_href(repository, branch, &push.commit))
                    aria-label=(format!("Rebuild commit {} of {branch}", layout::short(&push.commit))) { "Rebuild…" }
            }
            @match &push.decision {
                Decision::Pending => div { "Waiting for the dispatcher's decision." },
                Decision::Skipped { reason, detail } => div { "Not built: " code { (reason) } " " (detail) },
                Decision::Built(builds) => ul {
                    @for build in builds {
                        li {
                            @let label = format!("{} build", layout::architecture(build.architecture));
                            @if projection.build(&build.key).is_some() {
                                a href=(format!("/builds/{}", urlencoding(&build.key))) { (label) }
                            } @else {
                                (label) " " span.muted { "(no longer kept)" }
                            }
                            " " (layout::state(build.state))
                            @for publish in &build.publishes {
                                " · " (super::parameters::publish_words(publish))
                            }
                        }
                    }
                },
            }
        }
    }
}
