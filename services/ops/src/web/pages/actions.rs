//! Operator actions (`/actions`): rebuild a revision and replay a range of a stream to one
//! consumer. Each is a dry run first (the API's own answer of what would happen, on a
//! confirmation page) and then the confirmed call, through the same ops API calls as
//! `prx-ci rebuild` and `prx-ci replay`, as the signed-in operator. Every POST is CSRF-checked.
//!
//! The forms' mapping to requests ([`rebuild_request`], [`replay_request`]) and the status
//! mapping (`web::http_status`) are pure; the handlers call the API and render.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use futures::StreamExt as _;
use maud::{Markup, html};
use prx_ci_proto::v1::{self, ops_server::Ops};
use prx_ci_shared::bus::subject::{EVENTS_STREAM, EventKind, WEBHOOKS_STREAM};
use serde::Deserialize;

use super::branch::timeline_href;
use super::builds::urlencoding;
use crate::api::MAX_REASON_LEN;
use crate::replay_range;
use crate::web::layout::{self, Section};
use crate::web::{Session, Web, http_status, render};

/// The streams a replay can read (what `prx-ci replay --stream` takes).
pub const REPLAY_STREAMS: [&str; 2] = [EVENTS_STREAM, WEBHOOKS_STREAM];
/// The most messages a replay's dry run lists on the page (the newest of the range).
pub const SHOWN_EVENTS: usize = 100;

/// The rebuild form: the first POST (a dry run) and the confirmation carry the same fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RebuildForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub repository: String,
    /// A branch name or a commit SHA (or unambiguous prefix).
    #[serde(default)]
    pub revision: String,
    /// For a commit: the branch to rebuild it on ("" = the API chooses).
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub reason: String,
    /// Set by the confirmation form only: the commit its dry run showed. Without it the POST
    /// is a dry run.
    #[serde(default)]
    pub confirm_commit: String,
}

/// The replay form: the first POST (a dry run) and the confirmation carry the same fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub stream: String,
    /// The durable consumer the range is re-delivered to.
    #[serde(default)]
    pub consumer: String,
    /// A stream sequence or an RFC 3339 time ("" = the stream's first message).
    #[serde(default)]
    pub from: String,
    /// A stream sequence or an RFC 3339 time ("" = the last message stored now).
    #[serde(default)]
    pub to: String,
    /// A subject filter within the consumer's own ("" = the consumer's filter).
    #[serde(default)]
    pub subject: String,
    /// `yes` on the confirmation form only. Without it the POST is a dry run.
    #[serde(default)]
    pub confirmed: String,
}

impl ReplayForm {
    fn is_confirmed(&self) -> bool {
        self.confirmed == "yes"
    }
}

// The handlers call the `Ops` trait's methods (what the gRPC server calls: metrics, operator),
// not `OpsApi`'s inherent ones of the same name.

/// The API request a rebuild form asks for (pure), or why the form is incomplete. The
/// dashboard requires a reason (the CLI's is optional): it is recorded with the rebuild.
pub fn rebuild_request(form: &RebuildForm, dry_run: bool) -> Result<v1::RebuildRequest, String> {
    let repository = form.repository.trim();
    if repository.is_empty() {
        return Err("The repository is required (owner/repo).".into());
    }
    let revision = form.revision.trim();
    if revision.is_empty() {
        return Err("The revision is required (a branch name or a commit SHA).".into());
    }
    let reason = form.reason.trim();
    if reason.is_empty() {
        return Err("A reason is required: it is recorded with the rebuild.".into());
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(format!("The reason is longer than {MAX_REASON_LEN} bytes."));
    }
    Ok(v1::RebuildRequest {
        repository: repository.to_owned(),
        revision: revision.to_owned(),
        branch: form.branch.trim().to_owned(),
        reason: reason.to_owned(),
        dry_run,
        ..Default::default()
    })
}

