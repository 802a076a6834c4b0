//! Parked messages (`/parked`): each with its consumer, subject and error, and the operator's
//! retry, through the same ops API call as `prx-ci parked --retry` (recorded as the signed-in
//! operator). Refreshed live on topic `parked`.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use prx_ci_proto::v1::{self, ops_server::Ops as _};

use crate::web::layout::{self, Section};
use crate::web::{CsrfForm, Session, Web, forbidden, render};

/// `GET /parked`.
pub async fn page(State(web): State<Web>, session: Session) -> Response {
    let mut request = tonic::Request::new(v1::ParkedRequest::default());
    request.extensions_mut().insert(session.operator.clone());
    let entries = match web.api.parked(request).await {
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
        p.muted { "Messages a service gave up on, with the error. Retry puts one back on its subject once (every consumer sees it again; their handlers are idempotent)." }
        @if entries.is_empty() { p.notice { "No parked messages." } }
        div.table-wrap { table id="parked" {
            thead { tr { th { "Id" } th { "Parked" } th { "Consumer" } th.wide { "Subject" } th { "Error" } th { "Action" } } }
            tbody { @for entry in entries.iter().rev() {
                @let parked = entry.parked.clone().unwrap_or_default();
                tr data-parked=(entry.id) data-retried=(entry.retried) {
                    td.mono { (entry.id) }
                    td { (layout::time(entry.parked_at.as_ref())) }
                    td.mono { (parked.consumer) }
                    td.wide.mono { (parked.subject) }
                    td { pre { (parked.error) } "after " (parked.deliveries) " deliveries" }
                    td {
                        @if entry.retried {
                            "retried by " (entry.retried_by) " at " (layout::time(entry.retried_at.as_ref()))
                        } @else {
                            form.inline method="post" action=(format!("/parked/{}/retry", entry.id)) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" name="action" value="retry" { "Retry" }
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
    if !web
        .sessions
        .same_origin_post(&session.operator, &headers, &form.csrf)
    {
        return forbidden();
    }
    let mut request = tonic::Request::new(v1::RetryParkedRequest {
        id,
        ..Default::default()
    });
    request.extensions_mut().insert(session.operator.clone());
    match web.api.retry_parked(request).await {
        Ok(_) => Redirect::to("/parked").into_response(),
        Err(status) => {
            let body = html! {
                h1 { "Retry refused" }
                p.error role="alert" { (status.message()) }
                p { a href="/parked" { "Back to the parked messages" } }
            };
            (
                StatusCode::CONFLICT,
                render("Retry refused", Section::Parked, &session, "", body),
            )
                .into_response()
        }
    }
}
