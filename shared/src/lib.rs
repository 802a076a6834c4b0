//! What every PRX CI service uses: configuration, the NATS connection and provisioning, the
//! typed event publisher and consumer loop, subject-token encoding, telemetry, the ops HTTP
//! endpoints, one retry helper, and (feature `testing`) the test harness.

pub mod backend;
pub mod codebuild_event;
pub mod config;
pub mod consume;
pub mod domain;
pub mod events;
pub mod github;
pub mod metrics;
pub mod nats;
pub mod ops_http;
pub mod process;
pub mod publish;
pub mod push_position;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod subject;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use consume::{Delivery, Handler, HandlerError, run_consumer};
pub use events::Chain;
pub use publish::{EventPublisher, Stored};
pub use runtime::Runtime;
pub use tokio_util::sync::CancellationToken;

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
