//! A build's page (`/builds/<key>`): its facts, phases with a bar per phase, the variables the
//! dispatcher set and the ones the build exported, its log, what the publisher did per
//! parameter and why, and what the notifier posted. Refreshed live on topic `build:<key>`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use prx_ci_proto::v1::{self, BuildView, NotificationChannel};
use prx_ci_shared::domain::push_position::display_wire;

use super::builds::{architecture, lane, urlencoding};
use crate::dashboard_projection::{BuildDetail, PublishOutcome};
use crate::web::layout::{self, Section};
use crate::web::{Session, Web, render};

/// `GET /builds/<key>`.
pub async fn page(State(web): State<Web>, session: Session, Path(key): Path<String>) -> Response {
    let found = {
        let projection = web.projection.read().await;
        projection
            .build(&key)
            .map(|(view, detail)| (view, detail.clone()))
    };
    let Some((view, detail)) = found else {
        let body = html! {
            h1 { "Build not found" }
            p { "No build " code { (key) } " is known (finished builds are kept up to "
                code { "[ops] keep_finished_builds" } ")." }
        };
        return (
            StatusCode::NOT_FOUND,
            render("Build not found", Section::Builds, &session, "", body),
        )
            .into_response();
    };
    let title = format!(
        "{} {}",
        view.build.as_ref().map_or("", |b| b.repository.as_str()),
        layout::short(view.build.as_ref().map_or("", |b| b.commit.as_str()))
    );
    let topics = format!("build:{key}");
    render(
        &title,
        Section::Builds,
        &session,
        &topics,
        body(&view, &detail),
    )
    .into_response()
}

/// The page's body (pure: the view and details in, markup out).
pub fn body(view: &BuildView, detail: &BuildDetail) -> Markup {
    let build = view.build.clone().unwrap_or_default();
    let repository = build.repository.as_str();
    let branch = lane(view);
    let requested = detail.requested.clone().unwrap_or_default();
    html! {
        h1 { (repository) " · " code { (layout::short(&build.commit)) } " · " (layout::state(view.state())) }
        dl.facts {
            dt { "Repository" } dd { (repository) }
            dt { "Branch" } dd {
                @if branch.starts_with("PR #") { (branch) }
                @else if !branch.is_empty() {
                    a href=(format!("/branches/{}/{}", repository, urlencoding(&branch))) { (branch) }
                }
            }
            dt { "Commit" } dd.mono {
                (build.commit)
                @if !branch.is_empty() && !branch.starts_with("PR #") {
                    " " a.rebuild href=(super::actions::rebuild_href(repository, &branch, &build.commit)) { "Rebuild…" }
                }
            }
            dt { "Architecture" } dd { (architecture(view)) }
            dt { "Build id" } dd.mono { (build.build_id) }
            dt { "Backend" } dd { (build.backend) " " (build.project) " " (build.region) }
            dt { "Requested" } dd { (layout::time(view.requested_at.as_ref())) }
            dt { "Started" } dd { (layout::time(detail.started_at.as_ref())) }
            @if view.duration_ms > 0 { dt { "Duration" } dd { (layout::duration(view.duration_ms)) } }
            @if !detail.current_phase.is_empty() { dt { "Phase now" } dd { (detail.current_phase) } }
            dt { "Push position" } dd.mono { (display_wire(view.push_sequence)) }
            dt { "Delivery" } dd.mono { (view.correlation_id) }
            @if requested.rerun > 0 { dt { "Re-run" } dd { "automatic re-run #" (requested.rerun) } }
            @if !build.retry_of.is_empty() { dt { "Retry of" } dd.mono { (build.retry_of) } }
            @if let Some(c) = &detail.cancelled {
                dt { "Cancelled" } dd { "superseded by " code { (layout::short(&c.superseded_by_commit)) }
                    " (push " (display_wire(c.superseded_by_sequence)) ")" }
            }
            @if let Some(c) = &detail.completed && !c.failed_phase.is_empty() {
                dt { "Failed phase" } dd.error { (c.failed_phase) ": " (c.failure_message) }
            }
        }

        h2 { "Phases" }
        (phases(detail))

        h2 { "Log" }
        (log(&build))

        h2 { "Publishing" }
        (publishes(detail))

        h2 { "Notifications" }
        (notifications(detail))

        h2 { "Variables the dispatcher set" }
        (variables("variables", requested.environment.iter()))

        h2 { "Variables the build exported" }
        p.muted { "Untrusted: they supply artifact values and may turn publishing off, nothing else." }
        @match &detail.completed {
            Some(c) => (variables("exported", c.exported_variables.iter())),
            None => p.muted { "Known when the build finishes." },
        }
    }
}

