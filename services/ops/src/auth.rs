//! Bearer-token guard of the gRPC API (server side) and its client-side counterpart.
//!
//! Every token has a name, the operator identity a call authenticated as ([`Operator`]). The
//! API records that identity in audit events (a rebuild's `requested_by`, a retried message's
//! `retried_by`), never a name the caller writes into the request.

use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Name of the single `[ops] token` unless `token_name` says otherwise.
pub const DEFAULT_TOKEN_NAME: &str = "ops-token";

/// The operator a call authenticated as: the name of the token it presented. Put into the
/// request's extensions by [`RequireToken`]; only the guard creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(String);

impl Operator {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The identity of a token the caller checked (the dashboard's sessions).
    pub(crate) fn authenticated(name: String) -> Self {
        Self(name)
    }

    /// The identity of an authenticated request. A request without one never passed the guard
    /// (a wiring error): refused, never recorded under a default name.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Operator>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authenticated operator"))
    }
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rejects calls without `authorization: Bearer <token>` matching one of the configured tokens
/// (each compared in constant time, all of them every time), and marks the accepted ones with
/// the token's [`Operator`] name. Tokens are never logged.
#[derive(Clone)]
pub struct RequireToken {
    tokens: Arc<Vec<(String, SecretString)>>,
}

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequireToken(..)")
    }
}

impl RequireToken {
    /// One token, named [`DEFAULT_TOKEN_NAME`].
    pub fn new(token: SecretString) -> Self {
        Self::named(vec![(DEFAULT_TOKEN_NAME.to_owned(), token)])
    }

    /// Named tokens (`OpsConfig::identities`; names and tokens distinct, validated there).
    pub fn named(tokens: Vec<(String, SecretString)>) -> Self {
        Self {
            tokens: Arc::new(tokens),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Whatever a caller managed to put there, only the verified identity may remain.
        request.extensions_mut().remove::<Operator>();
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        // Every token is compared, so the time taken does not tell which one nearly matched.
        let mut matched = None;
        for (name, token) in self.tokens.iter() {
            let equal = bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes()));
            if equal && matched.is_none() {
                matched = Some(name.clone());
            }
        }
        let name = matched.ok_or_else(|| Status::unauthenticated("wrong bearer token"))?;
        request.extensions_mut().insert(Operator(name));
        Ok(request)
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

    fn operator(guard: &mut RequireToken, token: &str) -> Result<String, Status> {
        let mut client = BearerToken::new(Some(&SecretString::from(token)));
        let request = guard.call(client.call(Request::new(()))?)?;
        Operator::of(&request).map(|o| o.name().to_owned())
    }

    #[test]
    fn a_call_carries_the_name_of_the_token_it_presented() {
        let mut guard = RequireToken::named(vec![
            ("alice".into(), "alice-token-0123456789".into()),
            ("deploy-bot".into(), "bot-token-0123456789".into()),
        ]);
        assert_eq!(
            operator(&mut guard, "alice-token-0123456789").unwrap(),
            "alice"
        );
        assert_eq!(
            operator(&mut guard, "bot-token-0123456789").unwrap(),
            "deploy-bot"
        );
        assert_eq!(
            operator(&mut guard, "carol-token-0123456789")
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let mut single = RequireToken::new("0123456789abcdef".into());
        assert_eq!(
            operator(&mut single, "0123456789abcdef").unwrap(),
            DEFAULT_TOKEN_NAME
        );
        // A request that never passed the guard has no operator.
        assert!(Operator::of(&Request::new(())).is_err());
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
