//! The health, readiness and metrics endpoints every service serves (`/healthz`, `/readyz`,
//! `/metrics`), and the HTTP server helper that stops gracefully.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A readiness probe: `Ok` when the service can do its work, else the reason.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    readiness: ReadinessCheck,
}

/// Routes `/healthz` (the process is up), `/readyz` (the readiness check passes) and
/// `/metrics` (Prometheus/OpenMetrics text of `registry`).
pub fn ops_router(registry: Arc<Registry>, readiness: ReadinessCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            readiness,
        })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match (state.readiness)().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Ready when the NATS connection is up and every named stream exists.
pub fn nats_readiness(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    streams: Vec<&'static str>,
) -> ReadinessCheck {
    Arc::new(move || {
        let client = client.clone();
        let js = js.clone();
        let streams = streams.clone();
        Box::pin(async move {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err("NATS is not connected".to_owned());
            }
            for stream in streams {
                js.get_stream(stream)
                    .await
                    .map_err(|e| format!("stream {stream}: {e}"))?;
            }
            Ok(())
        })
    })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight
/// requests and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
