//! The fault proxy in front of the AWS emulator and the fakes: where the services reach each
//! upstream, and what was injected. The one file to change when the shared proxy
//! (`prx_ci_shared::testing::fault_proxy`) is available: until then every front is the
//! upstream itself and nothing is injected.

/// The upstreams, and the URLs the services use for them.
#[derive(Debug, Clone)]
pub struct Fronts {
    pub aws: String,
    pub github: String,
    pub slack: String,
}

impl Fronts {
    /// Puts a front before each upstream (`seed` drives the proxy's choices).
    pub async fn start(aws: &str, github: &str, slack: &str, _seed: u64) -> anyhow::Result<Self> {
        Ok(Self {
            aws: aws.to_owned(),
            github: github.to_owned(),
            slack: slack.to_owned(),
        })
    }

    /// The faults injected so far, by kind (`ssm ThrottlingException`, `github 503`, ...).
    pub fn injected(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
