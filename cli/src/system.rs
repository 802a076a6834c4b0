//! The whole system in one process: what `prx-ci up` runs, and what the end-to-end tests start.
//! Embedded defaults: the local build runner, buildspecs from the local clone, the NATS KV
//! parameter store, no artifact checks, and Slack messages / commit statuses as log lines
//! unless tokens are configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_build_watcher::{BuildWatcher, BuildWatcherConfig};
use prx_ci_dispatcher::{Dispatcher, DispatcherConfig, LocalGitBuildspecSource};
use prx_ci_ingress::recovery::Reconciler;
use prx_ci_ingress::{Ingress, IngressConfig};
use prx_ci_local_runner::{LocalRunner, LocalRunnerConfig};
use prx_ci_notifier::{Notifier, NotifierConfig};
use prx_ci_ops::api::ParameterOwnership;
use prx_ci_ops::{OpsConfig, OpsService};
use prx_ci_publisher::{KvParameterStore, NoArtifactCheck, Publisher, PublisherConfig};
use prx_ci_shared::config::{self, NatsConfig, Validate as _};
use prx_ci_shared::github::GitHubConfig;
use prx_ci_shared::telemetry::TelemetryConfig;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

use crate::local_nats::write_private;
use tokio::task::JoinSet;

/// Every section `up` reads.
#[derive(Debug, Clone, Default)]
pub struct SystemConfig {
    pub telemetry: TelemetryConfig,
    pub nats: NatsConfig,
    pub github: GitHubConfig,
    pub ingress: IngressConfig,
    pub dispatcher: DispatcherConfig,
    pub runner: LocalRunnerConfig,
    pub build_watcher: BuildWatcherConfig,
    pub publisher: PublisherConfig,
    pub notifier: NotifierConfig,
    pub ops: OpsConfig,
}

impl SystemConfig {
    /// Loads every section from `file` (optional) and `PRX_CI_*` overrides. The ingress and ops
    /// sections are not validated yet: `up` may still fill in generated secrets.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            telemetry: config::load(file, "telemetry")?,
            nats: config::load(file, "nats")?,
            github: config::load(file, "github")?,
            ingress: IngressConfig::load_unvalidated(file)?,
            dispatcher: config::load(file, "dispatcher")?,
            runner: config::load(file, "runner")?,
            build_watcher: config::load(file, "build_watcher")?,
            publisher: config::load(file, "publisher")?,
            notifier: config::load(file, "notifier")?,
            ops: config::load_unvalidated(file, "ops")?,
        })
    }
}

/// What [`SystemConfig::prepare_local`] generated and where it stored it.
#[derive(Debug)]
pub struct LocalSecrets {
    /// The webhook secret, when none was configured.
    pub generated_webhook_secret: Option<SecretString>,
    /// The file holding the ops API token.
    pub ops_token_file: PathBuf,
}

