//! The `Builds` call: builds in flight and recent ones, from the builds projection.

use prx_ci_proto::v1;

use super::{OpsApi, repository};
use crate::error::OpsError;

impl OpsApi {
    /// Builds in flight and the most recent finished ones.
    pub async fn builds(&self, request: v1::BuildsRequest) -> Result<v1::BuildsResponse, OpsError> {
        let recent = match request.recent {
            0 => self.config.recent_builds,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let repo = if request.repository.is_empty() {
            String::new()
        } else {
            repository(&request.repository)?.to_string()
        };
        let projection = self.projection.read().await;
        Ok(v1::BuildsResponse {
            in_flight: projection.builds.in_flight(&repo),
            recent: projection.builds.recent(recent, &repo),
        })
    }
}
