//! Dispatcher integration tests against a real nats-server, the shared fake GitHub, CodeBuild
//! in the AWS emulator, real git repositories, a recording fake backend, and the real binary
//! crashed at a fault point.

mod codebuild;
mod crash;
mod github;
mod local;
mod rerequest;
mod reruns;
mod shadow;
mod supersede;
mod utils;