impl SystemConfig {
    /// Local-mode settings under `data_dir` (`prx-ci up`): the runner keeps its data in
    /// `<data_dir>/runner` and runs builds in `<data_dir>-work`, and `data_dir` (the secrets
    /// written here, the NATS credentials and store) is hidden from builds. A missing webhook
    /// secret or ops token is generated and stored mode 0600 in `data_dir` for the other
    /// commands (`prx-ci demo`, `history`, ...).
    pub fn prepare_local(&mut self, data_dir: &Path) -> anyhow::Result<LocalSecrets> {
        // `up` runs this system on its own: there is no original to shadow.
        for (section, mode) in [
            ("dispatcher", self.dispatcher.mode),
            ("build_watcher", self.build_watcher.mode),
            ("publisher", self.publisher.mode),
            ("notifier", self.notifier.mode),
        ] {
            if mode.is_shadow() {
                anyhow::bail!(
                    "[{section}] mode = \"shadow\" is for running beside the original system (docs/migrating.md); `prx-ci up` runs live"
                );
            }
        }
        create_private_dir(data_dir)?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        let defaults = LocalRunnerConfig::default();
        if self.runner.data_dir == defaults.data_dir {
            self.runner.data_dir = data_dir.join("runner");
        }
        if self.runner.work_dir == defaults.work_dir {
            let mut name = data_dir.file_name().unwrap_or_default().to_owned();
            name.push("-work");
            self.runner.work_dir = data_dir.with_file_name(name);
        }
        self.runner.hidden_paths.push(data_dir.clone());

        let generated_webhook_secret = self.ingress.secrets.is_empty().then(generate_secret);
        if let Some(secret) = &generated_webhook_secret {
            self.ingress.secrets.push(secret.clone());
            write_private(&data_dir.join("webhook-secret"), secret.expose_secret())?;
        }
        let ops_token = self.ops.token.get_or_insert_with(generate_secret).clone();
        self.ops
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [ops]: {reason}"))?;
        let ops_token_file = data_dir.join("ops-token");
        write_private(&ops_token_file, ops_token.expose_secret())?;
        Ok(LocalSecrets {
            generated_webhook_secret,
            ops_token_file,
        })
    }
}

/// A random secret for local mode.
fn generate_secret() -> SecretString {
    SecretString::from(hex::encode(rand::random::<[u8; 16]>()))
}

/// Creates `dir` (and parents) and makes it accessible to this user only.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// The running services.
#[derive(Debug)]
pub struct LocalSystem {
    shutdown: CancellationToken,
    services: JoinSet<anyhow::Result<&'static str>>,
    runner: Arc<LocalRunner>,
    /// The connection the services share.
    pub runtime: Runtime,
}

