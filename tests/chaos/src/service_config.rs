//! The TOML configuration file of each service process (pure): shared sections pointing at
//! the cluster, the emulator and the fakes (through the fault proxy), and the service's own
//! section with short leases and timeouts so a killed replica's work is taken over within the
//! run.

use std::fmt::Write as _;
use std::path::Path;

/// Where everything is, as the services see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Comma-separated NATS URLs of the cluster.
    pub nats: String,
    /// The AWS endpoint (moto, through the proxy).
    pub aws: String,
    /// The GitHub API (through the proxy).
    pub github: String,
    /// The Slack Web API (through the proxy).
    pub slack: String,
    /// The webhook secret.
    pub webhook_secret: String,
    /// The runner's data dir shared by both dispatcher replicas.
    pub runner_data_dir: String,
    /// The runner's work dir (outside the data dir).
    pub runner_work_dir: String,
    /// `PATH` inside builds.
    pub build_path: String,
}

/// The services' `[github] token` (the fake GitHub accepts only this one).
pub const GITHUB_TOKEN: &str = "chaos-github-token";
/// Slack channel of every build message.
pub const CHANNEL: &str = "C0CHAOS";
/// The bucket the publisher's (unused: values are trusted) S3 checks name.
pub const BUCKET: &str = "chaos-application-code";
/// The ingress store timeout: a cluster outage lasts longer than this.
pub const STORE_TIMEOUT_MS: u64 = 2000;

/// The config file of replica `replica` (0-based) of `service`, listening on `port` (the
/// webhook listener of the ingress, the ops listener of the others).
pub fn render(service: &str, replica: usize, port: u16, e: &Endpoints) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "[nats]\nurl = {nats:?}\nreplicas = 3\nconnect_timeout = \"5s\"\nclient_name = \"chaos-{service}-{replica}\"\n\n\
         [telemetry]\nlog_filter = \"info,async_nats=warn\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = {aws:?}\n\n\
         [github]\napi_url = {github:?}\ntoken = {GITHUB_TOKEN:?}\nrequest_timeout = \"5s\"\n\n",
        nats = e.nats,
        aws = e.aws,
        github = e.github,
    );
    let listen = format!("127.0.0.1:{port}");
    let _ = match service {
        "prx-ci-ingress" => write!(
            out,
            "[ingress]\nlisten = {listen:?}\nsecrets = [{secret:?}]\nstore_timeout = \"{STORE_TIMEOUT_MS}ms\"\n",
            secret = e.webhook_secret,
        ),
        "prx-ci-dispatcher" => write!(
            out,
            "[dispatcher]\nops_listen = {listen:?}\nbackend = \"local\"\nreruns = 1\n\n\
             [runner]\ninstance = \"dispatcher-{replica}\"\ndata_dir = {data:?}\nwork_dir = {work:?}\n\
             isolation = \"none\"\nmax_concurrent_builds = 4\ntimeout = \"2m\"\n\n\
             [runner.environment]\nPATH = {path:?}\n",
            data = e.runner_data_dir,
            work = e.runner_work_dir,
            path = e.build_path,
        ),
        "prx-ci-build-watcher" => write!(out, "[build_watcher]\nops_listen = {listen:?}\n"),
        "prx-ci-publisher" => write!(
            out,
            "[publisher]\nops_listen = {listen:?}\napplication_code_bucket = {BUCKET:?}\n\
             s3_force_path_style = true\nvalue_checks = \"trusted\"\nclaim_lease = \"6s\"\n\
             write_timeout = \"2s\"\n"
        ),
        "prx-ci-notifier" => write!(
            out,
            "[notifier]\nops_listen = {listen:?}\nchannel = {CHANNEL:?}\nlease = \"5s\"\n\n\
             [notifier.slack]\napi_url = {slack:?}\ntoken = \"chaos-slack-token\"\nmin_interval = \"1ms\"\n\
             request_timeout = \"5s\"\n\n\
             [notifier.statuses]\nper_minute = 100000\nper_hour = 1000000\n",
            slack = e.slack,
        ),
        other => writeln!(out, "# unknown service {other}"),
    };
    out
}

/// Where replica `replica` of `service` keeps its config and log under `dir`.
pub fn files(
    dir: &Path,
    service: &str,
    replica: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let stem = format!("{}-{replica}", service.trim_start_matches("prx-ci-"));
    (
        dir.join(format!("{stem}.toml")),
        dir.join(format!("{stem}.log")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            nats: "nats://127.0.0.1:1,nats://127.0.0.1:2".into(),
            aws: "http://127.0.0.1:3".into(),
            github: "http://127.0.0.1:4".into(),
            slack: "http://127.0.0.1:5".into(),
            webhook_secret: "s3cret".into(),
            runner_data_dir: "/run/runner".into(),
            runner_work_dir: "/run/work".into(),
            build_path: "/usr/bin:/bin".into(),
        }
    }

    /// The file as the services' loader (figment) reads it.
    fn parse(text: &str) -> serde_json::Value {
        use figment::providers::{Format as _, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn every_service_config_is_valid_toml_with_its_section() {
        for (service, section) in [
            ("prx-ci-ingress", "ingress"),
            ("prx-ci-dispatcher", "dispatcher"),
            ("prx-ci-build-watcher", "build_watcher"),
            ("prx-ci-publisher", "publisher"),
            ("prx-ci-notifier", "notifier"),
        ] {
            let text = render(service, 1, 9000, &endpoints());
            let table = parse(&text);
            assert!(table.get(section).is_some(), "{text}");
            assert_eq!(table["nats"]["replicas"].as_i64(), Some(3));
            assert!(text.contains("127.0.0.1:9000"), "{text}");
        }
        let dispatcher = render("prx-ci-dispatcher", 1, 9000, &endpoints());
        let table = parse(&dispatcher);
        assert_eq!(table["runner"]["instance"].as_str(), Some("dispatcher-1"));
        assert_eq!(table["runner"]["data_dir"].as_str(), Some("/run/runner"));
    }
}
