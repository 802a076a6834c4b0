//! The build-watcher against a real nats-server and SQS/CodeBuild in the AWS emulator.

mod binary;
mod console_retry;
mod events;
mod local;
mod log_tail;
mod reconciler;
mod record_wait;
mod shadow;
mod sqs;
mod state;
mod utils;
