//! CodeBuild and the build environment: the `PRX_*` variable names ([`env`]); backends, build
//! ids, ARNs, final statuses, CodeBuild's time format and console pages ([`build`]); the
//! build-runner port ([`backend`]); and the state-change event every backend reports
//! ([`event`]).

pub mod backend;
pub mod build;
pub mod env;
pub mod event;
