//! The events of one build (a CodeBuild build of `PRX/my-app`) that the notice's tests, and
//! the notifier's, fold into a [`BuildView`](super::view::BuildView).

use prx_ci_proto::v1::{self, envelope::Payload};
use time::macros::datetime;

use crate::Chain;
use crate::bus::envelope::timestamp;

pub const SHA: &str = "165df6a5fd675dcf67a1b2c3d4e5f60718293a4b";

pub fn build_ref() -> v1::BuildRef {
    v1::BuildRef {
        build_id: "infrastructure-ci-Runner2:6d1c4a38-3f1e-4b7e-9d7a-0f1e2d3c4b5a".into(),
        build_request_id: "req-1".into(),
        repository: "PRX/my-app".into(),
        commit: SHA.into(),
        architecture: v1::Architecture::X8664 as i32,
        backend: "codebuild".into(),
        project: "infrastructure-ci-Runner2".into(),
        region: "us-east-1".into(),
        log_url: "https://example.test/log".into(),
        retry_of: String::new(),
        shadowed: false,
    }
}

pub fn envelope(id: &str, payload: Payload) -> v1::Envelope {
    Chain::starting("delivery-1").envelope_at(id.into(), datetime!(2026-11-26 08:00 UTC), payload)
}

/// The dispatcher's request of [`build_ref`] (as build events carry it).
pub fn request() -> v1::BuildRequested {
    v1::BuildRequested {
        build: Some(build_ref()),
        event_name: "push".into(),
        branch: "main".into(),
        ..Default::default()
    }
}

pub fn started() -> Payload {
    Payload::BuildStarted(v1::BuildStarted {
        requested: Some(request()),
        build: Some(build_ref()),
        started_at: Some(timestamp(datetime!(2026-11-26 08:00 UTC))),
        environment: Default::default(),
    })
}

pub fn completed(status: v1::BuildStatus) -> Payload {
    Payload::BuildCompleted(v1::BuildCompleted {
        requested: Some(request()),
        build: Some(build_ref()),
        status: status as i32,
        duration_ms: 192_000,
        ..Default::default()
    })
}
