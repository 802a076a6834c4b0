//! The fake GitHub's REST API over its state, without I/O: one request in, one answer out.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::state::{
    CheckRunWrite, FakeApp, FakeAuth, FakeCheckRun, FakeDelivery, FakeStatus, Issued, State,
};

/// A request, as far as the API reads it.
#[derive(Debug)]
pub(super) struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: HashMap<String, String>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

/// An answer.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn message(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
        )
    }

    fn not_found() -> Self {
        Self::message(404, "Not Found")
    }

    fn bad_credentials() -> Self {
        Self::message(401, "Bad credentials")
    }
}

/// What the server does with a request.
#[derive(Debug)]
pub(super) enum Outcome {
    Reply(Reply),
    /// Deliver `delivery`'s payload again, then answer `reply`.
    Redeliver {
        delivery: Box<FakeDelivery>,
        reply: Reply,
    },
    /// A file's bytes as `raw.githubusercontent.com` serves them (`text/plain`), or its
    /// `404: Not Found`.
    Raw {
        status: u16,
        body: Vec<u8>,
    },
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Self::Reply(reply)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as GitHub writes times.
pub(super) fn github_time(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The token of an `Authorization: Bearer <t>` (or `token <t>`) header.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .or_else(|| value.strip_prefix("token "))
        .map(str::trim)
}

/// Checks an App JWT as GitHub does: RS256 by the App's key, `iss` the App's id, `iat` not in
/// the future, `exp` not passed and at most 10 minutes ahead.
pub(super) fn verify_jwt(app: &FakeApp, jwt: &str, now: OffsetDateTime) -> Result<(), String> {
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&app.public_key_der);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[app.app_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map_err(|e| format!("A JSON web token could not be decoded ({e})"))?;
    let iat = data.claims["iat"]
        .as_i64()
        .ok_or("'Issued at' claim ('iat') must be an Integer")?;
    let exp = data.claims["exp"]
        .as_i64()
        .ok_or("'Expiration time' claim ('exp') must be an Integer")?;
    let now = now.unix_timestamp();
    if iat > now + 60 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past".into(),
        );
    }
    if exp > now + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    Ok(())
}

fn check_jwt(state: &State, authorization: Option<&str>) -> Result<(), Reply> {
    let FakeAuth::App(app) = &state.auth else {
        return Err(Reply::message(401, "A JSON web token could not be decoded"));
    };
    let jwt = bearer(authorization)
        .ok_or_else(|| Reply::message(401, "A JSON web token could not be decoded"))?;
    verify_jwt(app, jwt, OffsetDateTime::now_utc()).map_err(|reason| Reply::message(401, &reason))
}

/// A repository call's credentials: 401 for a bad one, 404 when the App's installation does
/// not cover the repository.
fn check_repository(
    state: &State,
    repository: &str,
    authorization: Option<&str>,
) -> Result<(), Reply> {
    match &state.auth {
        FakeAuth::Anonymous => Ok(()),
        FakeAuth::Token(expected) => match bearer(authorization) {
            Some(token) if token == expected => Ok(()),
            _ => Err(Reply::bad_credentials()),
        },
        FakeAuth::App(_) => {
            let issued = bearer(authorization)
                .and_then(|token| state.tokens.get(token))
                .filter(|t| !t.revoked && t.expires_at > OffsetDateTime::now_utc())
                .ok_or_else(Reply::bad_credentials)?;
            if state.installation_of(repository) == Some(issued.installation) {
                Ok(())
            } else {
                Err(Reply::not_found())
            }
        }
    }
}

