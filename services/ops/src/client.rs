//! A client of the ops API (what the `prx-ci` CLI uses).

use secrecy::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::BearerToken;
use prx_ci_proto::v1::ops_client::OpsClient;

/// Largest message either side accepts (a history can hold many webhook payloads).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A connected ops client that sends the bearer token with every call.
pub type Client = OpsClient<InterceptedService<Channel, BearerToken>>;

/// Connects to the ops API at `url`: `http://127.0.0.1:50051` (a local `prx-ci up`), or
/// `https://...` (a deployed system behind its load balancer), verified against the system's
/// trust store, or only against `ca_pem` (PEM certificates) when given.
pub async fn connect(
    url: &str,
    token: Option<&SecretString>,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).with_context(|| format!("invalid ops URL {url}"))?;
    if url.starts_with("https://") {
        let tls = match ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("cannot set up TLS for {url}"))?;
    } else if ca_pem.is_some() {
        anyhow::bail!("a CA certificate was given for {url}, which is not https://");
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the ops API at {url}"))?;
    Ok(
        OpsClient::with_interceptor(channel, BearerToken::new(token))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
}
