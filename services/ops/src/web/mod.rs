//! The web dashboard (issue 15): server-rendered pages over the [`DashboardProjection`], kept
//! current by live reads of the streams ([`live`]) and pushed to open pages as Server-Sent
//! Events. Served by the ops service on its own listener (`[ops] dashboard_listen`).
//!
//! Pages: Builds (`/`), a build (`/builds/<key>`), branches (`/branches`) and a branch's
//! timeline (`/branches/<owner>/<repo>/<branch>`), parameters (`/parameters`, one parameter's
//! history at `/parameter?name=...`), parked messages (`/parked`), operator actions (`/actions`:
//! rebuild and replay, each a dry run first); a local build's log streams from
//! `/builds/<key>/log` ([`log_tail`]). Every page and `/events`
//! needs a session ([`session`]); operator actions go through the same [`OpsApi`] calls as the
//! CLI, as the signed-in operator.

pub mod layout;
pub mod live;
pub mod log_tail;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use prx_ci_shared::CancellationToken;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{RwLock, broadcast};

use crate::api::OpsApi;
use crate::auth::Operator;
use crate::dashboard_projection::DashboardProjection;
use session::Sessions;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Web {
    pub projection: Arc<RwLock<DashboardProjection>>,
    /// Topics of every applied change (space-separated), for `/events`.
    pub changes: broadcast::Sender<Arc<str>>,
    pub sessions: Sessions,
    pub api: OpsApi,
    pub js: async_nats::jetstream::Context,
    /// Finished builds the Builds page lists.
    pub recent_builds: usize,
    /// The directory local builds' logs may be read from (`[ops] local_build_logs`).
    pub local_build_logs: Option<std::path::PathBuf>,
    /// The notifier's settings the build page renders its message and status with.
    pub notice: Arc<pages::notice::NoticeSettings>,
    /// Cancelled when the service stops: long-lived answers (a followed log) end then.
    pub shutdown: CancellationToken,
}

/// Changes an open page's `/events` stream may fall behind by before it is told to refresh all.
const CHANGES_BUFFER: usize = 1024;

impl Web {
    /// The dashboard of an ops service with `config`, its `tokens` and `api`; its projection
    /// starts empty and [`Web::follow`] keeps it current.
    pub fn new(
        config: &crate::OpsConfig,
        tokens: Vec<(String, secrecy::SecretString)>,
        api: OpsApi,
        js: async_nats::jetstream::Context,
        notice: pages::notice::NoticeSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        Self {
            projection: Arc::new(RwLock::new(DashboardProjection::new(
                config.keep_finished_builds,
            ))),
            changes,
            sessions: Sessions::new(
                tokens,
                config.dashboard_secure_cookie,
                config.dashboard_session_ttl,
            ),
            api,
            js,
            recent_builds: config.recent_builds,
            local_build_logs: config.local_build_logs.clone(),
            notice: Arc::new(notice),
            shutdown,
        }
    }

    /// Follows the streams into the projection until shutdown ([`live::run`]).
    pub fn follow(&self) -> impl Future<Output = ()> + Send + 'static {
        live::run(
            self.js.clone(),
            self.projection.clone(),
            self.changes.clone(),
            self.shutdown.clone(),
        )
    }
}

/// A signed-in request: its operator and the CSRF value its forms carry. Requests without a
/// session are refused with 401 (pages answer with the sign-in form).
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    pub csrf: String,
}

impl Session {
    /// For [`layout::page`].
    pub fn who(&self) -> Option<(&Operator, &str)> {
        Some((&self.operator, self.csrf.as_str()))
    }

    /// An ops API request made as this operator: the same call, checks, metrics and audit
    /// record as the CLI's.
    pub fn api_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.operator.clone());
        request
    }

    /// The refusal (403) of a POST that is not this operator's own (a wrong or missing CSRF
    /// value, or another origin); `None` for their own.
    pub fn refuse_foreign_post(
        &self,
        web: &Web,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Option<Response> {
        (!web.sessions.same_origin_post(&self.operator, headers, csrf)).then(forbidden)
    }
}

