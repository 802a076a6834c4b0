//! A build's page (`/builds/<key>`): its facts, phases with a bar per phase, the variables the
//! dispatcher set and the ones the build exported, its log, what the publisher did per
//! parameter and why, and what the notifier posted. Refreshed live on topic `build:<key>`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use prx_ci_proto::v1::{self, BuildView, NotificationChannel};
use prx_ci_shared::codebuild::build::cloudwatch_log_group_url;
use prx_ci_shared::domain::push_position::display_wire;

use super::builds::{architecture, lane, urlencoding};
use super::notice::NoticeSettings;
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
        body(&view, &detail, &web.notice),
    )
    .into_response()
}

/// The page's body (pure: the view and details in, markup out).
pub fn body(view: &BuildView, detail: &BuildDetail, notice: &NoticeSettings) -> Markup {
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
        (log(&view.key, &build))

        h2 { "Publishing" }
        (publishes(detail))

        h2 { "Notifications" }
        (notifications(detail))
        (super::notice::section(&detail.notice, notice))

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

/// The log: a local build's streamed into `pre#log` by `log.js` (kept across live updates,
/// `data-keep`, while its source is the same); a CodeBuild build's console and CloudWatch links.
fn log(key: &str, build: &v1::BuildRef) -> Markup {
    let local = build.log_url.starts_with("file://");
    let source = format!("/builds/{}/log", urlencoding(key));
    html! {
        div.log-section id="log-section" data-keep=[local.then_some(source.as_str())] {
            @if build.log_url.is_empty() {
                p.muted { "No log yet." }
            } @else if local {
                p.log-head {
                    span.muted { "Local build log " code { (build.log_url) } }
                    label { input type="checkbox" id="log-follow" checked; " follow" }
                }
                pre.log id="log" data-log-src=(source) tabindex="0" aria-label="Build log" aria-live="off" {}
                noscript { p.muted { "The log streams with JavaScript on; the runner keeps it in the file above." } }
            } @else {
                ul.links {
                    @if build.log_url.starts_with("https://") {
                        li { a href=(build.log_url) rel="noreferrer" { "The build in the CodeBuild console" } }
                    } @else {
                        li { "Log link (not a web link): " code { (build.log_url) } }
                    }
                    @if let Some(url) = cloudwatch_log_group_url(&build.region, &build.project) {
                        li { a href=(url) rel="noreferrer" { "Its log group in CloudWatch" } }
                    }
                }
            }
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
                            td { span class=(format!("status outcome-{}", skip_class(s))) { "– skipped: " (skip_reason(s.reason())) } }
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
pub fn skip_reason(reason: v1::PublishSkipReason) -> String {
    reason
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

#[cfg(test)]
mod tests {
    use prx_ci_shared::notice::fixtures::{build_ref, completed, envelope, started};

    use super::*;

    fn page(build: v1::BuildRef, detail: &BuildDetail) -> String {
        let view = BuildView {
            key: "r-1".into(),
            build: Some(build),
            ..Default::default()
        };
        body(&view, detail, &NoticeSettings::default()).into_string()
    }

    #[test]
    fn a_local_builds_log_streams_and_a_codebuild_build_links_its_consoles() {
        let local = v1::BuildRef {
            log_url: "file:///data/runner/builds/x.log".into(),
            ..Default::default()
        };
        let html = page(local, &BuildDetail::default());
        assert!(html.contains(r#"id="log""#), "{html}");
        assert!(
            html.contains(r#"data-log-src="/builds/r%2D1/log""#),
            "{html}"
        );
        assert!(html.contains(r#"data-keep="/builds/r%2D1/log""#), "{html}");
        assert!(html.contains(r#"id="log-follow""#));

        let html = page(build_ref(), &BuildDetail::default());
        assert!(!html.contains(r#"id="log""#), "{html}");
        assert!(html.contains(r#"href="https://example.test/log""#));
        assert!(html.contains(
            "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/$252Faws$252Fcodebuild$252Finfrastructure-ci-Runner2"
        ), "{html}");
    }

    #[test]
    fn the_page_shows_the_message_and_status_the_notifier_would_post() {
        let mut detail = BuildDetail::default();
        detail.notice.apply(&envelope("s", started())).unwrap();
        let html = page(build_ref(), &detail);
        assert!(html.contains(r#"data-state="pending""#), "{html}");
        detail
            .notice
            .apply(&envelope("c", completed(v1::BuildStatus::Failed)))
            .unwrap();
        let html = page(build_ref(), &detail);
        assert!(html.contains(r#"id="slack-message""#), "{html}");
        assert!(html.contains("Failed to build"), "{html}");
        assert!(html.contains(r#"data-state="failure""#), "{html}");
        assert!(html.contains("prx-ci/x86_64"));
    }
}