/// Answers one request.
pub(super) fn handle(state: &mut State, base_url: &str, request: &Incoming<'_>) -> Outcome {
    let segments: Vec<String> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["app", rest @ ..] => {
            if let Err(reply) = check_jwt(state, request.authorization) {
                return reply.into();
            }
            app(state, base_url, request, rest)
        }
        // The organisation webhook: the fake's one webhook, hook id 1 of any organisation.
        ["orgs", org, "hooks", hook_id, rest @ ..] => {
            if let Err(reply) = check_org_hooks(state, request.authorization) {
                return reply.into();
            }
            if *hook_id != "1" {
                return Reply::not_found().into();
            }
            let listing = format!("/orgs/{org}/hooks/{hook_id}/deliveries");
            hook(state, base_url, &listing, request, rest)
        }
        ["repos", owner, repo, "installation"] => {
            if let Err(reply) = check_jwt(state, request.authorization) {
                return reply.into();
            }
            let full_name = format!("{owner}/{repo}");
            match state.installation_of(&full_name) {
                Some(id) => Reply::json(
                    200,
                    json!({"id": id, "app_id": state.app_id(), "account": {"login": owner}, "target_type": "Organization"}),
                ),
                None => Reply::not_found(),
            }
            .into()
        }
        ["repos", owner, repo, rest @ ..] => {
            let full_name = format!("{owner}/{repo}");
            if let Err(reply) = check_repository(state, &full_name, request.authorization) {
                return reply.into();
            }
            repository(state, &full_name, request, rest).into()
        }
        // raw.githubusercontent.com's `/{owner}/{repo}/{ref}/{path}`, under `/raw`; public, so
        // unauthenticated.
        ["raw", owner, repo, reference, path @ ..] if request.method == "GET" => raw(
            state,
            &format!("{owner}/{repo}"),
            reference,
            &path.join("/"),
        ),
        _ => Reply::not_found().into(),
    }
}

fn app(state: &mut State, base_url: &str, request: &Incoming<'_>, rest: &[&str]) -> Outcome {
    match (request.method, rest) {
        ("GET", []) => Reply::json(
            200,
            json!({"id": state.app_id(), "slug": "prx-ci-fake", "name": "PRX CI (fake)"}),
        )
        .into(),
        ("POST", ["installations", id, "access_tokens"]) => mint(state, id).into(),
        (_, ["hook", rest @ ..]) => hook(state, base_url, "/app/hook/deliveries", request, rest),
        _ => Reply::not_found().into(),
    }
}

/// A credential that may read an organisation's hooks: the token (token mode) or any valid
/// installation token (App mode).
fn check_org_hooks(state: &State, authorization: Option<&str>) -> Result<(), Reply> {
    match &state.auth {
        FakeAuth::Anonymous => Ok(()),
        FakeAuth::Token(expected) => match bearer(authorization) {
            Some(token) if token == expected => Ok(()),
            _ => Err(Reply::bad_credentials()),
        },
        FakeAuth::App(_) => bearer(authorization)
            .and_then(|token| state.tokens.get(token))
            .filter(|t| !t.revoked && t.expires_at > OffsetDateTime::now_utc())
            .map(|_| ())
            .ok_or_else(Reply::bad_credentials),
    }
}

/// A webhook's deliveries (`rest` after `.../hook` or `.../hooks/{id}`), listed at `listing`.
fn hook(
    state: &mut State,
    base_url: &str,
    listing: &str,
    request: &Incoming<'_>,
    rest: &[&str],
) -> Outcome {
    match (request.method, rest) {
        ("GET", ["deliveries"]) => deliveries(state, base_url, listing, &request.query).into(),
        ("GET", ["deliveries", id]) => {
            let url = state.webhook.as_ref().map(|(url, _)| url.clone());
            match find_delivery(state, id) {
                Some(delivery) => Reply::json(200, delivery.detail(url.as_deref())).into(),
                None => Reply::not_found().into(),
            }
        }
        ("POST", ["deliveries", id, "attempts"]) => match find_delivery(state, id) {
            Some(delivery) => Outcome::Redeliver {
                delivery: Box::new(delivery.clone()),
                reply: Reply::json(202, json!({})),
            },
            None => Reply::not_found().into(),
        },
        _ => Reply::not_found().into(),
    }
}

fn find_delivery<'s>(state: &'s State, id: &str) -> Option<&'s FakeDelivery> {
    let id: u64 = id.parse().ok()?;
    state.deliveries.iter().find(|d| d.id == id)
}

