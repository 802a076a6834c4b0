//! Bearer-token guard of the gRPC API (server side) and its client-side counterpart.

use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Who an authenticated call comes from, as audited actions record it. Only the guard sets it
/// (a request extension), from the credential it verified: never from text the caller sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(String);

impl Identity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of a caller that presented the configured ops token. One shared token today,
/// so one identity; per-operator credentials would map to their own identities here.
pub fn token_identity() -> Identity {
    Identity("ops-token".to_owned())
}

/// The identity [`RequireToken`] authenticated for `request`; UNAUTHENTICATED when the call
/// did not pass the guard (a server wired without it).
pub fn identity_of<T>(request: &Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated identity"))
}

/// Rejects calls without `authorization: Bearer <token>` matching the configured token
/// (compared in constant time) and marks the others with the caller's [`Identity`]. The
/// token is never logged.
#[derive(Clone)]
pub struct RequireToken {
    token: SecretString,
}

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequireToken(..)")
    }
}

impl RequireToken {
    pub fn new(token: SecretString) -> Self {
        Self { token }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Whatever a caller managed to put there, only the verified identity may remain.
        request.extensions_mut().remove::<Identity>();
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let expected = self.token.expose_secret().as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            request.extensions_mut().insert(token_identity());
            Ok(request)
        } else {
            Err(Status::unauthenticated("wrong bearer token"))
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call a client makes.
#[derive(Clone)]
pub struct BearerToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// A token that is not valid header text is sent as no token (and refused by the server).
    pub fn new(token: Option<&SecretString>) -> Self {
        let header = token.and_then(|t| {
            let mut value: MetadataValue<_> =
                format!("Bearer {}", t.expose_secret()).parse().ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self { header }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: Option<&str>) -> Result<Identity, Status> {
        let secret = SecretString::from("0123456789abcdef");
        let mut guard = RequireToken::new(secret);
        let mut client = BearerToken::new(token.map(SecretString::from).as_ref());
        let request = client.call(Request::new(()))?;
        identity_of(&guard.call(request)?)
    }

    #[test]
    fn only_the_configured_token_passes() {
        assert_eq!(call(Some("0123456789abcdef")).unwrap(), token_identity());
        assert_eq!(token_identity().as_str(), "ops-token");
        assert_eq!(
            call(Some("0123456789abcdeX")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(call(None).unwrap_err().code(), tonic::Code::Unauthenticated);
        let guard = RequireToken::new("a-very-secret-token".into());
        assert!(!format!("{guard:?}").contains("secret"));
        // A request that never passed the guard has no identity.
        assert_eq!(
            identity_of(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
