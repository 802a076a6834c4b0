//! Publisher integration tests against a real nats-server and the AWS emulator (moto).

mod apps;
mod fence;
mod kv_compat;
mod ownership;
mod schedules;
mod service;
mod shadow;
mod ssm_faults;
mod trust;
mod utils;
