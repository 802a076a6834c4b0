//! The `Rebuild` call: an operator's push, checked against the branch's history and stored as a
//! `WebhookReceived` with origin OPERATOR.

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::Chain;
use prx_ci_shared::bus::subject::{self, EventKind, WEBHOOKS_STREAM};
use prx_ci_shared::domain::{Branch, CommitSha, RepoName};
use time::OffsetDateTime;

use super::{MAX_REASON_LEN, OpsApi, repository};
use crate::ancestry::{AncestryError, Reachability};
use crate::auth::Operator;
use crate::error::OpsError;
use crate::event_log::{self, End, Start};
use crate::rebuild;

impl OpsApi {
    /// Stores an operator's push for the revision (see [`crate::rebuild`]), recorded as asked
    /// by `operator` (the identity the call's token authenticated; the request's own
    /// `requested_by` is ignored). A dry run makes every check and stores nothing.
    pub async fn rebuild(
        &self,
        request: v1::RebuildRequest,
        operator: &Operator,
    ) -> Result<v1::RebuildResponse, OpsError> {
        let repo = repository(&request.repository)?;
        let revision = request.revision.trim();
        if revision.is_empty() {
            return Err(OpsError::InvalidArgument("revision is empty".into()));
        }
        let branch = match request.branch.trim() {
            "" => None,
            branch => Some(
                Branch::new(branch)
                    .map_err(|e| OpsError::InvalidArgument(format!("branch: {e}")))?
                    .to_string(),
            ),
        };
        let reason = request.reason.trim();
        if reason.len() > MAX_REASON_LEN {
            return Err(OpsError::InvalidArgument(format!(
                "reason is longer than {MAX_REASON_LEN} bytes"
            )));
        }
        let requested_by = operator.name();
        let claimed = request.requested_by.trim();
        if !claimed.is_empty() && claimed != requested_by {
            tracing::info!(
                requested_by,
                claimed,
                "rebuild request names someone else; recording the authenticated operator"
            );
        }
        let full_name = repo.to_string();
        let filter = [subject::repository_filter(
            EventKind::WebhookReceived,
            &full_name,
        )];
        let (messages, _) = event_log::read_range(
            &self.rt.js,
            WEBHOOKS_STREAM,
            &filter,
            Start::First,
            End::Now,
            usize::MAX,
        )
        .await?;
        let webhooks: Vec<v1::WebhookReceived> = messages
            .iter()
            .filter_map(|m| match m.envelope()?.payload? {
                Payload::WebhookReceived(w) => Some(w),
                _ => None,
            })
            .collect();
        let target =
            rebuild::resolve(&full_name, revision, branch.as_deref(), &webhooks).map_err(|e| {
                match e {
                    rebuild::ResolveError::Ambiguous(_)
                    | rebuild::ResolveError::BranchMismatch { .. } => {
                        OpsError::InvalidArgument(e.to_string())
                    }
                    rebuild::ResolveError::DeletedBranch { .. } => {
                        OpsError::FailedPrecondition(e.to_string())
                    }
                    _ => OpsError::NotFound(e.to_string()),
                }
            })?;
        if target.needs_ancestry_check() {
            self.check_in_history(&repo, &target).await?;
        }
        if request.dry_run {
            tracing::info!(
                repository = %full_name,
                branch = %target.branch,
                commit = %target.commit,
                head = %target.head,
                requested_by,
                "operator rebuild dry run (nothing stored)"
            );
            return Ok(v1::RebuildResponse {
                delivery_id: String::new(),
                branch: target.branch,
                commit: target.commit,
                sequence: 0,
                requested_by: requested_by.to_owned(),
                head: target.head,
            });
        }
        let now = OffsetDateTime::now_utc();
        let now_text = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(OpsError::internal)?;
        let payload = rebuild::push_payload(&full_name, &target, requested_by, reason, &now_text);
        let delivery_id = format!("operator-{}", uuid::Uuid::new_v4());
        let envelope = Chain::starting(&delivery_id).envelope_at(
            delivery_id.clone(),
            now,
            Payload::WebhookReceived(v1::WebhookReceived {
                delivery_id: delivery_id.clone(),
                event_name: "push".into(),
                payload: serde_json::to_vec(&payload)
                    .map_err(OpsError::internal)?
                    .into(),
                hook_id: String::new(),
                repository: full_name.clone(),
                origin: v1::Origin::Operator as i32,
                requested_by: requested_by.to_owned(),
            }),
        );
        let stored = self
            .rt
            .publisher
            .publish(&envelope)
            .await
            .map_err(OpsError::unavailable)?;
        tracing::info!(
            repository = %full_name,
            branch = %target.branch,
            commit = %target.commit,
            head = %target.head,
            requested_by,
            reason,
            delivery_id = %delivery_id,
            sequence = stored.sequence,
            "operator rebuild requested"
        );
        Ok(v1::RebuildResponse {
            delivery_id,
            branch: target.branch,
            commit: target.commit,
            sequence: stored.sequence,
            requested_by: requested_by.to_owned(),
            head: target.head,
        })
    }

    /// Refuses a commit that is not in the history of its branch's head: rebuilding it as a
    /// push to the branch would publish code that was never on the branch (a fork's commit,
    /// another branch's, one a force-push removed).
    async fn check_in_history(
        &self,
        repo: &RepoName,
        target: &rebuild::Target,
    ) -> Result<(), OpsError> {
        let commit = CommitSha::parse(&target.commit)
            .map_err(|e| OpsError::InvalidArgument(e.to_string()))?;
        let head = CommitSha::parse(&target.head).map_err(OpsError::internal)?;
        let clone_url = target
            .repository
            .get("clone_url")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("https://github.com/{repo}.git"), str::to_owned);
        let refused = |why: &str| {
            OpsError::FailedPrecondition(format!(
                "commit {commit} {why} branch {:?} of {repo} (head {head}); only commits in the \
                 branch's history are rebuilt as pushes to it",
                target.branch
            ))
        };
        match self
            .commits
            .reachability(repo, &clone_url, &commit, &head)
            .await
        {
            Ok(Reachability::Reachable) => Ok(()),
            Ok(Reachability::NotReachable) => Err(refused("is not in the history of")),
            Ok(Reachability::UnknownCommit) => Err(refused("does not exist in the repository of")),
            Err(AncestryError::Unsupported(why)) => Err(OpsError::FailedPrecondition(why)),
            Err(AncestryError::Failed(err)) => Err(OpsError::CommitsUnavailable(err)),
        }
    }
}
