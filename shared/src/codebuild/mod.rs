//! CodeBuild and the build environment: the build-runner port ([`backend`]), the state-change
//! event every backend reports ([`event`]), and the vocabulary the services share.

pub mod backend;
pub mod event;
