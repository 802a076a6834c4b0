//! The chaos run of issue 13: every service binary as two supervised processes, a 3-node NATS
//! cluster, the AWS emulator and fake GitHub/Slack behind a fault proxy, signed webhooks with
//! GitHub's habits, kills and outages; then the invariants, checked over what the run left.

pub mod checks;
pub mod cluster;
pub mod collect;
pub mod fakes;
pub mod faults;
pub mod history;
pub mod load;
pub mod plan;
pub mod report;
pub mod repos;
pub mod run;
pub mod service_config;
pub mod supervisor;
