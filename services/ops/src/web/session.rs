//! Who may see the dashboard: the ops tokens, entered once on `/login` and kept as a session
//! cookie (HttpOnly, SameSite=Strict), or sent as `Authorization: Bearer` by scripts.
//!
//! The cookie holds the token's name and an HMAC of a fixed text keyed by the token, never the
//! token itself: a token change (rotation) ends its sessions, and a cookie read from a disk
//! does not give the gRPC API. Every POST also carries a CSRF value derived the same way
//! ([`Sessions::csrf`]) and, when the browser sends one, an `Origin` of this host.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::auth::Operator;

/// The session cookie's name.
pub const COOKIE: &str = "prx_ci_session";
const SESSION_CONTEXT: &[u8] = b"prx-ci dashboard session v1";
const CSRF_CONTEXT: &[u8] = b"prx-ci dashboard csrf v1";

/// The accepted tokens, and how sessions are derived from them.
#[derive(Clone)]
pub struct Sessions {
    tokens: Arc<Vec<(String, SecretString)>>,
    /// Mark the cookie `Secure` (served behind TLS).
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

fn mac(token: &SecretString, context: &[u8], name: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(context);
    mac.update(b":");
    mac.update(name.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl Sessions {
    /// `tokens`: `OpsConfig::identities`.
    pub fn new(tokens: Vec<(String, SecretString)>, secure: bool) -> Self {
        Self {
            tokens: Arc::new(tokens),
            secure,
        }
    }

    /// The operator whose token is `presented` (every token compared in constant time).
    pub fn by_token(&self, presented: &str) -> Option<Operator> {
        let mut matched = None;
        for (name, token) in self.tokens.iter() {
            let equal = bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes()));
            if equal && matched.is_none() {
                matched = Some(Operator::authenticated(name.clone()));
            }
        }
        matched
    }

    /// The session cookie's value for `operator`.
    fn session_value(&self, operator: &str) -> Option<String> {
        let (name, token) = self.tokens.iter().find(|(n, _)| n == operator)?;
        Some(format!("{name}:{}", mac(token, SESSION_CONTEXT, name)))
    }

    /// The operator a request authenticated as: its session cookie, else its bearer token.
    pub fn operator(&self, headers: &HeaderMap) -> Option<Operator> {
        if let Some(value) = cookie_value(headers, COOKIE) {
            let (name, _) = value.split_once(':')?;
            let expected = self.session_value(name)?;
            if bool::from(value.as_bytes().ct_eq(expected.as_bytes())) {
                return Some(Operator::authenticated(name.to_owned()));
            }
            return None;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.by_token(bearer)
    }

    /// The `Set-Cookie` that starts `operator`'s session.
    pub fn set_cookie(&self, operator: &Operator) -> Option<String> {
        let value = self.session_value(operator.name())?;
        let secure = if self.secure { "; Secure" } else { "" };
        Some(format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ))
    }

    /// The `Set-Cookie` that ends a session.
    pub fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// The CSRF value `operator`'s forms carry.
    pub fn csrf(&self, operator: &Operator) -> String {
        self.tokens
            .iter()
            .find(|(n, _)| n == operator.name())
            .map(|(name, token)| mac(token, CSRF_CONTEXT, name))
            .unwrap_or_default()
    }

    /// Whether a POST of `operator` is their own: its CSRF value matches, and its `Origin`
    /// (when the browser sends one) is this host.
    pub fn same_origin_post(&self, operator: &Operator, headers: &HeaderMap, csrf: &str) -> bool {
        let expected = self.csrf(operator);
        let csrf_ok =
            !expected.is_empty() && bool::from(csrf.as_bytes().ct_eq(expected.as_bytes()));
        let origin_ok = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
            (None, _) => true,
            (Some(origin), Some(host)) => {
                let origin = origin.to_str().unwrap_or("");
                let host = host.to_str().unwrap_or("");
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority == host)
            }
            (Some(_), None) => false,
        };
        csrf_ok && origin_ok
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| cookie::Cookie::parse(pair.trim().to_owned()).ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(
            vec![
                (
                    "ops-token".into(),
                    SecretString::from("0123456789abcdef-ops"),
                ),
                ("alice".into(), SecretString::from("alice-0123456789abcdef")),
            ],
            false,
        )
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_login_gives_a_cookie_that_names_the_operator_and_hides_the_token() {
        let s = sessions();
        let alice = s.by_token("alice-0123456789abcdef").unwrap();
        assert_eq!(alice.name(), "alice");
        assert!(s.by_token("alice-0123456789abcdeX").is_none());
        let set = s.set_cookie(&alice).unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(
            !set.contains("alice-0123456789abcdef"),
            "the token is never in the cookie"
        );
        let value = set
            .strip_prefix(&format!("{COOKIE}="))
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert_eq!(s.operator(&with_cookie(value)).unwrap().name(), "alice");
    }

    #[test]
    fn forged_or_rotated_sessions_are_refused() {
        let s = sessions();
        let alice = s.by_token("alice-0123456789abcdef").unwrap();
        let value = s.session_value(alice.name()).unwrap();
        // Another operator's name on alice's MAC.
        let forged = value.replacen("alice", "ops-token", 1);
        assert!(s.operator(&with_cookie(&forged)).is_none());
        assert!(s.operator(&with_cookie("alice:00")).is_none());
        // Alice's token rotated: her old session ends.
        let rotated = Sessions::new(
            vec![(
                "alice".into(),
                SecretString::from("alice-new-0123456789abcdef"),
            )],
            false,
        );
        assert!(rotated.operator(&with_cookie(&value)).is_none());
        assert!(s.operator(&HeaderMap::new()).is_none());
    }

    #[test]
    fn bearer_tokens_work_for_scripts() {
        let s = sessions();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef-ops"),
        );
        assert_eq!(s.operator(&headers).unwrap().name(), "ops-token");
    }

    #[test]
    fn posts_need_the_csrf_value_and_this_origin() {
        let s = sessions();
        let alice = s.by_token("alice-0123456789abcdef").unwrap();
        let csrf = s.csrf(&alice);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        assert!(s.same_origin_post(&alice, &headers, &csrf));
        assert!(!s.same_origin_post(&alice, &headers, "nope"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8081"),
        );
        assert!(s.same_origin_post(&alice, &headers, &csrf));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!s.same_origin_post(&alice, &headers, &csrf));
    }
}