/// The API request a replay form asks for (pure), or why the form is incomplete.
pub fn replay_request(form: &ReplayForm, dry_run: bool) -> Result<v1::ReplayRequest, String> {
    let stream = form.stream.trim();
    if !REPLAY_STREAMS.contains(&stream) {
        return Err(format!(
            "The stream must be one of {}.",
            REPLAY_STREAMS.join(", ")
        ));
    }
    let consumer = form.consumer.trim();
    if consumer.is_empty() {
        return Err("The consumer is required (the durable name, e.g. notifier).".into());
    }
    let from = replay_range::from(Some(&form.from)).map_err(|e| format!("From: {e}."))?;
    let to = replay_range::to(Some(&form.to)).map_err(|e| format!("To: {e}."))?;
    Ok(v1::ReplayRequest {
        stream: stream.to_owned(),
        from,
        to,
        subject: form.subject.trim().to_owned(),
        consumer: consumer.to_owned(),
        dry_run,
    })
}

/// What `GET /actions` may be given to fill the rebuild form in (the timeline's links).
#[derive(Debug, Default, Deserialize)]
pub struct Prefill {
    #[serde(default)]
    pub repository: String,
    #[serde(default)]
    pub revision: String,
    #[serde(default)]
    pub branch: String,
}

/// The link to the rebuild form filled in for a commit of a branch.
pub fn rebuild_href(repository: &str, branch: &str, commit: &str) -> String {
    format!(
        "/actions?repository={}&revision={}&branch={}#rebuild",
        urlencoding(repository),
        urlencoding(commit),
        urlencoding(branch)
    )
}

/// `GET /actions`.
pub async fn page(
    State(web): State<Web>,
    session: Session,
    Query(prefill): Query<Prefill>,
) -> Response {
    let rebuild = RebuildForm {
        repository: prefill.repository,
        revision: prefill.revision,
        branch: prefill.branch,
        ..Default::default()
    };
    let replay = ReplayForm {
        stream: EVENTS_STREAM.into(),
        ..Default::default()
    };
    let consumers = consumer_names(&web).await;
    let body = html! {
        h1 { "Operator actions" }
        p.muted { "Each action is a dry run first: the next page shows what would happen, and nothing changes until you confirm there. Both go through the same ops API as the CLI, recorded as " strong { (session.operator.name()) } "." }
        (rebuild_section(&session, &rebuild, None))
        (replay_section(&session, &replay, &consumers, None))
    };
    render("Actions", Section::Actions, &session, "", body).into_response()
}

/// The durable consumers of the replayable streams (replay consumers left out), for the
/// replay form's suggestions; none when JetStream cannot say.
async fn consumer_names(web: &Web) -> Vec<String> {
    let mut names = Vec::new();
    for stream in REPLAY_STREAMS {
        let Ok(stream) = web.js.get_stream(stream).await else {
            continue;
        };
        // Durable ones only: the live reads' ordered consumers are ephemeral.
        let listed: Vec<_> = stream.consumers().collect().await;
        names.extend(
            listed
                .into_iter()
                .filter_map(|info| info.ok()?.config.durable_name)
                .filter(|n| !n.contains(crate::replay::replay_prefix("").as_str())),
        );
    }
    names.sort();
    names.dedup();
    names
}

fn rebuild_section(session: &Session, form: &RebuildForm, error: Option<&str>) -> Markup {
    html! {
        section id="rebuild" aria-labelledby="rebuild-title" {
            h2 id="rebuild-title" { "Rebuild" }
            p.muted { "Stores an operator push of the revision, which the dispatcher builds like any push. A branch name rebuilds the branch's head; a commit is rebuilt only if it is in its branch's history, and becomes the branch's newest push (what is published)." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.action id="rebuild-form" method="post" action="/actions/rebuild" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Repository" input name="repository" value=(form.repository) placeholder="owner/repo" required; }
                label { "Revision" input name="revision" value=(form.revision) placeholder="branch or commit SHA" required; }
                label { "Branch (for a commit)" input name="branch" value=(form.branch) placeholder="chosen by the API"; }
                label { "Reason" input name="reason" value=(form.reason) maxlength=(MAX_REASON_LEN) required; }
                button type="submit" { "Dry run" }
            }
        }
    }
}

