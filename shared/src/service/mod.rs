//! What every service binary shares around its handlers: start-up and shutdown
//! ([`startup`]), the handles a running service is given ([`runtime`]), and the
//! `/healthz`, `/readyz`, `/metrics` endpoints ([`ops_http`]).

pub mod ops_http;
pub mod runtime;
pub mod startup;

/// Waits for Ctrl-C or SIGTERM (what a service's `main` passes as its shutdown signal).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
