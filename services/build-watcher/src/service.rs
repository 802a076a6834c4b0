//! Wiring: opens the build store, starts its watch of the builds bucket, the two consumers and,
//! in production, the SQS source and the reconciler.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::consume::ConsumerSettings;
use prx_ci_shared::bus::nats::Definitions;
use prx_ci_shared::run_consumer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::build_store::BuildStore;
use crate::cloudwatch_logs::LogSource;
use crate::config::BuildWatcherConfig;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::report_handler::{ReportHandler, RequestConsumer};
use crate::request_handler::RequestHandler;
use crate::sqs::SqsSource;

/// Durable consumer of BuildRequested / BuildCancelled (`deploy/nats/consumers/build-watcher.json`).
pub const REQUESTS_CONSUMER: &str = "build-watcher";
/// Durable consumer of BuildReportReceived (`deploy/nats/consumers/build-watcher-reports.json`).
pub const REPORTS_CONSUMER: &str = "build-watcher-reports";

/// The build-watcher.
#[derive(Debug)]
pub struct BuildWatcher {
    rt: Runtime,
    config: BuildWatcherConfig,
    codebuild: Option<aws_sdk_codebuild::Client>,
    sqs: Option<aws_sdk_sqs::Client>,
    logs: Option<Arc<dyn LogSource>>,
    metrics: Metrics,
    requests: ConsumerSettings,
    reports: ConsumerSettings,
}

impl BuildWatcher {
    /// Builds the service. `codebuild`: the reconciler runs when given. `sqs`: the SQS source
    /// runs when given (then `config.queue_url` is required). Local mode passes `None` twice.
    pub fn new(
        rt: Runtime,
        config: BuildWatcherConfig,
        codebuild: Option<aws_sdk_codebuild::Client>,
        sqs: Option<aws_sdk_sqs::Client>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        use prx_ci_shared::config::Validate as _;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid [build_watcher] configuration: {reason}"))?;
        if sqs.is_some() && config.queue_url.is_none() {
            anyhow::bail!("an SQS client was given but [build_watcher] queue_url is not set");
        }
        let definitions = Definitions::embedded()?;
        let requests = ConsumerSettings::from_definition(definitions.consumer(REQUESTS_CONSUMER)?)
            .with_concurrency(config.request_concurrency)
            .one_at_a_time_per_subject();
        let reports = ConsumerSettings::from_definition(definitions.consumer(REPORTS_CONSUMER)?)
            .with_concurrency(config.report_concurrency)
            .one_at_a_time_per_subject();
        Ok(Self {
            rt,
            config,
            codebuild,
            sqs,
            logs: None,
            metrics: Metrics::register(registry),
            requests,
            reports,
        })
    }

    /// Reads the end of failed CodeBuild builds' logs from `logs` (production:
    /// [`CloudWatchLogs`](crate::cloudwatch_logs::CloudWatchLogs)), for their completions' log
    /// tails. Without it (local mode) only the local runner's reported tails are carried.
    pub fn with_log_source(mut self, logs: Arc<dyn LogSource>) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Runs until `shutdown`; returns the first task's error (and stops the others then).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = BuildStore::open(&self.rt.js)
            .await
            .context("cannot open the build-watcher's KV buckets (provisioned?)")?;
        let stop = shutdown.child_token();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

        // Wakes reports waiting for their build's record (never fails: it reopens itself).
        tasks.spawn({
            let (store, stop) = (store.clone(), stop.clone());
            async move {
                store.watch_builds(stop).await;
                ("builds watch", Ok(()))
            }
        });

        let requests = Arc::new(RequestHandler::new(store.clone()));
        tasks.spawn({
            let (js, publisher, metrics, stop) = (
                self.rt.js.clone(),
                self.rt.publisher.clone(),
                self.rt.consumer_metrics.clone(),
                stop.clone(),
            );
            let settings = self.requests.clone();
            async move {
                (
                    "requests consumer",
                    run_consumer(js, publisher, settings, requests, metrics, stop).await,
                )
            }
        });

        let reports = Arc::new(ReportHandler {
            store: store.clone(),
            publisher: self.rt.publisher.clone(),
            js: self.rt.js.clone(),
            requests: RequestConsumer {
                stream: self.requests.stream.clone(),
                durable: self.requests.durable.clone(),
            },
            request_wait: self.config.request_wait,
            unrequested_after: self.config.unrequested_after,
            metrics: self.metrics.clone(),
            mode: self.config.mode,
            logs: self.logs.clone(),
            log_tail_timeout: self.config.log_tail_timeout,
        });
        tasks.spawn({
            let (js, publisher, metrics, stop) = (
                self.rt.js.clone(),
                self.rt.publisher.clone(),
                self.rt.consumer_metrics.clone(),
                stop.clone(),
            );
            let settings = self.reports.clone();
            async move {
                (
                    "reports consumer",
                    run_consumer(js, publisher, settings, reports, metrics, stop).await,
                )
            }
        });

        if let (Some(client), Some(queue_url)) = (self.sqs, self.config.queue_url.clone()) {
            let source = SqsSource::new(
                client,
                queue_url,
                self.rt.publisher.clone(),
                &self.config,
                self.metrics.clone(),
            );
            let stop = stop.clone();
            tasks.spawn(async move { ("SQS source", source.run(stop).await) });
        }
        if let Some(codebuild) = self.codebuild {
            let reconciler = Reconciler::new(
                codebuild,
                store,
                self.rt.publisher.clone(),
                &self.config,
                self.metrics.clone(),
            );
            let stop = stop.clone();
            tasks.spawn(async move { ("reconciler", reconciler.run(stop).await) });
        }

        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let failure = match done {
                Ok((_, Ok(()))) => None,
                Ok((name, Err(err))) => Some(err.context(format!("build-watcher {name} failed"))),
                Err(err) => Some(anyhow::anyhow!("build-watcher task panicked: {err}")),
            };
            if let Some(err) = failure {
                tracing::error!(error = format!("{err:#}"), "stopping the build-watcher");
                stop.cancel();
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