fn replay_section(
    session: &Session,
    form: &ReplayForm,
    consumers: &[String],
    error: Option<&str>,
) -> Markup {
    html! {
        section id="replay" aria-labelledby="replay-title" {
            h2 id="replay-title" { "Replay" }
            p.muted { "Re-delivers a range of a stream, in order, to one durable consumer (the service running it handles the messages again with its own handler; see docs/operations.md)." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.action id="replay-form" method="post" action="/actions/replay" {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Stream"
                    select name="stream" {
                        @for stream in REPLAY_STREAMS {
                            option value=(stream) selected[form.stream == stream] { (stream) }
                        }
                    }
                }
                label { "Consumer" input name="consumer" value=(form.consumer) list="consumers" placeholder="notifier" required; }
                datalist id="consumers" { @for name in consumers { option value=(name) {} } }
                label { "From" input name="from" value=(form.from) placeholder="sequence or RFC 3339 time (default: first)"; }
                label { "To" input name="to" value=(form.to) placeholder="sequence or RFC 3339 time (default: last)"; }
                label { "Subject" input name="subject" value=(form.subject) placeholder="default: the consumer's filter"; }
                button type="submit" { "Dry run" }
            }
        }
    }
}

/// A refused call or an incomplete form, as a page with its status.
fn refused(
    session: &Session,
    title: &str,
    status: StatusCode,
    message: &str,
    form: Markup,
) -> Response {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) ": " (message) }
        (form)
        p { a href="/actions" { "Back to the actions" } }
    };
    (status, render(title, Section::Actions, session, "", body)).into_response()
}

/// `POST /actions/rebuild`: a dry run, or (from the confirmation form) the rebuild itself
/// when the dry run still resolves to the commit shown.
pub async fn rebuild(
    State(web): State<Web>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<RebuildForm>,
) -> Response {
    if let Some(refused) = session.refuse_foreign_post(&web, &headers, &form.csrf) {
        return refused;
    }
    let title = "Rebuild refused";
    let dry = match rebuild_request(&form, true) {
        Ok(request) => request,
        Err(error) => {
            let again = rebuild_section(&session, &form, None);
            return refused(&session, title, StatusCode::BAD_REQUEST, &error, again);
        }
    };
    let preview = match Ops::rebuild(&web.api, session.api_request(dry.clone())).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let again = rebuild_section(&session, &form, None);
            return refused(
                &session,
                title,
                http_status(status.code()),
                status.message(),
                again,
            );
        }
    };
    let confirm = form.confirm_commit.trim();
    if confirm.is_empty() {
        let body = rebuild_preview(&session, &form, &preview, None);
        return render("Confirm rebuild", Section::Actions, &session, "", body).into_response();
    }
    if !confirm.eq_ignore_ascii_case(&preview.commit) {
        let moved = format!(
            "The revision now resolves to commit {} (the dry run showed {confirm}): the branch moved. Nothing was stored; check the new answer below.",
            preview.commit
        );
        let body = rebuild_preview(&session, &form, &preview, Some(&moved));
        return (
            StatusCode::CONFLICT,
            render("Confirm rebuild", Section::Actions, &session, "", body),
        )
            .into_response();
    }
    // The form's own request, not the commit pinned: should the branch move between the two
    // calls, a branch rebuild takes its new head rather than rolling the branch back.
    let request = v1::RebuildRequest {
        dry_run: false,
        ..dry
    };
    match Ops::rebuild(&web.api, session.api_request(request)).await {
        Ok(response) => {
            let response = response.into_inner();
            let timeline = timeline_href(form.repository.trim(), &response.branch);
            if response.commit.eq_ignore_ascii_case(confirm) {
                return Redirect::to(&timeline).into_response();
            }
            // The branch moved between the confirmation's check and the rebuild: say so
            // rather than pass the other commit off as the one confirmed.
            let body = html! {
                h1 { "Rebuild stored, of another commit" }
                p.notice role="status" {
                    "The branch moved after your confirmation: the rebuild stored is of its head now, "
                    code { (response.commit) } ", not of " code { (confirm) } "."
                }
                p { a href=(timeline) { "The branch timeline" } }
            };
            render("Rebuild stored", Section::Actions, &session, "", body).into_response()
        }
        Err(status) => {
            let again = rebuild_section(&session, &form, None);
            refused(
                &session,
                title,
                http_status(status.code()),
                status.message(),
                again,
            )
        }
    }
}

