//! The fake GitHub's state and the records tests read back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{Value, json};
use time::OffsetDateTime;

/// How the fake authenticates repository calls.
#[derive(Debug, Clone)]
pub enum FakeAuth {
    /// Every call is accepted (local mode, `[github]` without credentials).
    Anonymous,
    /// Token mode: repository calls need `Authorization: Bearer <token>` with this token.
    Token(String),
    /// App mode: `/app/...` calls need the App's JWT, repository calls an installation token.
    App(FakeApp),
}

/// The GitHub App the fake knows: its id and public key.
#[derive(Debug, Clone)]
pub struct FakeApp {
    pub app_id: u64,
    /// The RSA public key, DER `RSAPublicKey` (PKCS#1).
    pub public_key_der: Vec<u8>,
}

/// A commit of a fake repository: its parents, message, author and whole tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCommit {
    pub sha: String,
    pub parents: Vec<String>,
    pub message: String,
    /// The git author's name.
    pub author_name: String,
    /// The author's GitHub login (`None`: not a GitHub user, `author` is null).
    pub author_login: Option<String>,
    /// Path -> contents. Files not set here are inherited from the first parent when the
    /// commit is added.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl FakeCommit {
    pub fn new(sha: impl Into<String>) -> Self {
        Self {
            sha: sha.into(),
            parents: Vec::new(),
            message: "A commit".to_owned(),
            author_name: "Git Author".to_owned(),
            author_login: Some("octocat".to_owned()),
            files: BTreeMap::new(),
        }
    }

    pub fn parent(mut self, sha: impl Into<String>) -> Self {
        self.parents.push(sha.into());
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn author(mut self, name: impl Into<String>, login: Option<&str>) -> Self {
        self.author_name = name.into();
        self.author_login = login.map(str::to_owned);
        self
    }

    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.into(), contents.into());
        self
    }

    /// The commit as GitHub's REST API shows it.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "sha": self.sha,
            "commit": {
                "message": self.message,
                "author": {
                    "name": self.author_name,
                    "email": "author@example.com",
                    "date": "2026-01-01T00:00:00Z",
                },
            },
            "author": self.author_login.as_ref().map(|login| json!({"login": login})),
            "parents": self.parents.iter().map(|sha| json!({"sha": sha})).collect::<Vec<_>>(),
        })
    }
}

/// A commit status as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeStatus {
    pub id: u64,
    /// `owner/repo` as written in the path.
    pub repository: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
}

/// A check run's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCheckRun {
    pub id: u64,
    pub repository: String,
    pub head_sha: String,
    pub name: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// `title`, `summary`, `text` as last written.
    pub output: Option<Value>,
}

impl FakeCheckRun {
    pub(super) fn to_json(&self, app_id: Option<u64>) -> Value {
        let mut output = self
            .output
            .clone()
            .unwrap_or_else(|| json!({"title": null, "summary": null, "text": null}));
        output["annotations_count"] = json!(0);
        json!({
            "id": self.id,
            "head_sha": self.head_sha,
            "name": self.name,
            "status": self.status,
            "conclusion": self.conclusion,
            "details_url": self.details_url,
            "external_id": self.external_id,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "output": output,
            "html_url": format!("https://github.com/{}/runs/{}", self.repository, self.id),
            "app": app_id.map(|id| json!({"id": id})),
        })
    }
}

/// One write to a check run, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRunWrite {
    pub id: u64,
    /// `true`: `POST .../check-runs`; `false`: `PATCH .../check-runs/{id}`.
    pub created: bool,
    /// The request body as sent.
    pub body: Value,
}

/// A webhook delivery the fake made (or tried to make).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeDelivery {
    pub id: u64,
    pub guid: String,
    pub delivered_at: String,
    pub redelivery: bool,
    /// Seconds.
    pub duration: f64,
    /// `OK`, `Invalid HTTP Response: 503`, or `failed to connect`.
    pub status: String,
    /// Ingress's HTTP status; 0 when it could not be reached.
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    /// The request's headers (signature included).
    pub request_headers: BTreeMap<String, String>,
    pub payload: Value,
    pub response_body: String,
}

impl FakeDelivery {
    /// The entry of `GET /app/hook/deliveries`.
    pub(super) fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "guid": self.guid,
            "delivered_at": self.delivered_at,
            "redelivery": self.redelivery,
            "duration": self.duration,
            "status": self.status,
            "status_code": self.status_code,
            "event": self.event,
            "action": self.action,
            "installation_id": self.installation_id,
            "repository_id": self.repository_id,
            "throttled_at": null,
        })
    }

    /// `GET /app/hook/deliveries/{id}`.
    pub(super) fn detail(&self, url: Option<&str>) -> Value {
        let mut detail = self.summary();
        detail["url"] = json!(url.unwrap_or_default());
        detail["request"] = json!({"headers": self.request_headers, "payload": self.payload});
        detail["response"] = json!({"headers": {}, "payload": self.response_body});
        detail
    }
}

