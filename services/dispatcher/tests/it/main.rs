//! Dispatcher integration tests against a real nats-server, a fake GitHub, CodeBuild in the AWS
//! emulator, real git repositories and a recording fake backend.

mod codebuild;
mod github;
mod local;
mod supersede;
mod utils;
