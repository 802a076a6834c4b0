//! A client of the ops API (what the `prx-ci` CLI uses).

use std::num::NonZeroUsize;

use secrecy::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::BearerToken;
use prx_ci_proto::v1::{self, ops_client::OpsClient};

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

/// The events of a history read page by page ([`history_pages`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pages {
    /// Oldest first, as one call would list them.
    pub events: Vec<v1::StoredEvent>,
    /// Events of the selection older than `events` that were not read.
    pub older: u64,
}

/// The newest `up_to` events of `request`'s history (every event with `None`), oldest first:
/// one `History` call after another, each following the previous answer's cursor, so neither
/// `[ops] max_listed_events` nor the server's default page bounds what a caller gets. Events
/// stored after the first call are not in it (ask again for them). `request.limit` and
/// `request.before` are set here.
pub async fn history_pages(
    client: &mut Client,
    mut request: v1::HistoryRequest,
    up_to: Option<NonZeroUsize>,
) -> Result<Pages, tonic::Status> {
    request.before = None;
    let mut pages = Vec::new();
    let mut read = 0;
    let mut older;
    loop {
        // As many as are still wanted; the server caps the page at its max_listed_events.
        request.limit = up_to.map_or(u32::MAX, |n| {
            u32::try_from(n.get().saturating_sub(read)).unwrap_or(u32::MAX)
        });
        let response = client.history(request.clone()).await?.into_inner();
        read += response.events.len();
        older = response.older;
        pages.push(response.events);
        let wanted = up_to.is_none_or(|n| read < n.get());
        match response.next {
            Some(next) if wanted => {
                if request.before.as_ref() == Some(&next) {
                    return Err(tonic::Status::internal(
                        "the server answered a history page with the cursor it was asked for",
                    ));
                }
                request.before = Some(next);
            }
            _ => break,
        }
    }
    let mut events: Vec<v1::StoredEvent> = pages.into_iter().rev().flatten().collect();
    // A server without pages answers everything in one call.
    if let Some(extra) = up_to.and_then(|n| events.len().checked_sub(n.get())) {
        events.drain(..extra);
        older += extra as u64;
    }
    Ok(Pages { events, older })
}