fn mint(state: &mut State, id: &str) -> Reply {
    let Some(installation) = id
        .parse::<u64>()
        .ok()
        .filter(|id| state.installations.contains_key(id))
    else {
        return Reply::not_found();
    };
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let expires_at = OffsetDateTime::now_utc() + state.token_lifetime;
    state.mints.push(installation);
    let revoked = state.refused.contains(&installation);
    state.tokens.insert(
        token.clone(),
        Issued {
            installation,
            expires_at,
            revoked,
        },
    );
    Reply::json(
        201,
        json!({
            "token": token,
            "expires_at": github_time(expires_at),
            "permissions": {"contents": "read", "statuses": "write", "checks": "write", "metadata": "read", "pull_requests": "read"},
            "repository_selection": "selected",
        }),
    )
}

/// `GET /app/hook/deliveries` (or an organisation hook's, at `listing`): newest first,
/// `per_page` (default 30, at most 100) from `cursor` on, the next page in the `Link` header.
fn deliveries(
    state: &State,
    base_url: &str,
    listing: &str,
    query: &HashMap<String, String>,
) -> Reply {
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let before = match query.get("cursor") {
        Some(cursor) => match cursor
            .strip_prefix("v1_")
            .and_then(|id| id.parse::<u64>().ok())
        {
            Some(id) => id,
            None => return Reply::message(422, "Invalid cursor"),
        },
        None => u64::MAX,
    };
    let newer_first: Vec<&FakeDelivery> = state
        .deliveries
        .iter()
        .rev()
        .filter(|d| d.id < before)
        .collect();
    let page: Vec<Value> = newer_first
        .iter()
        .take(per_page)
        .map(|d| d.summary())
        .collect();
    let mut reply = Reply::json(200, Value::Array(page));
    if newer_first.len() > per_page {
        let last = newer_first[per_page - 1].id;
        reply.headers.push((
            "link".to_owned(),
            format!("<{base_url}{listing}?per_page={per_page}&cursor=v1_{last}>; rel=\"next\""),
        ));
    }
    reply
}

fn repository(state: &mut State, full_name: &str, request: &Incoming<'_>, rest: &[&str]) -> Reply {
    let key = full_name.to_lowercase();
    if !state.repos.contains_key(&key) {
        return Reply::not_found();
    }
    let body = || {
        serde_json::from_slice::<Value>(request.body)
            .ok()
            .filter(Value::is_object)
    };
    match (request.method, rest) {
        ("GET", ["contents", path @ ..]) => {
            contents(state, &key, &path.join("/"), request.query.get("ref"))
        }
        ("GET", ["commits", reference]) => match state.repos[&key].resolve(reference) {
            Some(commit) => Reply::json(200, commit.to_json()),
            None => Reply::message(422, &format!("No commit found for SHA: {reference}")),
        },
        ("GET", ["commits", reference, "check-runs"]) => {
            list_check_runs(state, &key, reference, &request.query)
        }
        ("GET", ["compare", range]) => compare(state, &key, range, &request.query),
        ("POST", ["statuses", sha]) => match body() {
            Some(body) => create_status(state, full_name, sha, &body),
            None => Reply::message(400, "Problems parsing JSON"),
        },
        ("POST", ["check-runs"]) => match body() {
            Some(body) => write_check_run(state, full_name, None, body),
            None => Reply::message(400, "Problems parsing JSON"),
        },
        ("PATCH", ["check-runs", id]) => match (body(), id.parse::<u64>()) {
            (Some(body), Ok(id)) => write_check_run(state, full_name, Some(id), body),
            (None, _) => Reply::message(400, "Problems parsing JSON"),
            (_, Err(_)) => Reply::not_found(),
        },
        ("GET", ["check-runs", id]) => match id
            .parse::<u64>()
            .ok()
            .and_then(|id| state.check_runs.get(&id))
        {
            Some(run) if run.repository.eq_ignore_ascii_case(full_name) => {
                Reply::json(200, run.to_json(state.app_id()))
            }
            _ => Reply::not_found(),
        },
        _ => Reply::not_found(),
    }
}

/// `GET /repos/{o}/{r}/contents/{path}?ref=`: a file, base64 wrapped at 60 columns.
fn contents(state: &State, key: &str, path: &str, reference: Option<&String>) -> Reply {
    let repo = &state.repos[key];
    let reference = reference.map_or("main", String::as_str);
    let Some(commit) = repo.resolve(reference) else {
        return Reply::message(404, &format!("No commit found for the ref {reference}"));
    };
    let Some(contents) = commit.files.get(path) else {
        return Reply::not_found();
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(contents);
    let wrapped: Vec<&str> = encoded
        .as_bytes()
        .chunks(60)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    let name = path.rsplit('/').next().unwrap_or(path);
    Reply::json(
        200,
        json!({
            "type": "file",
            "encoding": "base64",
            "name": name,
            "path": path,
            "size": contents.len(),
            "sha": hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(contents)[..20]),
            "content": wrapped.join("\n") + "\n",
        }),
    )
}

