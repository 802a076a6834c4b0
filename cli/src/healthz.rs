//! `prx-ci healthz`: the container image's health probe. The image is distroless (no shell, no
//! curl), so its `HEALTHCHECK` runs this against the service's `/healthz`.

use std::time::Duration;

use anyhow::Context as _;

/// The environment variable naming the URL to probe. One image runs every service and each
/// serves `/healthz` on its own address, so the container (compose, ECS) says which.
pub const URL_ENV: &str = "PRX_CI_HEALTHZ_URL";

/// How long the probe waits for the answer. Shorter than the Dockerfile's `--timeout=5s`, so a
/// hung service is reported by this message rather than by Docker killing the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `prx-ci healthz`.
#[derive(Debug, clap::Args)]
pub struct HealthzArgs {
    /// The endpoint to probe, e.g. `http://127.0.0.1:9102/healthz`.
    // Optional here, checked in `run`: clap exits 2 on a missing argument, and Docker reserves
    // exit status 2 of a health check; every failure of the probe must be status 1.
    #[arg(env = URL_ENV)]
    url: Option<reqwest::Url>,
}

/// GETs the URL; success is a 2xx answer within [`PROBE_TIMEOUT`].
pub async fn run(args: HealthzArgs) -> anyhow::Result<()> {
    let url = args
        .url
        .with_context(|| format!("no URL to probe: pass one or set {URL_ENV}"))?;
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("cannot GET {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    println!("{url} answered {status}");
    Ok(())
}