impl LocalSystem {
    /// Connects to `config.nats.url`, provisions streams, consumers and buckets, and starts
    /// every service: the webhook endpoint on `webhook_listener`, the ops API on `ops_listener`,
    /// the web dashboard on `dashboard_listener` (when given).
    pub async fn start(
        mut config: SystemConfig,
        webhook_listener: TcpListener,
        ops_listener: TcpListener,
        dashboard_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let rt = Runtime::connect(&config.nats, "up", &mut registry).await?;
        rt.provision(config.nats.replicas)
            .await
            .context("cannot provision streams, consumers and KV buckets")?;

        // The dashboard streams local builds' logs from the runner's data dir, and nothing else.
        config
            .ops
            .local_build_logs
            .get_or_insert_with(|| config.runner.data_dir.clone());
        let runner = LocalRunner::new(rt.clone(), config.runner)?;
        // One GitHub client for the process: clones share the App's token cache.
        let github = prx_ci_shared::github::GitHubClient::new(config.github.clone())
            .context("cannot build the GitHub client")?;
        // The self-healing intake (docs/self-healing-intake.md): a round at start-up, then
        // every `interval`, recovering deliveries GitHub could not make while this was down.
        let reconciler = if config.ingress.self_healing.enabled {
            config
                .ingress
                .self_healing
                .check_credentials(&config.github)
                .map_err(|reason| anyhow::anyhow!("invalid configuration [ingress]: {reason}"))?;
            Some(Reconciler::new(
                &rt,
                &config.ingress,
                github.clone(),
                &mut registry,
            ))
        } else {
            None
        };
        let mut ingress = Ingress::new(rt.clone(), config.ingress, &mut registry)?;
        if let Some(reconciler) = reconciler {
            ingress = ingress.with_reconciler(reconciler);
        }
        let dispatcher = Dispatcher::new(
            rt.clone(),
            config.dispatcher,
            Arc::new(LocalGitBuildspecSource::new()),
            runner.clone(),
            &mut registry,
        )?;
        let watcher =
            BuildWatcher::new(rt.clone(), config.build_watcher, None, None, &mut registry)?;
        let ownership = ParameterOwnership::from_publisher(&config.publisher.ownership())?;
        let publisher = Publisher::new(
            rt.clone(),
            config.publisher,
            Arc::new(KvParameterStore::new(&rt.js).await?),
            Arc::new(NoArtifactCheck),
            &mut registry,
        )?;
        let notifier = Notifier::new(
            rt.clone(),
            config.notifier.clone(),
            prx_ci_notifier::chat_sink(&config.notifier.slack)?,
            prx_ci_notifier::status_sink(&config.github, &config.notifier.statuses)?,
            prx_ci_notifier::commit_source(&config.github)?,
            &mut registry,
        )?;
        // A GitHub App: check runs instead of commit statuses (docs/check-runs.md).
        let notifier =
            match prx_ci_notifier::check_run_sink(&config.github, &config.notifier.checks)? {
                Some(checks) => notifier.with_check_runs(checks),
                None => notifier,
            };
        // Rebuilds of a commit given by hand prove it is on the branch: git for the local
        // `file://` clones, GitHub's compare API for GitHub repositories.
        let commits = prx_ci_ops::ancestry::Ancestry::new(github);
        let mut ops = OpsService::new(rt.clone(), config.ops, &mut registry)?
            .with_commit_graph(Arc::new(commits))
            .with_ownership(ownership)
            .with_notice_settings(prx_ci_ops::web::pages::notice::NoticeSettings {
                links: config.notifier.links.clone(),
                statuses: prx_ci_ops::web::pages::notice::StatusSettings {
                    enabled: config.notifier.statuses.enabled,
                    context: config.notifier.statuses.context.clone(),
                },
            });
        if let Some(listener) = dashboard_listener {
            ops = ops.with_dashboard(listener);
        }
        // One registry for the process: the ingress serves it on /metrics.
        let registry = Arc::new(registry);

        let shutdown = CancellationToken::new();
        let mut services = JoinSet::new();
        services.spawn(named(
            "ingress",
            ingress.run(webhook_listener, registry, shutdown.clone()),
        ));
        services.spawn(named("dispatcher", dispatcher.run(shutdown.clone())));
        services.spawn(named("build-watcher", watcher.run(shutdown.clone())));
        services.spawn(named("publisher", publisher.run(shutdown.clone())));
        services.spawn(named("notifier", notifier.run(shutdown.clone())));
        services.spawn(named("ops", ops.run(ops_listener, shutdown.clone())));
        Ok(Self {
            shutdown,
            services,
            runner,
            runtime: rt,
        })
    }

    /// Resolves when a service stops on its own (an error, or unexpectedly).
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.services.join_next().await {
            Some(Ok(Ok(name))) => anyhow::anyhow!("{name} stopped unexpectedly"),
            Some(Ok(Err(err))) => err,
            Some(Err(err)) => anyhow::anyhow!("a service panicked: {err}"),
            None => anyhow::anyhow!("no service is running"),
        }
    }

    /// Stops every service (running local builds are stopped and reported) and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.runner.shutdown().await;
        let mut first_error = None;
        while let Some(done) = self.services.join_next().await {
            let error = match done {
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => err,
                Err(err) => anyhow::anyhow!("a service panicked: {err}"),
            };
            tracing::error!(
                error = format!("{error:#}"),
                "service failed while stopping"
            );
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn named(
    name: &'static str,
    service: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<&'static str> {
    service
        .await
        .with_context(|| format!("{name} failed"))
        .map(|()| name)
}

#[cfg(test)]
mod tests {
    use prx_ci_shared::config::Mode;

    use super::*;

    #[test]
    fn up_refuses_shadow_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SystemConfig::load(None).unwrap();
        config.publisher.mode = Mode::Shadow;
        let err = config.prepare_local(&dir.path().join("data")).unwrap_err();
        assert!(err.to_string().contains("[publisher] mode"), "{err}");
        assert!(!dir.path().join("data").exists(), "nothing prepared");
    }
}