/// `GET /raw/{o}/{r}/{ref}/{path}`: the file's bytes at `ref` (a SHA or a branch).
fn raw(state: &State, full_name: &str, reference: &str, path: &str) -> Outcome {
    let file = state
        .repos
        .get(&full_name.to_lowercase())
        .and_then(|repo| repo.resolve(reference))
        .and_then(|commit| commit.files.get(path));
    match file {
        Some(contents) => Outcome::Raw {
            status: 200,
            body: contents.clone(),
        },
        None => Outcome::Raw {
            status: 404,
            body: b"404: Not Found".to_vec(),
        },
    }
}

/// `GET /repos/{o}/{r}/compare/{base}...{head}`.
fn compare(state: &State, key: &str, range: &str, query: &HashMap<String, String>) -> Reply {
    let repo = &state.repos[key];
    let Some((base, head)) = range.split_once("...") else {
        return Reply::not_found();
    };
    let (Some(base), Some(head)) = (repo.resolve(base), repo.resolve(head)) else {
        return Reply::not_found();
    };
    let ahead = repo.between(&base.sha, &head.sha);
    let behind = repo.between(&head.sha, &base.sha);
    let status = match (ahead.len(), behind.len()) {
        (0, 0) => "identical",
        (_, 0) => "ahead",
        (0, _) => "behind",
        _ => "diverged",
    };
    let base_ancestors = repo.ancestors(&base.sha);
    let merge_base = repo
        .between("", &head.sha)
        .into_iter()
        .rev()
        .find(|c| base_ancestors.contains(&c.sha))
        .map(|c| c.to_json());
    let Some(merge_base) = merge_base else {
        return Reply::message(
            404,
            &format!("No common ancestor between {} and {}.", base.sha, head.sha),
        );
    };
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(250);
    let commits: Vec<Value> = ahead.iter().take(per_page).map(|c| c.to_json()).collect();
    Reply::json(
        200,
        json!({
            "status": status,
            "ahead_by": ahead.len(),
            "behind_by": behind.len(),
            "total_commits": ahead.len(),
            "base_commit": base.to_json(),
            "merge_base_commit": merge_base,
            "commits": commits,
        }),
    )
}

fn optional_string(body: &Value, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// `POST /repos/{o}/{r}/statuses/{sha}`.
fn create_status(state: &mut State, full_name: &str, sha: &str, body: &Value) -> Reply {
    let Some(commit_known) = state
        .repos
        .get(&full_name.to_lowercase())
        .map(|r| r.commits.contains_key(sha))
    else {
        return Reply::not_found();
    };
    let state_value = optional_string(body, "state").unwrap_or_default();
    if !["error", "failure", "pending", "success"].contains(&state_value.as_str()) {
        return Reply::message(422, "Validation Failed: state is not included in the list");
    }
    if !commit_known {
        return Reply::message(422, &format!("No commit found for SHA: {sha}"));
    }
    let status = FakeStatus {
        id: state.next_id(),
        repository: full_name.to_owned(),
        sha: sha.to_owned(),
        state: state_value,
        context: optional_string(body, "context").unwrap_or_else(|| "default".to_owned()),
        description: optional_string(body, "description"),
        target_url: optional_string(body, "target_url"),
    };
    let reply = json!({
        "id": status.id,
        "state": status.state,
        "context": status.context,
        "description": status.description,
        "target_url": status.target_url,
        "created_at": github_time(OffsetDateTime::now_utc()),
    });
    state.statuses.push(status);
    Reply::json(201, reply)
}

const CHECK_STATUSES: &[&str] = &[
    "queued",
    "in_progress",
    "completed",
    "waiting",
    "requested",
    "pending",
];
const CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
];