impl FromRequestParts<Web> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        match web.sessions.operator(&parts.headers) {
            Some(operator) => Ok(Session {
                csrf: web.sessions.csrf(&operator),
                operator,
            }),
            None => Err((
                StatusCode::UNAUTHORIZED,
                Html(login_page(None).into_string()),
            )
                .into_response()),
        }
    }
}

/// The dashboard's routes.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::builds::page))
        .route("/builds/{key}", get(pages::build::page))
        .route("/builds/{key}/log", get(log_tail::stream))
        .route("/branches", get(pages::branch::index))
        .route(
            "/branches/{owner}/{repo}/{*branch}",
            get(pages::branch::timeline),
        )
        .route("/parameters", get(pages::parameters::index))
        .route("/parameter", get(pages::parameters::one))
        .route("/parked", get(pages::parked::page))
        .route("/parked/{id}/retry", post(pages::parked::retry))
        .route("/parked/{id}/drop", post(pages::parked::drop_entry))
        .route("/actions", get(pages::actions::page))
        .route("/actions/rebuild", post(pages::actions::rebuild))
        .route("/actions/replay", post(pages::actions::replay))
        .route("/shadow", get(pages::shadow::page))
        .route("/events", get(live::events))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/{name}", get(asset))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// Serves the dashboard on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    web: Web,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr().ok();
    tracing::info!(?address, "dashboard listening");
    axum::serve(listener, router(web))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| anyhow::anyhow!("the dashboard server failed: {e}"))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match name.as_str() {
        "dashboard.css" => (
            include_str!("assets/dashboard.css"),
            "text/css; charset=utf-8",
        ),
        "live.js" => (
            include_str!("assets/live.js"),
            "text/javascript; charset=utf-8",
        ),
        "log.js" => (
            include_str!("assets/log.js"),
            "text/javascript; charset=utf-8",
        ),
        "favicon.svg" => (include_str!("assets/favicon.svg"), "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(session: Session) -> Response {
    let body = html! { h1 { "Not found" } p { "No such page." } };
    (
        StatusCode::NOT_FOUND,
        render("Not found", layout::Section::None, &session, "", body),
    )
        .into_response()
}

/// A page as a response.
pub fn render(
    title: &str,
    section: layout::Section,
    session: &Session,
    topics: &str,
    body: Markup,
) -> Html<String> {
    Html(layout::page(title, section, session.who(), topics, body).into_string())
}

fn login_page(error: Option<&str>) -> Markup {
    let body = html! {
        div.login {
            h1 { "Sign in" }
            p { "Enter an ops token (" code { "prx-ci up" } " prints where it keeps one)." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form id="login" method="post" action="/login" {
                label for="token" { "Ops token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    layout::page("Sign in", layout::Section::None, None, "", body)
}

async fn login_form() -> Html<String> {
    Html(login_page(None).into_string())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(web): State<Web>, Form(form): Form<LoginForm>) -> Response {
    let Some(operator) = web.sessions.by_token(form.token.trim()) else {
        tracing::info!("dashboard sign-in refused: wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_page(Some("That token is not accepted.")).into_string()),
        )
            .into_response();
    };
    tracing::info!(operator = %operator, "dashboard sign-in");
    let cookie = web.sessions.set_cookie(&operator).unwrap_or_default();
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// A form POST's CSRF field (missing = empty, refused by the check).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(web): State<Web>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = session.refuse_foreign_post(&web, &headers, &form.csrf) {
        return refused;
    }
    (
        [(header::SET_COOKIE, web.sessions.clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The answer to a POST that is not the operator's own (CSRF value or origin wrong).
pub fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: the form is not from this dashboard (CSRF check failed); reload the page",
    )
        .into_response()
}

/// The HTTP status a page answers a refused ops API call with (pure).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_meaning_as_http_statuses() {
        use tonic::Code;
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
