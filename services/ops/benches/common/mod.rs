//! What the ops benches share: stream positions, this process's memory, the load average and
//! percentiles in milliseconds.
#![allow(dead_code, reason = "each bench uses its own part")]

use std::time::Duration;

use prx_ci_shared::testing::bench::percentile;

pub async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

/// This process's resident set (`VmRSS`), in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile of `sorted`, in milliseconds.
pub fn quantile(sorted: &[Duration], q: f64) -> f64 {
    millis(percentile(sorted, q))
}
