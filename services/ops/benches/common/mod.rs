//! What the ops benches share: stream positions, the dashboard started and caught up, this
//! process's memory, the load average and percentiles in milliseconds.
#![allow(dead_code, reason = "each bench uses its own part")]

use std::time::{Duration, Instant};

use prx_ci_ops::OpsConfig;
use prx_ci_ops::api::OpsApi;
use prx_ci_ops::dashboard_projection::Source;
use prx_ci_ops::web::{Web, pages::notice::NoticeSettings};
use prx_ci_shared::testing::bench::percentile;
use prx_ci_shared::testing::wait_until;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;

/// The dashboard's operator token in the benches.
pub const TOKEN: &str = "bench-token-0123456789abcdef";

/// The dashboard as `OpsService::run` builds it (operator token [`TOKEN`]), following the
/// streams from empty until its projection holds both up to `events_end` and `webhooks_end`
/// (at most `timeout`); the time that took from its start.
pub async fn dashboard_caught_up(
    rt: &Runtime,
    config: &OpsConfig,
    api: OpsApi,
    shutdown: &CancellationToken,
    (events_end, webhooks_end): (u64, u64),
    timeout: Duration,
) -> (Web, tokio::task::JoinHandle<()>, Duration) {
    let started = Instant::now();
    let web = Web::new(
        config,
        vec![("ops-token".into(), SecretString::from(TOKEN))],
        api,
        rt.js.clone(),
        NoticeSettings::default(),
        shutdown.clone(),
    );
    let projection = web.projection.clone();
    let live = tokio::spawn(web.follow());
    wait_until(timeout, "the dashboard's catch-up", || {
        let projection = projection.clone();
        async move {
            let p = projection.read().await;
            (p.position(Source::Events) == events_end
                && p.position(Source::Webhooks) == webhooks_end)
                .then_some(())
        }
    })
    .await;
    (web, live, started.elapsed())
}

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
