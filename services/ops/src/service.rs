//! The ops service: the gRPC API plus the tasks that keep its projection (builds, history
//! index) current and
//! count the parked messages waiting for an operator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use prx_ci_proto::v1::ops_server::OpsServer;
use prx_ci_shared::{CancellationToken, Runtime};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::ancestry::CommitGraph;
use crate::api::{OpsApi, ParameterOwnership};
use crate::auth::RequireToken;
use crate::client::MAX_MESSAGE_SIZE;
use crate::config::OpsConfig;
use crate::metrics::Metrics;
use crate::projection_runner::LiveProjection;
use crate::web::pages::notice::NoticeSettings;
use crate::web::{self, Web};
use crate::{parked, projection_runner};

/// How long a stopping service waits for the dashboard's connections to close.
const DASHBOARD_DRAIN: Duration = Duration::from_secs(5);

/// How often the parked messages waiting for an operator are counted.
pub const PARKED_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// The ops service (see the crate docs).
#[derive(Debug)]
pub struct OpsService {
    rt: Runtime,
    api: OpsApi,
    tokens: Vec<(String, SecretString)>,
    projection: LiveProjection,
    metrics: Metrics,
    dashboard: Option<TcpListener>,
    notice: NoticeSettings,
    config: Arc<OpsConfig>,
}

impl OpsService {
    /// Validates the config and registers the metrics in `registry`.
    pub fn new(rt: Runtime, config: OpsConfig, registry: &mut Registry) -> anyhow::Result<Self> {
        use prx_ci_shared::config::Validate as _;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [ops]: {reason}"))?;
        let tokens = config.identities();
        let projection = LiveProjection::new(config.keep_finished_builds);
        let metrics = Metrics::register(registry);
        let config = Arc::new(config);
        let api = OpsApi::new(
            rt.clone(),
            config.clone(),
            projection.clone(),
            metrics.clone(),
        );
        Ok(Self {
            rt,
            api,
            tokens,
            projection,
            metrics,
            dashboard: None,
            notice: NoticeSettings::default(),
            config,
        })
    }

    /// Where a rebuild checks that a commit given by hand is in its branch's history (default:
    /// local `file://` repositories only, see [`crate::ancestry`]).
    pub fn with_commit_graph(mut self, graph: Arc<dyn CommitGraph>) -> Self {
        self.api = self.api.with_commit_graph(graph);
        self
    }

    /// Uses the publisher's parameter ownership settings (`[publisher]`: `owners` and
    /// `parameter_prefix`) for `ParameterOwners` and `TransferParameter`. Without it, no name
    /// is config-owned as far as the ops API knows (the publisher still lets config win).
    pub fn with_ownership(mut self, ownership: ParameterOwnership) -> Self {
        self.api = self.api.with_ownership(ownership);
        self
    }

    /// Renders the Slack message and commit status on the dashboard's build pages with the
    /// notifier's settings (`[notifier.links]`, `[notifier.statuses]`) instead of its defaults.
    pub fn with_notice_settings(mut self, settings: NoticeSettings) -> Self {
        self.notice = settings;
        self
    }

    /// Also serves the web dashboard on `listener` (`[ops] dashboard_listen`; see [`crate::web`]).
    pub fn with_dashboard(mut self, listener: TcpListener) -> Self {
        self.dashboard = Some(listener);
        self
    }

    /// Serves the gRPC API on `listener` (and the dashboard, when given) and follows the
    /// events until `shutdown`.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr().ok();
        let projection = tokio::spawn(projection_runner::run(
            self.rt.js.clone(),
            self.projection.clone(),
            shutdown.clone(),
        ));
        let parked = tokio::spawn(count_parked(
            self.rt.js.clone(),
            self.metrics.parked_waiting.clone(),
            shutdown.clone(),
        ));
        let dashboard = self.dashboard.map(|listener| {
            let web = Web::new(
                &self.config,
                self.tokens.clone(),
                self.api.clone(),
                self.rt.js.clone(),
                self.notice,
                shutdown.clone(),
            );
            let live = tokio::spawn(web.follow());
            let served = tokio::spawn(web::serve(listener, web, shutdown.clone()));
            (live, served)
        });
        let service = OpsServer::new(self.api)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let service = tonic::service::interceptor::InterceptedService::new(
            service,
            RequireToken::named(self.tokens),
        );
        tracing::info!(?address, "ops API listening");
        let served = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY every answer waits out the client's delayed ACK: 40 ms
                // per call (docs/benchmarks/ops.md).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            )
            .await
            .context("the ops API server failed");
        shutdown.cancel();
        let _ = projection.await;
        let _ = parked.await;
        if let Some((live, dashboard)) = dashboard {
            let _ = live.await;
            // Open streams end at shutdown; a connection that still does not close is not
            // waited for beyond this.
            match tokio::time::timeout(DASHBOARD_DRAIN, dashboard).await {
                Ok(Ok(Err(err))) => return Err(err),
                Ok(Err(err)) => return Err(anyhow::anyhow!("the dashboard panicked: {err}")),
                Ok(Ok(Ok(()))) => {}
                Err(_) => tracing::warn!(
                    "dashboard: connections still open {DASHBOARD_DRAIN:?} after shutdown; not waiting for them"
                ),
            }
        }
        served
    }
}

/// Sets `gauge` to the parked messages waiting for an operator, at once and then every
/// [`PARKED_POLL_INTERVAL`] until `shutdown`; a failed count leaves the last value.
async fn count_parked(
    js: async_nats::jetstream::Context,
    gauge: prometheus_client::metrics::gauge::Gauge,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(PARKED_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match parked::waiting(&js).await {
            Ok(waiting) => {
                gauge.set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
            Err(err) => tracing::debug!(error = %err, "cannot count parked messages"),
        }
    }
}