/// `POST /repos/{o}/{r}/check-runs` (`id` none) or `PATCH .../check-runs/{id}`.
fn write_check_run(state: &mut State, full_name: &str, id: Option<u64>, body: Value) -> Reply {
    if matches!(state.auth, FakeAuth::Token(_)) {
        // GitHub: only Apps write check runs.
        return Reply::message(403, "Resource not accessible by personal access token");
    }
    let mut run = match id {
        Some(id) => match state.check_runs.get(&id) {
            Some(run) if run.repository.eq_ignore_ascii_case(full_name) => run.clone(),
            _ => return Reply::not_found(),
        },
        None => {
            let (Some(name), Some(head_sha)) = (
                optional_string(&body, "name"),
                optional_string(&body, "head_sha"),
            ) else {
                return Reply::message(422, "Invalid request: name and head_sha are required");
            };
            let known = state
                .repos
                .get(&full_name.to_lowercase())
                .is_some_and(|r| r.commits.contains_key(&head_sha));
            if !known {
                return Reply::message(422, &format!("No commit found for SHA: {head_sha}"));
            }
            FakeCheckRun {
                id: 0,
                repository: full_name.to_owned(),
                head_sha,
                name,
                status: "queued".to_owned(),
                conclusion: None,
                details_url: None,
                external_id: None,
                started_at: None,
                completed_at: None,
                output: None,
            }
        }
    };
    if let Some(name) = optional_string(&body, "name") {
        run.name = name;
    }
    if let Some(status) = optional_string(&body, "status") {
        if !CHECK_STATUSES.contains(&status.as_str()) {
            return Reply::message(
                422,
                &format!("Invalid request: status {status:?} is not a check run status"),
            );
        }
        run.status = status;
    }
    if let Some(conclusion) = optional_string(&body, "conclusion") {
        if !CONCLUSIONS.contains(&conclusion.as_str()) {
            return Reply::message(
                422,
                &format!("Invalid request: conclusion {conclusion:?} is not a conclusion"),
            );
        }
        run.conclusion = Some(conclusion);
        run.status = "completed".to_owned();
    }
    if run.status == "completed" && run.conclusion.is_none() {
        return Reply::message(
            422,
            "Invalid request: conclusion is required when status is completed",
        );
    }
    for (field, slot) in [
        ("details_url", &mut run.details_url),
        ("external_id", &mut run.external_id),
        ("started_at", &mut run.started_at),
        ("completed_at", &mut run.completed_at),
    ] {
        if let Some(value) = optional_string(&body, field) {
            *slot = Some(value);
        }
    }
    if run.status == "completed" && run.completed_at.is_none() {
        run.completed_at = Some(github_time(OffsetDateTime::now_utc()));
    }
    if let Some(output) = body.get("output").filter(|o| o.is_object()) {
        if output.get("title").is_none() || output.get("summary").is_none() {
            return Reply::message(422, "Invalid request: output needs title and summary");
        }
        run.output = Some(output.clone());
    }
    if id.is_none() {
        run.id = state.next_id();
    }
    state.check_run_writes.push(CheckRunWrite {
        id: run.id,
        created: id.is_none(),
        body,
    });
    let reply = run.to_json(state.app_id());
    state.check_runs.insert(run.id, run);
    Reply::json(if id.is_none() { 201 } else { 200 }, reply)
}

/// `GET /repos/{o}/{r}/commits/{ref}/check-runs` (`check_name`, `status` filters).
fn list_check_runs(
    state: &State,
    key: &str,
    reference: &str,
    query: &HashMap<String, String>,
) -> Reply {
    let Some(commit) = state.repos[key].resolve(reference) else {
        return Reply::message(422, &format!("No commit found for SHA: {reference}"));
    };
    let runs: Vec<Value> = state
        .check_runs
        .values()
        .rev()
        .filter(|run| run.repository.eq_ignore_ascii_case(key) && run.head_sha == commit.sha)
        .filter(|run| query.get("check_name").is_none_or(|name| &run.name == name))
        .filter(|run| {
            query
                .get("status")
                .is_none_or(|status| &run.status == status)
        })
        .map(|run| run.to_json(state.app_id()))
        .collect();
    Reply::json(200, json!({"total_count": runs.len(), "check_runs": runs}))
}

