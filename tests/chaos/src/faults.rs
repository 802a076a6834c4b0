//! The fault proxies (`prx_ci_shared::testing::fault_proxy`) in front of the AWS emulator and
//! the fakes, and the faults they inject at random (seeded): SSM `ThrottlingException` and
//! 5xx, GitHub 5xx and 429 (buildspec reads and status writes), Slack 429.

use std::time::Duration;

use prx_ci_shared::testing::fault_proxy::{Fault, FaultProxy, FaultRule, Match};

/// The proxies; the services use their URLs.
#[derive(Debug)]
pub struct Fronts {
    aws_proxy: FaultProxy,
    github_proxy: FaultProxy,
    slack_proxy: FaultProxy,
    pub aws: String,
    pub github: String,
    pub slack: String,
}

/// A rule of a front: the requests, the fault, its probability.
type Rule = (Match, Fault, f64);

/// The rules of each front.
fn rules() -> [(&'static str, Vec<Rule>); 3] {
    let ssm = |op: &str| Match::aws(&format!("AmazonSSM.{op}"));
    [
        (
            "ssm",
            vec![
                (ssm("PutParameter"), Fault::ssm_throttling(), 0.15),
                (ssm("PutParameter"), Fault::server_error(500), 0.05),
                (ssm("GetParameter"), Fault::ssm_throttling(), 0.1),
                (ssm("GetParameter"), Fault::server_error(503), 0.05),
            ],
        ),
        (
            "github",
            vec![
                (
                    Match::any().method("POST").path_prefix("/repos/"),
                    Fault::server_error(502),
                    0.08,
                ),
                (
                    Match::any().method("POST").path_prefix("/repos/"),
                    Fault::too_many_requests(Duration::from_secs(1)),
                    0.05,
                ),
                (
                    Match::any().method("GET").path_prefix("/repos/"),
                    Fault::server_error(503),
                    0.05,
                ),
            ],
        ),
        (
            "slack",
            vec![(
                Match::any().method("POST").path_prefix("/chat."),
                Fault::too_many_requests(Duration::from_secs(1)),
                0.1,
            )],
        ),
    ]
}

impl Fronts {
    /// Starts a proxy before each upstream, with its faults unless `inject` is false; `seed`
    /// drives their coins.
    pub async fn start(
        aws: &str,
        github: &str,
        slack: &str,
        seed: u64,
        inject: bool,
    ) -> anyhow::Result<Self> {
        let aws_proxy = FaultProxy::start_seeded(aws, seed).await;
        let github_proxy = FaultProxy::start_seeded(github, seed.wrapping_add(1)).await;
        let slack_proxy = FaultProxy::start_seeded(slack, seed.wrapping_add(2)).await;
        let [ssm_rules, github_rules, slack_rules] = if inject {
            rules()
        } else {
            [("ssm", vec![]), ("github", vec![]), ("slack", vec![])]
        };
        for (proxy, (_, list)) in [
            (&aws_proxy, ssm_rules),
            (&github_proxy, github_rules),
            (&slack_proxy, slack_rules),
        ] {
            for (matcher, fault, p) in list {
                proxy.add(FaultRule::new(matcher, fault).probability(p));
            }
        }
        Ok(Self {
            aws: aws_proxy.url(),
            github: github_proxy.url(),
            slack: slack_proxy.url(),
            aws_proxy,
            github_proxy,
            slack_proxy,
        })
    }

    /// The faults injected so far, by front and kind (`ssm throttling`, `github
    /// server_error_502`, ...).
    pub fn injected(&self) -> Vec<(String, u64)> {
        [
            ("ssm", &self.aws_proxy),
            ("github", &self.github_proxy),
            ("slack", &self.slack_proxy),
        ]
        .into_iter()
        .flat_map(|(front, proxy)| {
            proxy
                .injected()
                .into_iter()
                .map(move |(kind, n)| (format!("{front} {kind}"), n))
        })
        .collect()
    }
}
