//! The check-run port (GitHub App mode): GitHub's checks API within a write budget
//! ([`GitHubCheckRunSink`]), or nothing written in shadow mode ([`ShadowCheckRunSink`]).
//! Token mode and local mode have no check runs: the notifier writes commit statuses there
//! ([`crate::github_status`]).

use async_trait::async_trait;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use prx_ci_shared::github::GitHubClient;
use serde::Deserialize;

use crate::check_run::CheckRun;
use crate::github_status::{StatusError, WriteBudget};

/// Where check runs go.
#[async_trait]
pub trait CheckRunSink: Send + Sync + std::fmt::Debug {
    /// Waits until one write may be made (the write budget) and takes it: called before each
    /// [`CheckRunSink::write`], ahead of taking the run's lease, so a long wait for the budget
    /// never eats into the lease. Nothing to wait for by default.
    async fn ready(&self) {}

    /// Creates the run (`id` none) or updates run `id` to `run`; returns the run's id. Spends
    /// no budget: [`CheckRunSink::ready`] took it.
    async fn write(&self, run: &CheckRun, id: Option<u64>) -> Result<u64, StatusError>;

    /// The id of a run already created for `run` (same commit, name and `external_id`), for a
    /// creation whose answer was never stored (a crash or a lost write of the record).
    async fn find(&self, run: &CheckRun) -> Result<Option<u64>, StatusError>;
}

/// Shadow mode (`[notifier] mode = "shadow"`): nothing is written; the notifier records what it
/// would have written (`NotificationDelivered.shadow`). Every run gets the id 0.
#[derive(Debug, Default)]
pub struct ShadowCheckRunSink;

#[async_trait]
impl CheckRunSink for ShadowCheckRunSink {
    async fn write(&self, run: &CheckRun, _id: Option<u64>) -> Result<u64, StatusError> {
        tracing::debug!(
            repository = %run.repository,
            commit = %run.head_sha,
            name = %run.name,
            status = run.status.as_str(),
            "shadow mode: check run not written"
        );
        Ok(0)
    }

    async fn find(&self, _run: &CheckRun) -> Result<Option<u64>, StatusError> {
        Ok(None)
    }
}

/// GitHub's `POST /repos/{o}/{r}/check-runs` and `PATCH /repos/{o}/{r}/check-runs/{id}` through
/// the shared client (App mode: the repository's installation token), within a
/// [`WriteBudget`] (creations and updates alike, taken by [`CheckRunSink::ready`]; the lookup
/// is a read and spends nothing).
#[derive(Debug)]
pub struct GitHubCheckRunSink {
    client: GitHubClient,
    budget: WriteBudget,
}

impl GitHubCheckRunSink {
    pub fn new(client: GitHubClient, per_minute: u32, per_hour: u32) -> Self {
        Self {
            client,
            budget: WriteBudget::new(per_minute, per_hour),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct Listed {
    id: u64,
    external_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Listing {
    check_runs: Vec<Listed>,
}

#[async_trait]
impl CheckRunSink for GitHubCheckRunSink {
    async fn ready(&self) {
        self.budget.acquire().await;
    }

    async fn write(&self, run: &CheckRun, id: Option<u64>) -> Result<u64, StatusError> {
        let mut body = run.body();
        let answer: Answer = match id {
            None => {
                // Once: the worker's retry looks the run up by its external id first.
                let path = format!("/repos/{}/check-runs", run.repository);
                self.client.create_json(&path, &body).await?
            }
            Some(id) => {
                // The commit of a run is fixed at its creation.
                if let Some(fields) = body.as_object_mut() {
                    fields.remove("head_sha");
                }
                let path = format!("/repos/{}/check-runs/{id}", run.repository);
                self.client.patch_json(&path, &body).await?
            }
        };
        Ok(answer.id)
    }

    async fn find(&self, run: &CheckRun) -> Result<Option<u64>, StatusError> {
        let path = format!(
            "/repos/{}/commits/{}/check-runs?check_name={}&filter=all&per_page=100",
            run.repository,
            run.head_sha,
            utf8_percent_encode(&run.name, NON_ALPHANUMERIC)
        );
        let listing: Listing = self.client.get_json(&path).await?;
        Ok(listing
            .check_runs
            .into_iter()
            .find(|listed| listed.external_id.as_deref() == Some(run.external_id.as_str()))
            .map(|listed| listed.id))
    }
}