fn rebuild_preview(
    session: &Session,
    form: &RebuildForm,
    preview: &v1::RebuildResponse,
    warning: Option<&str>,
) -> Markup {
    let repository = form.repository.trim();
    html! {
        h1 { "Confirm rebuild" }
        @if let Some(warning) = warning { p.error role="alert" { (warning) } }
        p.notice id="rebuild-dry-run" { "Dry run: nothing was stored. Confirming stores this operator push:" }
        dl.facts id="rebuild-preview" {
            dt { "Repository" } dd { (repository) }
            dt { "Branch" } dd { a href=(timeline_href(repository, &preview.branch)) { (preview.branch) } }
            dt { "Commit" } dd.mono data-commit=(preview.commit) { (preview.commit) }
            dt { "Branch head" } dd {
                code { (preview.head) }
                @if preview.head == preview.commit { " (the commit is the head)" }
                @else { " — an older commit of the branch's history: once rebuilt it is the branch's newest push, and what is published" }
            }
            dt { "Recorded as" } dd { (preview.requested_by) }
            dt { "Reason" } dd { (form.reason.trim()) }
        }
        form.action id="rebuild-confirm" method="post" action="/actions/rebuild" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="repository" value=(repository);
            input type="hidden" name="revision" value=(form.revision.trim());
            input type="hidden" name="branch" value=(form.branch.trim());
            input type="hidden" name="reason" value=(form.reason.trim());
            input type="hidden" name="confirm_commit" value=(preview.commit);
            div.buttons {
                button type="submit" { "Rebuild now" }
                " " a href="/actions" { "Cancel" }
            }
        }
    }
}

/// `POST /actions/replay`: a dry run, or (from the confirmation form) the replay itself of
/// exactly the sequences its dry run listed.
pub async fn replay(
    State(web): State<Web>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    if let Some(refused) = session.refuse_foreign_post(&web, &headers, &form.csrf) {
        return refused;
    }
    let title = "Replay refused";
    let confirmed = form.is_confirmed();
    let request = match replay_request(&form, !confirmed) {
        Ok(request) => request,
        Err(error) => {
            let again = replay_section(&session, &form, &[], None);
            return refused(&session, title, StatusCode::BAD_REQUEST, &error, again);
        }
    };
    let answer = match Ops::replay(&web.api, session.api_request(request)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let again = replay_section(&session, &form, &[], None);
            return refused(
                &session,
                title,
                http_status(status.code()),
                status.message(),
                again,
            );
        }
    };
    let body = if confirmed {
        html! {
            h1 { "Replay started" }
            p.notice id="replay-started" {
                "Replaying " (answer.count) " message(s) #" (answer.first_sequence) "..#" (answer.last_sequence)
                " of " (form.stream.trim()) " into " code { (form.consumer.trim()) }
                " through " code { (answer.replay_consumer) } "."
            }
            p.muted { "The service running " code { (form.consumer.trim()) } " handles them with its own handler and removes the replay consumer when done." }
            p { a href="/actions" { "Back to the actions" } }
        }
    } else {
        replay_preview(&session, &form, &answer)
    };
    render(
        if confirmed {
            "Replay started"
        } else {
            "Confirm replay"
        },
        Section::Actions,
        &session,
        "",
        body,
    )
    .into_response()
}