fn phases(detail: &BuildDetail) -> Markup {
    let longest = detail
        .phases
        .iter()
        .map(|p| p.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    html! {
        @if detail.phases.is_empty() {
            p.muted { "No phase has finished yet." }
        }
        ol.phases id="phases" {
            @for phase in &detail.phases {
                @let failed = !phase.status.is_empty() && phase.status != "SUCCEEDED";
                li data-phase=(phase.name) data-phase-status=(phase.status) {
                    span { (phase.name) " " span.muted { (phase.status.to_lowercase()) } }
                    meter class=(if failed { "bar failed" } else { "bar" }) min="0" max=(longest)
                        value=(phase.duration_ms)
                        aria-label=(format!("{} took {}", phase.name, layout::duration(phase.duration_ms))) {}
                    span { (layout::duration(phase.duration_ms)) }
                }
                @if !phase.message.is_empty() { li.error { (phase.message) } }
            }
        }
    }
}

fn log(build: &v1::BuildRef) -> Markup {
    html! {
        @if build.log_url.is_empty() {
            p.muted { "No log yet." }
        } @else if build.log_url.starts_with("file://") {
            p { "Local build log: " code { (build.log_url) } }
        } @else {
            p { a href=(build.log_url) rel="noreferrer" { "The build's log (CodeBuild console, CloudWatch)" } }
        }
    }
}

fn publishes(detail: &BuildDetail) -> Markup {
    html! {
        @if detail.publishes.is_empty() {
            p.muted { "Nothing published or skipped (yet)." }
        } @else {
            div.table-wrap { table id="publishes" {
                thead { tr { th { "Parameter" } th { "Value" } th { "Outcome" } th { "Why" } th.wide { "At" } } }
                tbody { @for (at, outcome) in &detail.publishes {
                    @match outcome {
                        PublishOutcome::Applied(a) => tr data-outcome="written" {
                            td.mono { a href=(format!("/parameter?name={}", urlencoding(&a.parameter))) { (a.parameter) } }
                            td.value { (a.value) }
                            td { span.status.status-succeeded { "✓ written" } }
                            td { "version " (a.version) " · label " code { (a.label) } }
                            td.wide { (layout::time(Some(at))) }
                        },
                        PublishOutcome::Skipped(s) => tr data-outcome="skipped" {
                            td.mono { @if s.parameter.is_empty() { span.muted { "(whole build)" } } @else {
                                a href=(format!("/parameter?name={}", urlencoding(&s.parameter))) { (s.parameter) } } }
                            td.value { (s.value) }
                            td { span class=(format!("status outcome-{}", skip_class(s))) { "– skipped: " (skip_reason(s)) } }
                            td { @if !s.check.is_empty() { (s.check) ": " } (s.detail)
                                @if !s.superseded_by_commit.is_empty() { " (newer push " code { (layout::short(&s.superseded_by_commit)) } ")" }
                                @if !s.mapping.is_empty() { " mapping " code { (s.mapping) } } }
                            td.wide { (layout::time(Some(at))) }
                        },
                    }
                } }
            } }
        }
    }
}

/// A skip reason as words (`superseded`, `publishing disabled`).
pub fn skip_reason(skip: &v1::PublishSkipped) -> String {
    skip.reason()
        .as_str_name()
        .trim_start_matches("PUBLISH_SKIP_REASON_")
        .to_ascii_lowercase()
        .replace('_', " ")
}

fn skip_class(skip: &v1::PublishSkipped) -> &'static str {
    if skip.reason() == v1::PublishSkipReason::Superseded {
        "superseded"
    } else {
        "skipped"
    }
}

fn notifications(detail: &BuildDetail) -> Markup {
    html! {
        @if detail.notifications.is_empty() {
            p.muted { "Nothing delivered yet." }
        } @else {
            ul id="notifications" {
                @for (at, n) in &detail.notifications {
                    li {
                        @match n.channel() {
                            NotificationChannel::Slack => { "Slack message " (n.action) " " code { (n.reference) } }
                            NotificationChannel::GithubStatus => { "GitHub commit status " code { (n.reference) } ": " strong { (n.action) } }
                            NotificationChannel::Unspecified => { (n.action) " " (n.reference) }
                        }
                        " " span.muted { (layout::time(Some(at))) }
                    }
                }
            }
        }
    }
}

fn variables<'a>(id: &str, vars: impl Iterator<Item = (&'a String, &'a String)>) -> Markup {
    let mut vars: Vec<_> = vars.collect();
    vars.sort();
    html! {
        @if vars.is_empty() { p.muted { "None." } } @else {
            div.table-wrap { table id=(id) {
                thead { tr { th { "Name" } th { "Value" } } }
                tbody { @for (name, value) in vars { tr { td.mono { (name) } td.value { (value) } } } }
            } }
        }
    }
}
