//! Subjects and streams: which subject each event kind goes to, and the reversible encoding of
//! user data (owner, repo, branch, event names) into subject tokens.
//!
//! A NATS subject token may not contain `.`, `*`, `>` or whitespace, and may not be empty. User
//! data can contain all of those, so every token built from it goes through [`encode_token`]:
//! ASCII letters, digits, `-` and `_` stand for themselves, every other byte becomes `~HH`
//! (upper-case hex of the UTF-8 byte), and the empty string becomes a lone `~`. The encoding is
//! injective and [`decode_token`] inverts it, so filters like `prx.build.*.PRX.my-app` are exact.

use prx_ci_proto::v1::envelope::Payload;

/// Stream holding every accepted webhook delivery (`prx.webhook.>`).
pub const WEBHOOKS_STREAM: &str = "PRX_WEBHOOKS";
/// Stream holding every derived fact: build decisions, build lifecycle, publishes,
/// notifications, raw backend reports (`prx.build.>`, `prx.publish.>`, `prx.notification.>`,
/// `prx.runner.>`).
pub const EVENTS_STREAM: &str = "PRX_EVENTS";
/// Stream holding parked (dead-lettered) messages (`prx.parked.>`).
pub const PARKED_STREAM: &str = "PRX_PARKED";

/// Every stream the system needs, for readiness checks.
pub const ALL_STREAMS: [&str; 3] = [WEBHOOKS_STREAM, EVENTS_STREAM, PARKED_STREAM];

const ESCAPE: u8 = b'~';

/// Encodes arbitrary text into one valid, non-empty subject token. See the module docs.
pub fn encode_token(value: &str) -> String {
    if value.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push(ESCAPE as char);
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// Why a token is not the output of [`encode_token`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an encoded subject token: {0:?}")]
pub struct InvalidToken(pub String);

/// Inverts [`encode_token`].
pub fn decode_token(token: &str) -> Result<String, InvalidToken> {
    if token == "~" {
        return Ok(String::new());
    }
    let invalid = || InvalidToken(token.to_owned());
    let bytes = token.as_bytes();
    if bytes.is_empty() {
        return Err(invalid());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESCAPE {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(invalid)?;
            // Only the canonical (upper-case) form decodes, so the encoding stays a bijection.
            if !hex
                .iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
            {
                return Err(invalid());
            }
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| invalid())?;
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                return Err(invalid());
            }
            out.push(byte);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return Err(invalid());
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// The two subject tokens of a repository: `owner` and `repo` of `owner/repo`, each encoded.
/// Text that is not `owner/repo` keeps its whole value in the owner token and an empty repo.
pub fn repository_tokens(full_name: &str) -> (String, String) {
    match full_name.split_once('/') {
        Some((owner, repo)) => (encode_token(owner), encode_token(repo)),
        None => (encode_token(full_name), encode_token("")),
    }
}

/// The kind of an event: decides its stream and subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    WebhookReceived,
    BuildRequested,
    BuildSkipped,
    BuildStarted,
    BuildPhaseChanged,
    BuildCompleted,
    BuildCancelled,
    PublishApplied,
    PublishSkipped,
    MessageParked,
    NotificationDelivered,
    BuildReportReceived,
    ParameterOwnerChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        Self::WebhookReceived,
        Self::BuildRequested,
        Self::BuildSkipped,
        Self::BuildStarted,
        Self::BuildPhaseChanged,
        Self::BuildCompleted,
        Self::BuildCancelled,
        Self::PublishApplied,
        Self::PublishSkipped,
        Self::MessageParked,
        Self::NotificationDelivered,
        Self::BuildReportReceived,
        Self::ParameterOwnerChanged,
    ];

    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::WebhookReceived(_) => Self::WebhookReceived,
            Payload::BuildRequested(_) => Self::BuildRequested,
            Payload::BuildSkipped(_) => Self::BuildSkipped,
            Payload::BuildStarted(_) => Self::BuildStarted,
            Payload::BuildPhaseChanged(_) => Self::BuildPhaseChanged,
            Payload::BuildCompleted(_) => Self::BuildCompleted,
            Payload::BuildCancelled(_) => Self::BuildCancelled,
            Payload::PublishApplied(_) => Self::PublishApplied,
            Payload::PublishSkipped(_) => Self::PublishSkipped,
            Payload::MessageParked(_) => Self::MessageParked,
            Payload::NotificationDelivered(_) => Self::NotificationDelivered,
            Payload::BuildReportReceived(_) => Self::BuildReportReceived,
            Payload::ParameterOwnerChanged(_) => Self::ParameterOwnerChanged,
        }
    }

    /// A short stable name (`build.completed`), used in logs, metrics and `prx-ci events`.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebhookReceived => "webhook.received",
            Self::BuildRequested => "build.requested",
            Self::BuildSkipped => "build.skipped",
            Self::BuildStarted => "build.started",
            Self::BuildPhaseChanged => "build.phase",
            Self::BuildCompleted => "build.completed",
            Self::BuildCancelled => "build.cancelled",
            Self::PublishApplied => "publish.applied",
            Self::PublishSkipped => "publish.skipped",
            Self::MessageParked => "parked",
            Self::NotificationDelivered => "notification.delivered",
            Self::BuildReportReceived => "runner.report",
            Self::ParameterOwnerChanged => "publish.owner",
        }
    }

    /// The stream this kind is stored in.
    pub fn stream(self) -> &'static str {
        match self {
            Self::WebhookReceived => WEBHOOKS_STREAM,
            Self::MessageParked => PARKED_STREAM,
            _ => EVENTS_STREAM,
        }
    }

    /// Subject prefix (the tokens before the repository tokens).
    fn prefix(self) -> &'static str {
        match self {
            Self::WebhookReceived => "prx.webhook",
            Self::BuildRequested => "prx.build.requested",
            Self::BuildSkipped => "prx.build.skipped",
            Self::BuildStarted => "prx.build.started",
            Self::BuildPhaseChanged => "prx.build.phase",
            Self::BuildCompleted => "prx.build.completed",
            Self::BuildCancelled => "prx.build.cancelled",
            Self::PublishApplied => "prx.publish.applied",
            Self::PublishSkipped => "prx.publish.skipped",
            Self::MessageParked => "prx.parked",
            Self::NotificationDelivered => "prx.notification.delivered",
            Self::BuildReportReceived => "prx.runner.report",
            Self::ParameterOwnerChanged => "prx.publish.owner",
        }
    }

    /// A filter matching every event of this kind (`prx.build.completed.>`).
    pub fn filter(self) -> String {
        format!("{}.>", self.prefix())
    }
}