/// A request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

#[derive(Debug)]
pub(super) struct Repo {
    pub id: u64,
    pub commits: HashMap<String, FakeCommit>,
    pub branches: HashMap<String, String>,
}

impl Repo {
    /// A SHA or branch name to a commit SHA.
    pub fn resolve(&self, reference: &str) -> Option<&FakeCommit> {
        self.commits.get(reference).or_else(|| {
            self.branches
                .get(reference)
                .and_then(|sha| self.commits.get(sha))
        })
    }

    /// `sha` and every commit reachable from it.
    pub fn ancestors(&self, sha: &str) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([sha.to_owned()]);
        while let Some(sha) = queue.pop_front() {
            if !seen.insert(sha.clone()) {
                continue;
            }
            if let Some(commit) = self.commits.get(&sha) {
                queue.extend(commit.parents.iter().cloned());
            }
        }
        seen
    }

    /// Commits reachable from `head` and not from `base`, oldest first (as compare lists
    /// them).
    pub fn between(&self, base: &str, head: &str) -> Vec<&FakeCommit> {
        let excluded = self.ancestors(base);
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([head.to_owned()]);
        while let Some(sha) = queue.pop_front() {
            if excluded.contains(&sha) || !seen.insert(sha.clone()) {
                continue;
            }
            if let Some(commit) = self.commits.get(&sha) {
                order.push(commit);
                queue.extend(commit.parents.iter().cloned());
            }
        }
        order.reverse();
        order
    }
}

#[derive(Debug)]
pub(super) struct Issued {
    pub installation: u64,
    pub expires_at: OffsetDateTime,
    pub revoked: bool,
}

#[derive(Debug)]
pub(super) struct State {
    pub auth: FakeAuth,
    pub token_lifetime: time::Duration,
    pub repos: HashMap<String, Repo>,
    /// Installation -> repository keys (lower-case `owner/repo`).
    pub installations: BTreeMap<u64, BTreeSet<String>>,
    pub tokens: HashMap<String, Issued>,
    /// The installation of each mint, in order.
    pub mints: Vec<u64>,
    /// Installations whose tokens are refused as soon as they are issued.
    pub refused: HashSet<u64>,
    pub statuses: Vec<FakeStatus>,
    pub check_runs: BTreeMap<u64, FakeCheckRun>,
    pub check_run_writes: Vec<CheckRunWrite>,
    /// Where webhooks go, and the secret they are signed with.
    pub webhook: Option<(String, String)>,
    /// Oldest first.
    pub deliveries: Vec<FakeDelivery>,
    pub requests: Vec<FakeRequest>,
    pub next_id: u64,
}

impl State {
    pub fn new(auth: FakeAuth) -> Self {
        Self {
            auth,
            token_lifetime: time::Duration::hours(1),
            repos: HashMap::new(),
            installations: BTreeMap::new(),
            tokens: HashMap::new(),
            mints: Vec::new(),
            refused: HashSet::new(),
            statuses: Vec::new(),
            check_runs: BTreeMap::new(),
            check_run_writes: Vec::new(),
            webhook: None,
            deliveries: Vec::new(),
            requests: Vec::new(),
            next_id: 1000,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn app_id(&self) -> Option<u64> {
        match &self.auth {
            FakeAuth::App(app) => Some(app.app_id),
            _ => None,
        }
    }

    /// The repository `full_name`, created when new.
    pub fn repo_mut(&mut self, full_name: &str) -> &mut Repo {
        let key = full_name.to_lowercase();
        if !self.repos.contains_key(&key) {
            let id = self.next_id();
            self.repos.insert(
                key.clone(),
                Repo {
                    id,
                    commits: HashMap::new(),
                    branches: HashMap::new(),
                },
            );
        }
        self.repos.get_mut(&key).expect("inserted above")
    }

    /// Adds `commit`, inheriting the files of its first parent that it does not set.
    pub fn add_commit(&mut self, repository: &str, mut commit: FakeCommit) {
        let repo = self.repo_mut(repository);
        if let Some(parent) = commit.parents.first().and_then(|p| repo.commits.get(p)) {
            for (path, contents) in &parent.files {
                commit
                    .files
                    .entry(path.clone())
                    .or_insert_with(|| contents.clone());
            }
        }
        repo.commits.insert(commit.sha.clone(), commit);
    }

    /// The installation `repository` belongs to.
    pub fn installation_of(&self, repository: &str) -> Option<u64> {
        let key = repository.to_lowercase();
        self.installations
            .iter()
            .find(|(_, repos)| repos.contains(&key))
            .map(|(id, _)| *id)
    }
}
