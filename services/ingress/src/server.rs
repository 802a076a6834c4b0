//! Serving a router over HTTP/1.1 with a header read timeout and graceful shutdown.
//!
//! `axum::serve` gives hyper no timer, so hyper's header read timeout never fires there: a
//! client could hold a connection forever by trickling header bytes, or by never sending
//! any. This is the same accept loop with hyper's `http1::Builder` configured.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most a connection buffers ahead of the handler (hyper's read buffer; its default is about
/// 400 KiB). Every connection reading a body can fill it, outside the body budget, so it is
/// kept small; it also caps a request's headers (GitHub's are about 1 KiB).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// for the open connections to finish their requests (idle ones are closed at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    header_timeouts: Counter,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(READ_BUFFER_BYTES);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let header_timeouts = header_timeouts.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                if err.is_timeout() {
                    header_timeouts.inc();
                    tracing::debug!("connection closed: headers not received in time");
                } else {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors about one connection (it was reset before we accepted it): not worth a pause.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