fn replay_preview(session: &Session, form: &ReplayForm, answer: &v1::ReplayResponse) -> Markup {
    let shown = &answer.events[answer.events.len().saturating_sub(SHOWN_EVENTS)..];
    html! {
        h1 { "Confirm replay" }
        p.notice id="replay-dry-run" data-count=(answer.count) {
            "Dry run: nothing changed. " (answer.count) " message(s) #" (answer.first_sequence) "..#" (answer.last_sequence)
            " of " (form.stream.trim()) " would be re-delivered, in order, to " code { (form.consumer.trim()) } "."
        }
        @if (shown.len() as u64) < answer.count {
            p.muted { "Showing the last " (shown.len()) " of them." }
        }
        div.table-wrap { table id="replay-events" {
            thead { tr { th { "Sequence" } th { "Stored" } th { "Kind" } th.wide { "Subject" } } }
            tbody { @for event in shown {
                @let kind = event.envelope.as_ref().and_then(|e| e.payload.as_ref()).map_or("unknown", |p| EventKind::of(p).name());
                tr data-sequence=(event.sequence) {
                    td.mono { (event.sequence) }
                    td { (layout::time(event.stored_at.as_ref())) }
                    td { (kind) }
                    td.wide.mono { (event.subject) }
                }
            } }
        } }
        form.action id="replay-confirm" method="post" action="/actions/replay" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="stream" value=(form.stream.trim());
            input type="hidden" name="consumer" value=(form.consumer.trim());
            // Exactly what is listed, even if more messages arrive before the confirmation.
            input type="hidden" name="from" value=(answer.first_sequence);
            input type="hidden" name="to" value=(answer.last_sequence);
            input type="hidden" name="subject" value=(form.subject.trim());
            input type="hidden" name="confirmed" value="yes";
            div.buttons {
                button type="submit" { "Replay now" }
                " " a href="/actions" { "Cancel" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prx_ci_proto::v1::replay_request;

    use super::*;

    fn rebuild_form() -> RebuildForm {
        RebuildForm {
            csrf: "c".into(),
            repository: " PRX/app ".into(),
            revision: "main".into(),
            branch: String::new(),
            reason: " flaky runner ".into(),
            confirm_commit: String::new(),
        }
    }

    #[test]
    fn a_rebuild_form_maps_to_the_api_request_and_needs_a_reason() {
        let request = rebuild_request(&rebuild_form(), true).unwrap();
        assert_eq!(request.repository, "PRX/app");
        assert_eq!(request.revision, "main");
        assert_eq!(request.reason, "flaky runner");
        assert!(request.dry_run);
        assert!(
            request.requested_by.is_empty(),
            "the API records the session's operator"
        );
        assert!(!rebuild_request(&rebuild_form(), false).unwrap().dry_run);

        let no_reason = RebuildForm {
            reason: "  ".into(),
            ..rebuild_form()
        };
        assert!(
            rebuild_request(&no_reason, true)
                .unwrap_err()
                .contains("reason is required")
        );
        let no_revision = RebuildForm {
            revision: String::new(),
            ..rebuild_form()
        };
        assert!(
            rebuild_request(&no_revision, true)
                .unwrap_err()
                .contains("revision")
        );
        let long = RebuildForm {
            reason: "x".repeat(MAX_REASON_LEN + 1),
            ..rebuild_form()
        };
        assert!(rebuild_request(&long, true).is_err());
    }

    fn replay_form() -> ReplayForm {
        ReplayForm {
            csrf: "c".into(),
            stream: EVENTS_STREAM.into(),
            consumer: " notifier ".into(),
            from: "3".into(),
            to: String::new(),
            subject: String::new(),
            confirmed: String::new(),
        }
    }

    #[test]
    fn a_replay_form_maps_to_the_api_request() {
        let request = replay_request(&replay_form(), true).unwrap();
        assert_eq!(request.stream, EVENTS_STREAM);
        assert_eq!(request.consumer, "notifier");
        assert_eq!(request.from, Some(replay_request::From::FromSequence(3)));
        assert_eq!(request.to, None);
        assert!(request.dry_run);
        let timed = ReplayForm {
            to: "2026-11-30T22:00:00Z".into(),
            ..replay_form()
        };
        assert!(matches!(
            replay_request(&timed, false).unwrap().to,
            Some(replay_request::To::ToTime(_))
        ));

        let bad = ReplayForm {
            from: "yesterday".into(),
            ..replay_form()
        };
        assert!(
            replay_request(&bad, true)
                .unwrap_err()
                .starts_with("From: ")
        );
        let no_consumer = ReplayForm {
            consumer: String::new(),
            ..replay_form()
        };
        assert!(replay_request(&no_consumer, true).is_err());
        let parked = ReplayForm {
            stream: "PRX_PARKED".into(),
            ..replay_form()
        };
        assert!(
            replay_request(&parked, true)
                .unwrap_err()
                .contains("PRX_EVENTS")
        );
    }

    #[test]
    fn the_timelines_rebuild_link_fills_the_form_in() {
        assert_eq!(
            rebuild_href("PRX/app", "feature/x", "abc"),
            "/actions?repository=PRX%2Fapp&revision=abc&branch=feature%2Fx#rebuild"
        );
    }
}
