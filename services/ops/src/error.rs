//! The one mapping of ops errors to gRPC statuses. Internal failures are logged with their
//! chain and answered opaquely.

use tonic::{Code, Status};

/// Why an ops call failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request is wrong (the message says how).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but cannot be done in the current state (already retried,
    /// nothing to replay).
    #[error("{0}")]
    FailedPrecondition(String),
    /// NATS/JetStream is unreachable or timed out: try again.
    #[error("the event store is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// GitHub (or local git) could not answer a question the call depends on: try again.
    #[error("the commit graph is unavailable: {0:#}")]
    CommitsUnavailable(anyhow::Error),
    /// Anything else; details only in the log.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl OpsError {
    pub fn unavailable(err: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(err.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }
}

impl From<crate::event_log::EventLogError> for OpsError {
    fn from(err: crate::event_log::EventLogError) -> Self {
        match err {
            crate::event_log::EventLogError::NoStream(s) => {
                Self::NotFound(format!("stream {s} does not exist"))
            }
            other @ crate::event_log::EventLogError::Read { .. } => Self::Unavailable(other.into()),
        }
    }
}

impl From<OpsError> for Status {
    fn from(err: OpsError) -> Self {
        match err {
            OpsError::InvalidArgument(m) => Status::new(Code::InvalidArgument, m),
            OpsError::NotFound(m) => Status::new(Code::NotFound, m),
            OpsError::FailedPrecondition(m) => Status::new(Code::FailedPrecondition, m),
            OpsError::Unavailable(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "ops call: event store unavailable"
                );
                Status::new(Code::Unavailable, "the event store is unavailable; retry")
            }
            OpsError::CommitsUnavailable(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "ops call: cannot check commit ancestry"
                );
                Status::new(
                    Code::Unavailable,
                    "cannot check the commit's ancestry (GitHub or git failed); retry",
                )
            }
            OpsError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "ops call failed");
                Status::new(Code::Internal, "internal error (see the ops service log)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_in_the_log() {
        let status = Status::from(OpsError::internal(anyhow::anyhow!("secret detail")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret detail"));
        let status = Status::from(OpsError::NotFound("no such consumer".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such consumer");
    }
}
