//! Bearer-token guard of the gRPC API (server side) and its client-side counterpart.

use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Rejects calls without `authorization: Bearer <token>` matching the configured token
/// (compared in constant time). The token is never logged.
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
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let expected = self.token.expose_secret().as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
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

    fn call(token: Option<&str>) -> Result<(), Status> {
        let secret = SecretString::from("0123456789abcdef");
        let mut guard = RequireToken::new(secret);
        let mut client = BearerToken::new(token.map(SecretString::from).as_ref());
        let request = client.call(Request::new(()))?;
        guard.call(request).map(|_| ())
    }

    #[test]
    fn only_the_configured_token_passes() {
        assert!(call(Some("0123456789abcdef")).is_ok());
        assert_eq!(
            call(Some("0123456789abcdeX")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(call(None).unwrap_err().code(), tonic::Code::Unauthenticated);
        let guard = RequireToken::new("a-very-secret-token".into());
        assert!(!format!("{guard:?}").contains("secret"));
    }
}
