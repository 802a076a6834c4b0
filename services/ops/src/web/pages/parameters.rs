//! Parameters (`/parameters`): every parameter the publisher wrote or skipped, with its current
//! value, commit, push and owner; one parameter's history of writes and skips with reasons,
//! newest first (`/parameter?name=...`). Refreshed live on topics `parameters` /
//! `parameter:<name>`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use prx_ci_shared::domain::push_position::display_wire;
use serde::Deserialize;

use super::build::skip_reason;
use super::builds::urlencoding;
use crate::dashboard_projection::{ParameterEntry, PublishOutcome, PushPublish};
use crate::web::layout::{self, Section};
use crate::web::{Session, Web, render};
use prx_ci_proto::v1::PublishSkipReason;

/// A publish outcome in a few words (`✓ wrote /x`, `– skipped /x (superseded)`).
pub fn outcome_words(outcome: &PublishOutcome) -> Markup {
    publish_words(&PushPublish::from(outcome))
}

/// The same for a push's brief record of it.
pub fn publish_words(publish: &PushPublish) -> Markup {
    if publish.written {
        return html! { span.status.status-succeeded { "✓ wrote " code { (publish.parameter) } } };
    }
    let class = if publish.reason == PublishSkipReason::Superseded {
        "status outcome-superseded"
    } else {
        "status outcome-skipped"
    };
    html! {
        span class=(class) {
            "– skipped " @if !publish.parameter.is_empty() { code { (publish.parameter) } " " }
            "(" (skip_reason(publish.reason)) ")"
        }
    }
}

/// `GET /parameters`.
pub async fn index(State(web): State<Web>, session: Session) -> Response {
    let body = {
        let projection = web.projection.read().await;
        let parameters = projection.parameters();
        html! {
            h1 { "Parameters" }
            p.muted { "What each deploy parameter points to, as the newest push wrote it." }
            @if parameters.is_empty() { p.notice { "No parameter was written or skipped yet." } }
            div.table-wrap { table id="parameters" {
                thead { tr { th { "Parameter" } th { "Value" } th { "Commit" } th.wide { "Push" } th.wide { "Owner" } th.wide { "Written" } } }
                tbody { @for (name, parameter) in parameters {
                    tr data-parameter=(name) {
                        td.mono { a href=(format!("/parameter?name={}", urlencoding(name))) { (name) } }
                        @match &parameter.current {
                            Some(entry) => {
                                td.value { (value_of(entry)) }
                                td.commit.mono { (layout::short(entry.commit())) }
                                td.wide.mono { (display_wire(entry.push_sequence)) }
                            }
                            None => { td.value.muted { "never written" } td.commit {} td.wide {} }
                        }
                        td.wide { (parameter.owner) }
                        td.wide { @if let Some(entry) = &parameter.current { (layout::time(entry.at.as_ref())) } }
                    }
                } }
            } }
        }
    };
    render(
        "Parameters",
        Section::Parameters,
        &session,
        "parameters",
        body,
    )
    .into_response()
}

fn value_of(entry: &ParameterEntry) -> &str {
    match &entry.outcome {
        PublishOutcome::Applied(a) => &a.value,
        PublishOutcome::Skipped(s) => &s.value,
    }
}

#[derive(Debug, Deserialize)]
pub struct Name {
    name: String,
}

/// `GET /parameter?name=...`.
pub async fn one(
    State(web): State<Web>,
    session: Session,
    Query(Name { name }): Query<Name>,
) -> Response {
    let found = web.projection.read().await.parameters().get(&name).cloned();
    let Some(parameter) = found else {
        let body = html! { h1 { "Parameter not found" } p { "Nothing was published or skipped for " code { (name) } "." } };
        return (
            StatusCode::NOT_FOUND,
            render(
                "Parameter not found",
                Section::Parameters,
                &session,
                "",
                body,
            ),
        )
            .into_response();
    };
    let body = html! {
        h1.mono { (name) }
        dl.facts {
            dt { "Value" } dd.value { @if let Some(c) = &parameter.current { (value_of(c)) } @else { "never written" } }
            dt { "Commit" } dd.mono { @if let Some(c) = &parameter.current { (c.commit()) } }
            dt { "Repository" } dd { @if let Some(c) = &parameter.current { (c.repository()) } }
            dt { "Owner" } dd { (parameter.owner) }
        }
        h2 { "History, newest first" }
        div.table-wrap { table id="history" {
            thead { tr { th { "At" } th { "Outcome" } th { "Value" } th { "Commit" } th.wide { "Push" } th { "Why" } } }
            tbody { @for entry in &parameter.history {
                tr data-outcome=(match entry.outcome { PublishOutcome::Applied(_) => "written", PublishOutcome::Skipped(_) => "skipped" }) {
                    td { (layout::time(entry.at.as_ref())) }
                    td { (outcome_words(&entry.outcome)) }
                    td.value { (value_of(entry)) }
                    td.mono { a href=(format!("/builds/{}", urlencoding(&entry.build))) { (layout::short(entry.commit())) } }
                    td.wide.mono { (display_wire(entry.push_sequence)) }
                    td { @if let PublishOutcome::Skipped(s) = &entry.outcome {
                        @if !s.check.is_empty() { (s.check) ": " } (s.detail) } }
                }
            } }
        } }
    };
    let topics = format!("parameter:{name}");
    render(&name, Section::Parameters, &session, &topics, body).into_response()
}
