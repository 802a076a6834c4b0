//! Wiring only: the ingress's handler, load limits, router and listeners.
//!
//! The request handling (order of checks, answers, the store step) is in [`crate::handler`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::subject::WEBHOOKS_STREAM;
use prx_ci_shared::config::Validate as _;
use prx_ci_shared::service::ops_http::{self, ReadinessCheck};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower_http::timeout::RequestBodyDeadlineLayer;
use tower_http::trace::TraceLayer;

use crate::budget::BodyBudget;
use crate::config::IngressConfig;
use crate::handler::{WebhookHandler, handle_webhook, request_span, storable_body_limit};
use crate::metrics::IngressMetrics;
use crate::recovery::Reconciler;
use crate::server;
use crate::signature::Verifier;

/// Where GitHub posts deliveries.
pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// The ingress service. See the crate docs for how to run it.
#[derive(Debug)]
pub struct Ingress {
    state: Arc<WebhookHandler>,
    limits: Limits,
    metrics_listen: Option<std::net::SocketAddr>,
    readiness_client: async_nats::Client,
    readiness_js: async_nats::jetstream::Context,
    reconciler: Option<Reconciler>,
}

/// The load limits applied around the webhook handler and on connections.
#[derive(Debug, Clone)]
struct Limits {
    concurrency: Arc<tokio::sync::Semaphore>,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
}

impl Ingress {
    /// Validates `config` and registers the metrics in `registry`.
    pub fn new(
        rt: Runtime,
        config: IngressConfig,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid configuration [ingress]: {reason}"))?;
        let verifier = Verifier::new(&config.secrets, config.legacy_sha1)
            .context("cannot build the signature verifier")?;
        let metrics = IngressMetrics::register(registry);
        let max_body_bytes =
            storable_body_limit(config.max_body_bytes, rt.client.server_info().max_payload);
        let budget = BodyBudget::new(
            config.body_budget_bytes,
            config.small_body_reserve_bytes,
            config.small_body_bytes,
            metrics.body_bytes_in_flight(),
        );
        let retry_after = HeaderValue::from(config.body_read_timeout.as_secs_f64().ceil() as u64);
        let state = WebhookHandler {
            verifier,
            allowed_events: config.allowed_events.iter().cloned().collect(),
            max_body_bytes,
            budget,
            body_read_timeout: config.body_read_timeout,
            retry_after,
            store_timeout: config.store_timeout,
            publisher: rt.publisher.clone().with_ack_timeout(config.store_timeout),
            client: rt.client.clone(),
            metrics,
        };
        let limits = Limits {
            concurrency: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
            header_read_timeout: config.header_read_timeout,
            body_read_timeout: config.body_read_timeout,
        };
        Ok(Self {
            state: Arc::new(state),
            limits,
            metrics_listen: config.metrics_listen,
            readiness_client: rt.client,
            readiness_js: rt.js,
            reconciler: None,
        })
    }

    /// Runs `reconciler` beside the listener (a round at start-up, then every `interval`),
    /// stopped with it.
    #[must_use]
    pub fn with_reconciler(mut self, reconciler: Reconciler) -> Self {
        self.reconciler = Some(reconciler);
        self
    }

    /// `POST /webhooks/github` alone, with its load limits and request span.
    ///
    /// Layers, outside in: the span; the concurrency limit (load-shedding: at the limit the
    /// answer is 503 at once, nothing waits for a slot); the body deadline (started once the
    /// request is admitted, i.e. after its headers). The body budget and size limit are
    /// applied by the handler, which knows the signature header came first.
    pub fn webhook_router(&self) -> Router {
        let shed = {
            let state = Arc::clone(&self.state);
            move |_overloaded: tower::BoxError| {
                let state = Arc::clone(&state);
                async move { state.over_concurrency() }
            }
        };
        Router::new()
            .route(WEBHOOK_PATH, post(handle_webhook))
            .layer(RequestBodyDeadlineLayer::new(self.limits.body_read_timeout))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(shed))
                    .layer(LoadShedLayer::new())
                    .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
                        &self.limits.concurrency,
                    ))),
            )
            .layer(TraceLayer::new_for_http().make_span_with(request_span))
            .with_state(Arc::clone(&self.state))
    }

    /// Ready when NATS is connected and the PRX_WEBHOOKS stream exists.
    pub fn readiness(&self) -> ReadinessCheck {
        ops_http::nats_readiness(
            self.readiness_client.clone(),
            self.readiness_js.clone(),
            vec![WEBHOOKS_STREAM],
        )
    }

    /// Everything the webhook listener serves: the webhook route plus `/healthz`, `/readyz`
    /// and `/metrics` (of `registry`, the process-wide registry the ingress registered in).
    pub fn router(&self, registry: Arc<Registry>) -> Router {
        self.webhook_router()
            .merge(ops_http::ops_router(registry, self.readiness()))
    }

    /// The webhook route plus `/healthz` and `/readyz`, without `/metrics`: what the webhook
    /// listener serves when `/metrics` has its own listener.
    pub fn router_without_metrics(&self) -> Router {
        let readiness = self.readiness();
        let health = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let readiness = Arc::clone(&readiness);
                    async move {
                        match readiness().await {
                            Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                            Err(reason) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {reason}\n"),
                            ),
                        }
                    }
                }),
            );
        self.webhook_router().merge(health)
    }

    /// Serves on `listener` until `shutdown` is cancelled. With `[ingress] metrics_listen`
    /// set, binds it and serves `/metrics` (with `/healthz`, `/readyz`) there instead of on
    /// `listener`; see [`Ingress::serve`].
    pub async fn run(
        self,
        listener: TcpListener,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let metrics_listener = match self.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (metrics_listen)"))?,
            ),
            None => None,
        };
        self.serve(listener, metrics_listener, registry, shutdown)
            .await
    }

    /// Serves the webhook route (and the health checks) on `listener`, and `/metrics` on
    /// `metrics_listener` when given, else on `listener` too, until `shutdown` is cancelled;
    /// then stops accepting and lets in-flight requests finish (each is bounded by the body
    /// timeout and `store_timeout`) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr().ok();
        // Its own task: the webhook path never waits for a round.
        let reconciler = self
            .reconciler
            .clone()
            .map(|reconciler| tokio::spawn(reconciler.run(shutdown.clone())));
        let header_read_timeout = self.limits.header_read_timeout;
        let header_timeouts = self.state.metrics.header_timeouts();
        let metrics_server = match metrics_listener {
            Some(metrics_listener) => {
                let metrics_address = metrics_listener.local_addr().ok();
                tracing::info!(address = ?metrics_address, "ingress metrics listening");
                let router = ops_http::ops_router(Arc::clone(&registry), self.readiness());
                Some(tokio::spawn(server::serve(
                    metrics_listener,
                    router,
                    header_read_timeout,
                    header_timeouts.clone(),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let router = if metrics_server.is_some() {
            self.router_without_metrics()
        } else {
            self.router(registry)
        };
        tracing::info!(?address, path = WEBHOOK_PATH, "ingress listening");
        server::serve(
            listener,
            router,
            header_read_timeout,
            header_timeouts,
            shutdown,
        )
        .await;
        if let Some(metrics_server) = metrics_server {
            metrics_server
                .await
                .context("the metrics listener's task failed")?;
        }
        if let Some(reconciler) = reconciler {
            reconciler.await.context("the reconciler's task failed")?;
        }
        tracing::info!("ingress stopped");
        Ok(())
    }
}
