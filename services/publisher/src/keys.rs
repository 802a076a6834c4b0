//! Reversible KV keys for parameter names. KV keys allow `[-/_=.a-zA-Z0-9]` only and may not
//! start or end with `.`; parameter names may hold `.` (a subject separator). The key is the
//! subject-token encoding of the name (`prx_ci_shared::bus::subject::encode_token`) with its escape
//! character `~` (not allowed in keys) spelled `=` (which that encoding never emits).

use prx_ci_shared::bus::subject::{decode_token, encode_token};

/// The KV key of a parameter name.
pub fn kv_key(name: &str) -> String {
    encode_token(name).replace('~', "=")
}

/// The parameter name of a KV key written by [`kv_key`].
pub fn from_kv_key(key: &str) -> Option<String> {
    decode_token(&key.replace('=', "~")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_valid_kv_keys() {
        for name in [
            "/prx/stag/Spire/My.App/pkg/docker-image-tag",
            "",
            "a=b~c",
            "x",
        ] {
            let key = kv_key(name);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{key}"
            );
            assert!(!key.starts_with('.') && !key.ends_with('.'));
            assert_eq!(from_kv_key(&key).as_deref(), Some(name));
        }
        assert_ne!(kv_key("/a.b"), kv_key("/a/b"));
        assert_eq!(from_kv_key("a="), None);
    }
}
