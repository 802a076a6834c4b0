//! A replay's range as operators type it (pure): each end a stream sequence or an RFC 3339 time,
//! for `prx-ci replay --from/--to` and the dashboard's replay form alike.

use prx_ci_proto::v1::replay_request;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One end of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Sequence(u64),
    Time(OffsetDateTime),
}

/// A bound that is neither a sequence number nor an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither a stream sequence number nor an RFC 3339 time (like 2026-11-30T22:00:00Z)"
)]
pub struct BadBound(pub String);

/// Parses one end of a range (surrounding blanks ignored).
pub fn parse_bound(text: &str) -> Result<Bound, BadBound> {
    let text = text.trim();
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(Bound::Sequence(sequence));
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(Bound::Time)
        .map_err(|_| BadBound(text.to_owned()))
}

/// The optional one of a blank or missing text.
fn optional(text: Option<&str>) -> Result<Option<Bound>, BadBound> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(parse_bound)
        .transpose()
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prx_ci_shared::bus::envelope::timestamp(t)
}

/// The request's start (none or blank: the stream's first message).
pub fn from(text: Option<&str>) -> Result<Option<replay_request::From>, BadBound> {
    Ok(optional(text)?.map(|b| match b {
        Bound::Sequence(s) => replay_request::From::FromSequence(s),
        Bound::Time(t) => replay_request::From::FromTime(timestamp(t)),
    }))
}

/// The request's end (none or blank: the last message stored now).
pub fn to(text: Option<&str>) -> Result<Option<replay_request::To>, BadBound> {
    Ok(optional(text)?.map(|b| match b {
        Bound::Sequence(s) => replay_request::To::ToSequence(s),
        Bound::Time(t) => replay_request::To::ToTime(timestamp(t)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequences_or_times() {
        assert_eq!(parse_bound("42").unwrap(), Bound::Sequence(42));
        assert_eq!(parse_bound(" 7 ").unwrap(), Bound::Sequence(7));
        assert!(matches!(
            parse_bound("2026-01-01T10:00:00Z").unwrap(),
            Bound::Time(_)
        ));
        let bad = parse_bound("yesterday").unwrap_err();
        assert!(bad.to_string().contains("\"yesterday\""), "{bad}");
    }

    #[test]
    fn blank_ends_are_open() {
        assert_eq!(from(None).unwrap(), None);
        assert_eq!(from(Some("  ")).unwrap(), None);
        assert_eq!(
            from(Some("3")).unwrap(),
            Some(replay_request::From::FromSequence(3))
        );
        assert_eq!(
            to(Some("9")).unwrap(),
            Some(replay_request::To::ToSequence(9))
        );
        assert!(matches!(
            to(Some("2026-01-01T10:00:00+01:00")).unwrap(),
            Some(replay_request::To::ToTime(t)) if t.seconds == 1_767_258_000
        ));
        assert!(to(Some("soon")).is_err());
    }
}
