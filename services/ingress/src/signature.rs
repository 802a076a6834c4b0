//! Webhook signature verification: HMAC-SHA256 (`X-Hub-Signature-256`) over the raw body,
//! against every configured secret, compared in constant time. The only way to get a
//! [`VerifiedDelivery`] is [`Verifier::verify`], so code past the edge cannot handle a body
//! whose signature was not checked.

use axum::http::HeaderMap;
use bytes::Bytes;
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use sha1::Sha1;
use sha2::Sha256;

/// `sha256=<64 hex>`: HMAC-SHA256 of the body with the webhook secret.
pub const SIGNATURE_256_HEADER: &str = "x-hub-signature-256";
/// `sha1=<40 hex>`: the legacy HMAC-SHA1 signature (only with `legacy_sha1 = true`).
pub const SIGNATURE_SHA1_HEADER: &str = "x-hub-signature";

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

/// Why a request is not authenticated. The messages never contain the signature or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("the signature header is not of the form sha256=<hex>")]
    MalformedSignature,
    #[error("the signature does not match any configured secret")]
    Mismatch,
}

/// The signature a request claims, decoded from its header (checked before the body is read,
/// so a request without one costs nothing).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClaimedSignature {
    Sha256([u8; 32]),
    Sha1([u8; 20]),
}

impl std::fmt::Debug for ClaimedSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sha256(_) => f.write_str("Sha256(<redacted>)"),
            Self::Sha1(_) => f.write_str("Sha1(<redacted>)"),
        }
    }
}

impl ClaimedSignature {
    /// The algorithm name, for logs and metrics.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "sha256",
            Self::Sha1(_) => "sha1",
        }
    }
}

/// A body whose signature matched one of the configured secrets. Only [`Verifier::verify`]
/// constructs it.
#[derive(Debug, Clone)]
pub struct VerifiedDelivery {
    body: Bytes,
    algorithm: &'static str,
}

impl VerifiedDelivery {
    /// The raw body, exactly as signed.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// `sha256`, or `sha1` for a legacy signature.
    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// One secret, with the HMAC key schedule done once (each request clones the keyed state).
#[derive(Clone)]
struct Key {
    sha256: HmacSha256,
    sha1: Option<HmacSha1>,
}

/// Checks signatures against every configured secret.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    legacy_sha1: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("legacy_sha1", &self.legacy_sha1)
            .finish()
    }
}

/// A verifier needs at least one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no webhook secret configured")]
pub struct NoSecrets;