/// The subject of a webhook delivery: `prx.webhook.<event>.<owner>.<repo>`.
pub fn webhook_subject(event_name: &str, repository: &str) -> String {
    let (owner, repo) = repository_tokens(repository);
    format!("prx.webhook.{}.{owner}.{repo}", encode_token(event_name))
}

/// The subject of a derived event about a repository: `prx.<area>.<kind>.<owner>.<repo>`.
///
/// # Panics
/// For [`EventKind::WebhookReceived`] and [`EventKind::MessageParked`], whose subjects have
/// other tokens: use [`webhook_subject`] and [`parked_subject`].
pub fn event_subject(kind: EventKind, repository: &str) -> String {
    assert!(
        !matches!(kind, EventKind::WebhookReceived | EventKind::MessageParked),
        "{kind:?} has its own subject builder"
    );
    let (owner, repo) = repository_tokens(repository);
    format!("{}.{owner}.{repo}", kind.prefix())
}

/// The subject of a parked message: `prx.parked.<consumer>`.
pub fn parked_subject(consumer: &str) -> String {
    format!("prx.parked.{}", encode_token(consumer))
}

/// A filter matching every event of `kind` for one repository.
pub fn repository_filter(kind: EventKind, repository: &str) -> String {
    let (owner, repo) = repository_tokens(repository);
    match kind {
        EventKind::WebhookReceived => format!("prx.webhook.*.{owner}.{repo}"),
        _ => format!("{}.{owner}.{repo}", kind.prefix()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn is_valid_token(t: &str) -> bool {
        !t.is_empty()
            && !t
                .chars()
                .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    }

    proptest! {
        #[test]
        fn token_encoding_round_trips(s in any::<String>()) {
            let token = encode_token(&s);
            prop_assert!(is_valid_token(&token), "{token:?}");
            prop_assert_eq!(decode_token(&token).unwrap(), s);
        }

        #[test]
        fn token_encoding_is_injective(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(encode_token(&a), encode_token(&b));
        }

        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = decode_token(&s);
        }
    }

    #[test]
    fn tricky_values_encode_to_single_tokens() {
        assert_eq!(encode_token("my-app_2"), "my-app_2");
        assert_eq!(encode_token("feature/x.y"), "feature~2Fx~2Ey");
        assert_eq!(encode_token("a b*>"), "a~20b~2A~3E");
        assert_eq!(encode_token("~"), "~7E");
        assert_eq!(encode_token(""), "~");
        assert_eq!(encode_token("é"), "~C3~A9");
    }

    #[test]
    fn non_canonical_tokens_are_rejected() {
        for bad in ["", "a.b", "~2f", "~41", "~4", "a b"] {
            assert!(decode_token(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn subjects_put_kind_and_repository_in_tokens() {
        assert_eq!(
            webhook_subject("push", "PRX/my.app"),
            "prx.webhook.push.PRX.my~2Eapp"
        );
        assert_eq!(
            event_subject(EventKind::BuildCompleted, "PRX/app"),
            "prx.build.completed.PRX.app"
        );
        assert_eq!(parked_subject("dispatcher"), "prx.parked.dispatcher");
        assert_eq!(EventKind::PublishSkipped.filter(), "prx.publish.skipped.>");
        assert_eq!(
            repository_filter(EventKind::WebhookReceived, "PRX/app"),
            "prx.webhook.*.PRX.app"
        );
    }
}
