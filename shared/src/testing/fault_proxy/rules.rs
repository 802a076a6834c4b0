//! The rules of the fault proxy: which requests ([`Match`]), what is done to them ([`Fault`]),
//! and when ([`Firing`]).

use std::fmt;
use std::time::Duration;

use axum::body::Bytes;

/// Which requests a rule applies to; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    method: Option<String>,
    path_prefix: Option<String>,
    target: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// AWS JSON protocol calls of one operation, by `X-Amz-Target` (e.g.
    /// `AmazonSSM.PutParameter`).
    pub fn aws(target: &str) -> Self {
        Self::any().target(target)
    }

    /// Only this HTTP method (case-insensitive).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only paths starting with `prefix` (the query is not part of the path).
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Only requests whose `X-Amz-Target` header is `target`.
    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.to_owned());
        self
    }

    pub(super) fn matches(&self, method: &str, path: &str, target: Option<&str>) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.target.as_deref().is_none_or(|t| Some(t) == target)
    }
}

/// What kind of fault was injected (the key of [`FaultProxy::injected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// AWS `ThrottlingException` (HTTP 400).
    Throttling,
    /// A 5xx answer without forwarding.
    ServerError(u16),
    /// 429 with `Retry-After`.
    TooManyRequests,
    /// Forwarded, then the upstream's answer replaced by an error.
    LostAnswer,
    /// Held back before forwarding.
    Delay,
    /// Any other answer given without forwarding ([`Fault::answer`]), by status.
    Answer(u16),
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Throttling => f.write_str("throttling"),
            Self::ServerError(status) => write!(f, "server_error_{status}"),
            Self::TooManyRequests => f.write_str("too_many_requests"),
            Self::LostAnswer => f.write_str("lost_answer"),
            Self::Delay => f.write_str("delay"),
            Self::Answer(status) => write!(f, "answer_{status}"),
        }
    }
}

/// What a rule does to a request it fires on.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this without forwarding (the upstream never sees the request).
    Respond {
        kind: FaultKind,
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Forward, wait for the upstream's answer, then answer `status` instead: the write
    /// landed, the client does not know it.
    LoseAnswer { status: u16, body: Bytes },
    /// Wait this long, then forward.
    Delay(Duration),
}

impl Fault {
    /// AWS JSON 1.1 `ThrottlingException`, as SSM sends it: HTTP 400,
    /// `{"__type":"ThrottlingException","message":"Rate exceeded"}`.
    pub fn ssm_throttling() -> Self {
        Self::Respond {
            kind: FaultKind::Throttling,
            status: 400,
            headers: vec![
                (
                    "content-type".to_owned(),
                    "application/x-amz-json-1.1".to_owned(),
                ),
                ("x-amzn-requestid".to_owned(), "fault-proxy".to_owned()),
            ],
            body: Bytes::from_static(
                br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            ),
        }
    }

    /// A 5xx (500, 502, 503, ...) without forwarding, with a JSON body that names the proxy.
    pub fn server_error(status: u16) -> Self {
        Self::Respond {
            kind: FaultKind::ServerError(status),
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: Bytes::from(format!(r#"{{"message":"fault proxy: injected {status}"}}"#)),
        }
    }

    /// 429 with `Retry-After` in whole seconds (rounded up).
    pub fn too_many_requests(retry_after: Duration) -> Self {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::Respond {
            kind: FaultKind::TooManyRequests,
            status: 429,
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("retry-after".to_owned(), seconds.to_string()),
            ],
            body: Bytes::from_static(br#"{"message":"fault proxy: rate limited"}"#),
        }
    }

    /// Forward, then answer 500: the write landed, the answer was lost.
    pub fn lost_answer() -> Self {
        Self::LoseAnswer {
            status: 500,
            body: Bytes::from_static(br#"{"message":"fault proxy: answer lost"}"#),
        }
    }

    /// Wait `delay`, then forward.
    pub fn delay(delay: Duration) -> Self {
        Self::Delay(delay)
    }

    /// Any answer without forwarding.
    pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Self {
        Self::Respond {
            kind: FaultKind::Answer(status),
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }

    /// The kind counted when this fault fires.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Respond { kind, .. } => *kind,
            Self::LoseAnswer { .. } => FaultKind::LostAnswer,
            Self::Delay(_) => FaultKind::Delay,
        }
    }
}

/// When a matching rule fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Firing {
    /// On every matching request.
    Always,
    /// On the next `n` matching requests, then never.
    Next(u32),
    /// On each matching request with this probability, drawn from the proxy's seeded RNG.
    Probability(f64),
}

/// A fault, the requests it applies to, and when it fires.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub matcher: Match,
    pub fault: Fault,
    pub firing: Firing,
}

impl FaultRule {
    /// Fires on every request `matcher` matches (until removed).
    pub fn new(matcher: Match, fault: Fault) -> Self {
        Self {
            matcher,
            fault,
            firing: Firing::Always,
        }
    }

    /// Fires on the next `n` matching requests only.
    pub fn times(mut self, n: u32) -> Self {
        self.firing = Firing::Next(n);
        self
    }

    /// Fires on each matching request with probability `p` (clamped to 0..=1).
    pub fn probability(mut self, p: f64) -> Self {
        self.firing = Firing::Probability(p.clamp(0.0, 1.0));
        self
    }
}