#[cfg(test)]
mod tests {
    use super::super::TestAppKey;
    use super::*;

    fn jwt(key: &TestAppKey, iat: i64, exp: i64, iss: &str) -> String {
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &json!({"iat": iat, "exp": exp, "iss": iss}),
            &signing,
        )
        .unwrap()
    }

    #[test]
    fn jwts_are_checked_as_github_does() {
        let key = TestAppKey::shared();
        let app = key.app(7);
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        assert_eq!(
            verify_jwt(&app, &jwt(key, t - 60, t + 540, "7"), now),
            Ok(())
        );
        // Wrong issuer, expired, too long, issued in the future, garbage.
        assert!(verify_jwt(&app, &jwt(key, t - 60, t + 540, "8"), now).is_err());
        assert!(verify_jwt(&app, &jwt(key, t - 700, t - 10, "7"), now).is_err());
        let too_long = verify_jwt(&app, &jwt(key, t - 60, t + 660, "7"), now).unwrap_err();
        assert!(too_long.contains("too far in the future"), "{too_long}");
        assert!(verify_jwt(&app, &jwt(key, t + 120, t + 500, "7"), now).is_err());
        assert!(verify_jwt(&app, "not.a.jwt", now).is_err());
    }

    #[test]
    fn raw_files_are_served_by_sha_or_branch_without_credentials() {
        let mut state = State::new(FakeAuth::Token("t0ken".into()));
        state.add_commit(
            "PRX/tools",
            super::super::FakeCommit::new("a".repeat(40)).file("ci/helper.sh", "echo hi\n"),
        );
        state
            .repo_mut("PRX/tools")
            .branches
            .insert("main".into(), "a".repeat(40));
        let mut get = |path: &str| {
            let request = Incoming {
                method: "GET",
                path,
                query: HashMap::new(),
                authorization: None,
                body: b"",
            };
            match handle(&mut state, "http://fake", &request) {
                Outcome::Raw { status, body } => (status, String::from_utf8(body).unwrap()),
                other => panic!("{path}: not a raw answer: {other:?}"),
            }
        };
        let found = (200, "echo hi\n".to_owned());
        assert_eq!(get("/raw/PRX/tools/main/ci/helper.sh"), found);
        assert_eq!(
            get(&format!("/raw/prx/tools/{}/ci/helper.sh", "a".repeat(40))),
            found
        );
        let missing = (404, "404: Not Found".to_owned());
        assert_eq!(get("/raw/PRX/tools/main/ci/other.sh"), missing);
        assert_eq!(get("/raw/PRX/tools/nope/ci/helper.sh"), missing);
        assert_eq!(get("/raw/PRX/elsewhere/main/ci/helper.sh"), missing);
    }

    #[test]
    fn deliveries_page_newest_first() {
        let mut state = State::new(FakeAuth::Anonymous);
        for n in 0..5u64 {
            state.deliveries.push(FakeDelivery {
                id: 10 + n,
                guid: format!("g{n}"),
                delivered_at: String::new(),
                redelivery: false,
                duration: 0.0,
                status: "OK".into(),
                status_code: 200,
                event: "push".into(),
                action: None,
                installation_id: None,
                repository_id: None,
                request_headers: Default::default(),
                payload: json!({}),
                response_body: String::new(),
            });
        }
        let query = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let page = deliveries(
            &state,
            "http://fake",
            "/app/hook/deliveries",
            &query(&[("per_page", "2")]),
        );
        let ids: Vec<_> = page
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [14, 13]);
        assert_eq!(
            page.headers,
            [(
                "link".to_owned(),
                "<http://fake/app/hook/deliveries?per_page=2&cursor=v1_13>; rel=\"next\""
                    .to_owned()
            )]
        );
        let last = deliveries(
            &state,
            "http://fake",
            "/app/hook/deliveries",
            &query(&[("per_page", "2"), ("cursor", "v1_11")]),
        );
        assert_eq!(last.body.as_array().unwrap().len(), 1);
        assert!(last.headers.is_empty());
        assert_eq!(
            deliveries(
                &state,
                "http://fake",
                "/app/hook/deliveries",
                &query(&[("cursor", "x")])
            )
            .status,
            422
        );
    }
}
