//! The ops client behind TLS, as a deployed system serves it (the load balancer terminates TLS
//! and speaks to the ops API inside the network): a TLS terminator with a certificate of its
//! own CA in front of a real ops API, and the client that `prx-ci` uses.

mod common;

use std::sync::Arc;

use common::{Harness, TOKEN};
use prx_ci_ops::client;
use prx_ci_proto::v1;
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Terminates TLS (HTTP/2 by ALPN, as the load balancer) on a local port and forwards each
/// connection to `upstream`. Returns the `https://` URL and the certificate (PEM) clients trust.
async fn tls_terminator(upstream: String) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let chain = vec![CertificateDer::from(certified.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut inner = TcpStream::connect(&upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    (url, pem)
}

async fn builds(client: &mut client::Client) -> Result<v1::BuildsResponse, tonic::Status> {
    client
        .builds(v1::BuildsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_client_reaches_the_api_through_tls_with_the_systems_ca() {
    let h = Harness::start().await;
    let (url, ca) = tls_terminator(h.url.clone()).await;
    let token = SecretString::from(TOKEN);

    let mut trusted = client::connect(&url, Some(&token), Some(ca.as_bytes()))
        .await
        .unwrap();
    let answer = builds(&mut trusted).await.unwrap();
    assert!(answer.in_flight.is_empty());

    // A certificate nobody vouched for is refused (the system's trust store does not know
    // this test's CA).
    let untrusted = match client::connect(&url, Some(&token), None).await {
        Ok(mut c) => builds(&mut c).await.map(|_| ()).map_err(|s| s.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    let err = untrusted.expect_err("an unknown CA must be refused");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    // A CA for a plain-text URL is a mistake, said so.
    let plain = client::connect(&h.url, Some(&token), Some(ca.as_bytes())).await;
    assert!(
        plain.err().unwrap().to_string().contains("not https://"),
        "a CA with http:// is refused"
    );
}
