//! Shadow mode (`/shadow`): the report of `prx-ci shadow-report`, through the same ops API call,
//! for the migration's week of comparing (docs/migrating.md). Per webhook this system's
//! decision beside the original's builds and variables, per parameter where each left it, and
//! where the original moved a pointer back. Not refreshed live: the report reads the shadow
//! period's events on each request (`?repository=owner/repo&since=2026-12-01T00:00:00Z`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use prx_ci_proto::v1::{self, ops_server::Ops};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::shadow_report::{architecture_name, describe, verdict_name};
use crate::web::layout::{self, Section};
use crate::web::{Session, Web, render};

/// The page's filters.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    repository: String,
    /// RFC 3339; empty: everything stored.
    #[serde(default)]
    since: String,
}

fn archs(list: &[i32]) -> String {
    if list.is_empty() {
        return "nothing".to_owned();
    }
    list.iter()
        .map(|a| architecture_name(*a))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// `GET /shadow`.
pub async fn page(
    State(web): State<Web>,
    session: Session,
    Query(filter): Query<Filter>,
) -> Response {
    let failed = |status: StatusCode, message: String| {
        let body = html! { h1 { "Shadow mode" } p.error role="alert" { (message) } };
        (
            status,
            render("Shadow", Section::Shadow, &session, "", body),
        )
            .into_response()
    };
    let since = match filter.since.trim() {
        "" => None,
        text => match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(t) => Some(prx_ci_shared::bus::envelope::timestamp(t)),
            Err(e) => {
                return failed(
                    StatusCode::BAD_REQUEST,
                    format!("{text:?} is not an RFC 3339 time: {e}"),
                );
            }
        },
    };
    let request = session.api_request(v1::ShadowReportRequest {
        repository: filter.repository.trim().to_owned(),
        since,
    });
    let report = match Ops::shadow_report(&web.api, request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            return failed(StatusCode::BAD_REQUEST, status.message().to_owned());
        }
        Err(status) => {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Cannot build the report: {}", status.message()),
            );
        }
    };
    let count = |v: v1::ShadowVerdict| report.webhooks.iter().filter(|w| w.verdict() == v).count();
    let body = html! {
        h1 { "Shadow mode" }
        p.muted { "This system in shadow mode beside the original: what it decided for each webhook against what the original built, and where each left each parameter. See docs/migrating.md." }
        form.filters method="get" action="/shadow" {
            label { "Repository " input type="text" name="repository" value=(filter.repository) placeholder="owner/repo"; }
            " "
            label { "Since " input type="text" name="since" value=(filter.since) placeholder="2026-12-01T00:00:00Z"; }
            " "
            button type="submit" { "Show" }
        }
        p id="shadow-summary" {
            (report.webhooks.len()) " webhooks: " (count(v1::ShadowVerdict::Agree)) " agree, "
            (count(v1::ShadowVerdict::Disagree)) " disagree, "
            (count(v1::ShadowVerdict::Waiting)) " waiting for the original's build. "
            (report.parameters.len()) " parameters: "
            (report.parameters.iter().filter(|p| !p.agree).count()) " differ, "
            (report.parameters.iter().filter(|p| p.original_regressed).count()) " moved back by the original."
        }
        h2 { "Webhooks" }
        @if report.webhooks.is_empty() { p.notice { "No shadow decision recorded in this period." } }
        div.table-wrap { table id="shadow-webhooks" {
            thead { tr { th { "Verdict" } th { "Branch or PR" } th { "Commit" } th { "This system" } th { "Original built" } th.wide { "Differences" } } }
            tbody { @for w in &report.webhooks {
                @let lane = w.ordering_key.as_ref().and_then(prx_ci_shared::domain::OrderingKey::from_proto).map_or_else(|| w.repository.clone(), |k| k.to_string());
                tr data-delivery=(w.delivery_id) data-verdict=(verdict_name(w.verdict())) {
                    td { @match w.verdict() {
                        v1::ShadowVerdict::Agree => span.status.status-succeeded { "✓ agree" },
                        v1::ShadowVerdict::Disagree => span.status.status-failed { "✗ disagree" },
                        _ => span.status.outcome-skipped { "… waiting" },
                    } }
                    td.mono { (lane) }
                    td.commit.mono { (layout::short(&w.commit)) }
                    td { @if w.this_system_builds.is_empty() && !w.this_system_skip.is_empty() {
                        "skipped (" (w.this_system_skip) ")"
                    } @else { "builds " (archs(&w.this_system_builds)) } }
                    td { (archs(&w.original_builds)) }
                    td.wide { @if w.differences.is_empty() { "–" } @else { ul { @for d in &w.differences { li { (describe(d)) } } } } }
                }
            } }
        } }
        h2 { "Parameters" }
        @if report.parameters.is_empty() { p.notice { "Neither system wrote a parameter in this period." } }
        div.table-wrap { table id="shadow-parameters" {
            thead { tr { th { "Parameter" } th { "This system" } th { "Original" } th.wide { "Verdict" } } }
            tbody { @for p in &report.parameters {
                tr data-parameter=(p.name) data-agree=(p.agree) data-regressed=(p.original_regressed) {
                    td.mono { (p.name) }
                    td { @if p.this_system_writes == 0 { "nothing written" } @else {
                        code { (p.this_system_value) } " (" span.mono { (layout::short(&p.this_system_commit)) } ")"
                    } }
                    td { @if p.original_writes == 0 { "nothing written" } @else {
                        code { (p.original_value) } " (" span.mono { (layout::short(&p.original_commit)) } ")"
                    } }
                    td.wide {
                        @if p.agree { span.status.status-succeeded { "✓ same value" } }
                        @else { span.status.status-failed { "✗ differ" } }
                        @if p.original_regressed {
                            " — the original moved the pointer back: its last write (" span.mono { (layout::short(&p.original_commit)) } ") is an older push than " span.mono { (layout::short(&p.regressed_from_commit)) } ", which it had written before."
                        }
                    }
                }
            } }
        } }
        @if !report.unmatched_original_builds.is_empty() {
            h2 { "Original builds matching no webhook of this system" }
            ul { @for b in &report.unmatched_original_builds { li.mono { (b) } } }
        }
    };
    render("Shadow", Section::Shadow, &session, "", body).into_response()
}
