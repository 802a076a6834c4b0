//! Parked messages (`/parked`): each with its consumer, subject and error, and the operator's
//! retry or drop, through the same ops API calls as `prx-ci parked --retry` and `--drop`
//! (recorded as the signed-in operator). Refreshed live on topic `parked`.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use prx_ci_proto::v1::{self, ops_server::Ops};
use serde::Deserialize;

use crate::api::MAX_REASON_LEN;
use crate::web::layout::{self, Section};
use crate::web::{CsrfForm, Session, Web, render};

/// `GET /parked`.
pub async fn page(State(web): State<Web>, session: Session) -> Response {
    let request = session.api_request(v1::ParkedRequest::default());
    let entries = match Ops::parked(&web.api, request).await {
        Ok(response) => response.into_inner().entries,
        Err(status) => {
            let body = html! { h1 { "Parked messages" } p.error role="alert" { "Cannot list parked messages: " (status.message()) } };
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                render("Parked", Section::Parked, &session, "parked", body),
            )
                .into_response();
        }
    };
    let body = html! {
        h1 { "Parked messages" }
        p.muted { "Messages a service gave up on, with the error. Retry puts one back on its subject once (every consumer sees it again; their handlers are idempotent). Drop, with a reason, records that it needs no retry; it stays listed. An entry is retried or dropped, once." }
        @if entries.is_empty() { p.notice { "No parked messages." } }
        div.table-wrap { table id="parked" {
            thead { tr { th { "Id" } th { "Parked" } th { "Consumer" } th.wide { "Subject" } th { "Error" } th { "Action" } } }
            tbody { @for entry in entries.iter().rev() {
                @let parked = entry.parked.clone().unwrap_or_default();
                tr data-parked=(entry.id) data-retried=(entry.retried) data-dropped=(entry.dropped) {
                    td.mono { (entry.id) }
                    td { (layout::time(entry.parked_at.as_ref())) }
                    td.mono { (parked.consumer) }
                    td.wide.mono { (parked.subject) }
                    td { pre { (parked.error) } "after " (parked.deliveries) " deliveries" }
                    td {
                        @if entry.retried {
                            "retried by " (entry.retried_by) " at " (layout::time(entry.retried_at.as_ref()))
                        } @else if entry.dropped {
                            "dropped by " (entry.dropped_by) " at " (layout::time(entry.dropped_at.as_ref())) ": " (entry.drop_reason)
                        } @else {
                            form.inline method="post" action=(format!("/parked/{}/retry", entry.id)) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" name="action" value="retry" { "Retry" }
                            }
                            " "
                            form.inline method="post" action=(format!("/parked/{}/drop", entry.id)) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                input type="text" name="reason" required maxlength=(MAX_REASON_LEN) placeholder="why no retry" aria-label=(format!("Reason for dropping entry {}", entry.id));
                                " "
                                button type="submit" name="action" value="drop" { "Drop" }
                            }
                        }
                    }
                }
            } }
        } }
    };
    render("Parked", Section::Parked, &session, "parked", body).into_response()
}

/// `POST /parked/<id>/retry`.
pub async fn retry(
    State(web): State<Web>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = session.refuse_foreign_post(&web, &headers, &form.csrf) {
        return refused;
    }
    let request = session.api_request(v1::RetryParkedRequest {
        id,
        ..Default::default()
    });
    let result = Ops::retry_parked(&web.api, request).await;
    answer(&session, "Retry refused", result.map(|_| ()))
}

/// A drop form's fields.
#[derive(Debug, Deserialize)]
pub struct DropForm {
    pub csrf: String,
    #[serde(default)]
    pub reason: String,
}

/// `POST /parked/<id>/drop`.
pub async fn drop_entry(
    State(web): State<Web>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<DropForm>,
) -> Response {
    if let Some(refused) = session.refuse_foreign_post(&web, &headers, &form.csrf) {
        return refused;
    }
    let request = session.api_request(v1::DropParkedRequest {
        id,
        reason: form.reason,
    });
    let result = Ops::drop_parked(&web.api, request).await;
    answer(&session, "Drop refused", result.map(|_| ()))
}

/// Back to the list after an action, or the refusal with the API's reason.
fn answer(session: &Session, title: &str, result: Result<(), tonic::Status>) -> Response {
    match result {
        Ok(()) => Redirect::to("/parked").into_response(),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::CONFLICT,
            };
            let body = html! {
                h1 { (title) }
                p.error role="alert" { (status.message()) }
                p { a href="/parked" { "Back to the parked messages" } }
            };
            (code, render(title, Section::Parked, session, "", body)).into_response()
        }
    }
}