impl Verifier {
    pub fn new(secrets: &[SecretString], legacy_sha1: bool) -> Result<Self, NoSecrets> {
        if secrets.is_empty() {
            return Err(NoSecrets);
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let secret = secret.expose_secret().as_bytes();
                Key {
                    // HMAC accepts keys of any length: these constructors cannot fail.
                    sha256: HmacSha256::new_from_slice(secret).expect("HMAC takes any key length"),
                    sha1: legacy_sha1.then(|| {
                        HmacSha1::new_from_slice(secret).expect("HMAC takes any key length")
                    }),
                }
            })
            .collect();
        Ok(Self { keys, legacy_sha1 })
    }

    /// The signature the request claims. `X-Hub-Signature-256` wins when present; the SHA-1
    /// header is looked at only when legacy SHA-1 is enabled and the SHA-256 one is absent.
    pub fn claimed_signature(&self, headers: &HeaderMap) -> Result<ClaimedSignature, VerifyError> {
        if let Some(value) = headers.get(SIGNATURE_256_HEADER) {
            let hex = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().strip_prefix("sha256="))
                .ok_or(VerifyError::MalformedSignature)?;
            let mut tag = [0u8; 32];
            hex::decode_to_slice(hex, &mut tag).map_err(|_| VerifyError::MalformedSignature)?;
            return Ok(ClaimedSignature::Sha256(tag));
        }
        if self.legacy_sha1
            && let Some(value) = headers.get(SIGNATURE_SHA1_HEADER)
        {
            let hex = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().strip_prefix("sha1="))
                .ok_or(VerifyError::MalformedSignature)?;
            let mut tag = [0u8; 20];
            hex::decode_to_slice(hex, &mut tag).map_err(|_| VerifyError::MalformedSignature)?;
            return Ok(ClaimedSignature::Sha1(tag));
        }
        Err(VerifyError::MissingSignature)
    }

    /// Checks `signature` over the raw `body` against every secret (constant-time tag
    /// comparison via `Mac::verify_slice`).
    pub fn verify(
        &self,
        signature: &ClaimedSignature,
        body: Bytes,
    ) -> Result<VerifiedDelivery, VerifyError> {
        let matched = match signature {
            ClaimedSignature::Sha256(tag) => self.keys.iter().any(|key| {
                let mut mac = key.sha256.clone();
                mac.update(&body);
                mac.verify_slice(tag).is_ok()
            }),
            ClaimedSignature::Sha1(tag) => self.keys.iter().any(|key| {
                key.sha1.as_ref().is_some_and(|mac| {
                    let mut mac = mac.clone();
                    mac.update(&body);
                    mac.verify_slice(tag).is_ok()
                })
            }),
        };
        if matched {
            Ok(VerifiedDelivery {
                body,
                algorithm: signature.algorithm(),
            })
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// The `X-Hub-Signature-256` value GitHub sends for `body` signed with `secret`
/// (`sha256=<hex>`). For senders and tests.
pub fn signature_256(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The legacy `X-Hub-Signature` value (`sha1=<hex>`). For senders and tests.
pub fn signature_sha1(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// GitHub's published example ("Validating webhook deliveries").
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_PAYLOAD: &str = "Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn verifier(secrets: &[&str], legacy_sha1: bool) -> Verifier {
        let secrets: Vec<SecretString> = secrets
            .iter()
            .map(|s| SecretString::from((*s).to_owned()))
            .collect();
        Verifier::new(&secrets, legacy_sha1).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn check(v: &Verifier, pairs: &[(&'static str, &str)], body: &str) -> Result<(), VerifyError> {
        let claimed = v.claimed_signature(&headers(pairs))?;
        v.verify(&claimed, Bytes::copy_from_slice(body.as_bytes()))
            .map(|_| ())
    }

    #[test]
    fn githubs_published_example_verifies() {
        assert_eq!(
            signature_256(GITHUB_SECRET, GITHUB_PAYLOAD.as_bytes()),
            GITHUB_SIGNATURE
        );
        let v = verifier(&[GITHUB_SECRET], false);
        let claimed = v
            .claimed_signature(&headers(&[(SIGNATURE_256_HEADER, GITHUB_SIGNATURE)]))
            .unwrap();
        let verified = v
            .verify(&claimed, Bytes::from_static(GITHUB_PAYLOAD.as_bytes()))
            .unwrap();
        assert_eq!(verified.body().as_ref(), GITHUB_PAYLOAD.as_bytes());
        assert_eq!(verified.algorithm(), "sha256");
        // Upper-case hex is the same signature.
        let upper = format!("sha256={}", GITHUB_SIGNATURE[7..].to_uppercase());
        assert_eq!(
            check(&v, &[(SIGNATURE_256_HEADER, &upper)], GITHUB_PAYLOAD),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_or_secret_does_not_verify() {
        let v = verifier(&[GITHUB_SECRET], false);
        assert_eq!(
            check(
                &v,
                &[(SIGNATURE_256_HEADER, GITHUB_SIGNATURE)],
                "Hello, World?"
            ),
            Err(VerifyError::Mismatch)
        );
        let other = verifier(&["another secret"], false);
        assert_eq!(
            check(
                &other,
                &[(SIGNATURE_256_HEADER, GITHUB_SIGNATURE)],
                GITHUB_PAYLOAD
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn every_configured_secret_is_accepted() {
        let v = verifier(&["old secret", "new secret"], false);
        for secret in ["old secret", "new secret"] {
            let sig = signature_256(secret, b"{}");
            assert_eq!(check(&v, &[(SIGNATURE_256_HEADER, &sig)], "{}"), Ok(()));
        }
        let sig = signature_256("retired secret", b"{}");
        assert_eq!(
            check(&v, &[(SIGNATURE_256_HEADER, &sig)], "{}"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_rejected() {
        let v = verifier(&["s"], false);
        assert_eq!(check(&v, &[], "{}"), Err(VerifyError::MissingSignature));
        let good = signature_256("s", b"{}");
        for bad in [
            good.trim_start_matches("sha256=").to_owned(), // no prefix
            good.replace("sha256=", "sha1="),
            format!("{}0", good), // too long
            good[..good.len() - 2].to_owned(),
            "sha256=zz".to_owned(),
            "sha256=".to_owned(),
        ] {
            assert_eq!(
                check(&v, &[(SIGNATURE_256_HEADER, &bad)], "{}"),
                Err(VerifyError::MalformedSignature),
                "{bad}"
            );
        }
    }

    #[test]
    fn legacy_sha1_only_when_enabled() {
        let sha1 = signature_sha1("s", b"{}");
        assert_eq!(
            check(
                &verifier(&["s"], false),
                &[(SIGNATURE_SHA1_HEADER, &sha1)],
                "{}"
            ),
            Err(VerifyError::MissingSignature)
        );
        let legacy = verifier(&["s"], true);
        assert_eq!(
            check(&legacy, &[(SIGNATURE_SHA1_HEADER, &sha1)], "{}"),
            Ok(())
        );
        assert_eq!(
            check(&legacy, &[(SIGNATURE_SHA1_HEADER, &sha1)], "{ }"),
            Err(VerifyError::Mismatch)
        );
        // When both are sent, SHA-256 decides: a wrong SHA-256 is not rescued by SHA-1.
        let wrong256 = signature_256("other", b"{}");
        assert_eq!(
            check(
                &legacy,
                &[
                    (SIGNATURE_256_HEADER, &wrong256),
                    (SIGNATURE_SHA1_HEADER, &sha1)
                ],
                "{}"
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn nothing_secret_is_printed() {
        let v = verifier(&["hunter2"], true);
        let claimed = v
            .claimed_signature(&headers(&[(SIGNATURE_256_HEADER, GITHUB_SIGNATURE)]))
            .unwrap();
        let printed = format!("{v:?} {claimed:?} {}", VerifyError::Mismatch);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("757107ea"), "{printed}");
        assert!(Verifier::new(&[], false).is_err());
    }
}
