//! Masking secrets and terminal control sequences in untrusted build output (pure).
//!
//! One function for every producer of a log tail (the build-watcher for CodeBuild, the local
//! runner): [`Redactor::redact`] strips ANSI escape sequences and control characters, masks
//! the exact values it was given (the build's secret-looking variables, [`secret_values`]),
//! then every well-known secret shape ([`PATTERNS`]). Masking is best effort against
//! accidents (a token echoed by `set -x`, a key in a stack trace), not a guarantee: a build
//! that wants to leak a secret can always encode it.

use std::sync::LazyLock;

use regex::Regex;

/// What a masked secret reads as.
pub const MASK: &str = "[REDACTED]";

/// Exact values shorter than this are not masked: a variable named `*KEY*` holding `main` or
/// `true` would otherwise mask every such word of the log (docs/check-runs.md).
pub const MIN_SECRET_VALUE_CHARS: usize = 8;

/// What a variable name must contain (compared upper case) for its value to be masked.
pub const SECRET_NAME_PARTS: [&str; 8] = [
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "PRIVATE",
    "KEY",
];

/// Whether a variable named `name` holds a secret, by its name (`GITHUB_TOKEN`,
/// `AWS_SECRET_ACCESS_KEY`, `NPM_PASSWORD`, `SSH_KEY`, ...).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
}

/// The values to mask among `variables`: those of secret-looking names
/// ([`is_secret_name`]) at least [`MIN_SECRET_VALUE_CHARS`] long (trimmed).
pub fn secret_values<'a>(variables: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    variables
        .into_iter()
        .filter(|(name, _)| is_secret_name(name))
        .map(|(_, value)| value.trim())
        .filter(|value| value.chars().count() >= MIN_SECRET_VALUE_CHARS)
        .map(str::to_owned)
        .collect()
}

/// One well-known secret shape: what matches is replaced by `replacement` (`$keep`: the part
/// of the match that is not secret, e.g. a variable's name).
#[derive(Debug)]
pub struct Pattern {
    pub name: &'static str,
    pub regex: Regex,
    pub replacement: &'static str,
}

fn pattern(name: &'static str, regex: &str, replacement: &'static str) -> Pattern {
    Pattern {
        name,
        regex: Regex::new(regex).unwrap_or_else(|e| panic!("secret pattern {name}: {e}")),
        replacement,
    }
}

/// The secret shapes masked, in the order they are applied. No leading `\b`: a token glued to
/// the text before it is still a token.
pub static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    vec![
        // A private key block (also one whose end is beyond the text: the rest is masked).
        pattern(
            "pem_private_key",
            r"(?s)-----BEGIN[A-Z0-9 ]* PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]* PRIVATE KEY-----|\z)",
            "[REDACTED PRIVATE KEY]",
        ),
        // A private key whose beginning is before the text: everything up to its end. (One
        // with neither its BEGIN nor its END line, the build killed mid-print, is
        // [`mask_leading_key_body`]'s: only a text that starts at a cut can start inside one.)
        pattern(
            "pem_private_key_end",
            r"(?s)\A.*?-----END[A-Z0-9 ]* PRIVATE KEY-----",
            "[REDACTED PRIVATE KEY]",
        ),
        // GitHub: classic (`ghp_` personal, `gho_` OAuth, `ghu_` user-to-server, `ghs_`
        // server-to-server / installation, `ghr_` refresh) and fine-grained tokens.
        pattern("github_token", r"gh[pousr]_[A-Za-z0-9]{20,}", MASK),
        pattern(
            "github_fine_grained_token",
            r"github_pat_[A-Za-z0-9_]{20,}",
            MASK,
        ),
        // GitLab personal access tokens.
        pattern("gitlab_token", r"glpat-[A-Za-z0-9_-]{20,}", MASK),
        // npm access tokens (`npm_` and 36 letters or digits).
        pattern("npm_token", r"npm_[A-Za-z0-9]{36}", MASK),
        // PyPI API tokens (a macaroon: `pypi-AgE...`).
        pattern("pypi_token", r"pypi-AgE[A-Za-z0-9_-]{20,}", MASK),
        // JSON Web Tokens: a header and a payload that are JSON objects (`eyJ`), a signature.
        pattern(
            "jwt",
            r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            MASK,
        ),
        // Slack: bot, user, app, workspace, refresh, configuration tokens.
        pattern("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", MASK),
        // AWS access key ids (long-term and temporary).
        pattern("aws_access_key_id", r"(?:AKIA|ASIA)[A-Z0-9]{16}", MASK),
        // `https://user:password@host`: the password, up to the last `@` before the host (a
        // password may hold an unencoded `@`; so may a user name).
        pattern(
            "url_credentials",
            r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:]*:)[^/\s]+@",
            "${keep}[REDACTED]@",
        ),
        // `Authorization: Bearer x`, `authorization=token x`, `Authorization: Basic x`. No
        // `\s` that could cross a line break: the next line's first word is not the value.
        pattern(
            "authorization_header",
            r#"(?i)(?P<keep>authorization["']?[^\S\n]*[:=][^\S\n]*["']?(?:(?:bearer|token|basic)[^\S\n]+)?)[^\s"',;]+"#,
            "${keep}[REDACTED]",
        ),
        pattern(
            "bearer_token",
            r"(?i)(?P<keep>\bbearer[^\S\n]+)[A-Za-z0-9._~+/=-]{8,}",
            "${keep}[REDACTED]",
        ),
        // `Cookie: a=b; c=d`, `Set-Cookie: session=x; Path=/`: the whole value.
        pattern(
            "cookie_header",
            r#"(?i)(?P<keep>\b(?:set-)?cookie["']?[^\S\n]*[:=][^\S\n]*["']?)[^\s"'\[][^\n"']*"#,
            "${keep}[REDACTED]",
        ),
        // `--password hunter2`, `--token x` (a space instead of `=`; `--password-stdin` is
        // another flag).
        pattern(
            "secret_flag",
            r#"(?i)(?P<keep>--(?:password|passwd|token|api[_-]?key|secret)[^\S\n]+["']?)[^\s"'\[-][^\s"']*"#,
            "${keep}[REDACTED]",
        ),
        // `docker login -u AWS -p x`, `npm login ... -p x`: `-p` is the password only after a
        // `login`.
        pattern(
            "login_password_flag",
            r#"(?i)(?P<keep>\blogin\b[^\n]*?[^\S\n]-p(?:[^\S\n]+|=)["']?)[^\s"'\[-][^\s"']*"#,
            "${keep}[REDACTED]",
        ),
        // `aws_secret_access_key = x`, `export NPM_TOKEN=x`, `"password": "x"`, `x-api-key: x`,
        // `SIGNING_KEY=x`: the value of an assignment to a secret-looking name (not one already
        // masked, which starts with `[`: `https://x-access-token:[REDACTED]@host` keeps its
        // host).
        pattern(
            "secret_assignment",
            r#"(?i)(?P<keep>[A-Za-z0-9_.-]*(?:secret|token|password|passwd|passphrase|credential|api[_-]?key|access[_-]?key|private[_-]?key|[_-]key\b)[A-Za-z0-9_.-]*["']?[^\S\n]*[:=][^\S\n]*["']?)[^\s"',;\[][^\s"',;]*"#,
            "${keep}[REDACTED]",
        ),
    ]
});

/// Strips what a terminal would interpret rather than show: ANSI escape sequences (CSI, OSC,
/// two-character escapes; an OSC or DCS string left unterminated ends at the line break),
/// control characters (a tab becomes a space; a carriage return keeps what follows it, as a
/// terminal shows the rewritten line) and invisible Unicode format characters
/// ([`is_format_character`]). Line breaks stay.
pub fn strip_terminal_controls(text: &str) -> String {
    static ESCAPES: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b\n]*(?:\x1b\\)?|\x1b[ -/]*[0-~]|\x9b[0-?]*[ -/]*[@-~]",
        )
        .expect("escape pattern")
    });
    let without_escapes = ESCAPES.replace_all(text, "");
    let mut out = String::with_capacity(without_escapes.len());
    for (i, line) in without_escapes.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let line = line.trim_end_matches('\r');
        let shown = line
            .rsplit('\r')
            .find(|part| !part.is_empty())
            .unwrap_or_default();
        out.extend(shown.chars().filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() || is_format_character(c) => None,
            c => Some(c),
        }));
    }
    out
}

/// Unicode's invisible format characters that change how the text around them reads:
/// bidirectional controls, zero-width characters, the soft hyphen, and tag characters (which
/// can smuggle invisible text). The one list: the notifier's Markdown escaping uses it too.
pub fn is_format_character(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E007F}')
}

/// Shortest line taken for a private key's body by [`mask_leading_key_body`] (a PEM body's
/// lines are 64 characters, an OpenSSH key's 70).
pub const KEY_BODY_LINE_CHARS: usize = 60;

/// A text that starts at a cut (`earlier` lines were left out) inside a private key's body, its
/// `BEGIN` line among those left out and no `END` line after it (the build was killed
/// mid-print): its leading run of base64-only lines, the first at least
/// [`KEY_BODY_LINE_CHARS`] long, is masked. Only at the start of such a text: anywhere else,
/// a key's `BEGIN` line is in the text and [`PATTERNS`] masks the block.
pub fn mask_leading_key_body(text: &str) -> std::borrow::Cow<'_, str> {
    static BODY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            r"(?m)\A[A-Za-z0-9+/]{{{KEY_BODY_LINE_CHARS},}}={{0,2}}$(?:\n[A-Za-z0-9+/]+={{0,2}}$)*"
        ))
        .expect("key body pattern")
    });
    BODY.replace(text, "[REDACTED PRIVATE KEY]")
}

/// Masks secrets in build output: the well-known shapes and the given exact values.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is masked whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values themselves.
        f.debug_struct("Redactor")
            .field("values", &self.values.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor masking the well-known shapes and `values` (each as it appears after
    /// [`strip_terminal_controls`]; empty ones are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .map(|v| strip_terminal_controls(&v))
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self { values }
    }

    /// A redactor for a build with these variables: their secret-looking values
    /// ([`secret_values`]) and the well-known shapes.
    pub fn for_variables<'a>(variables: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::new(secret_values(variables))
    }

    /// `text` with terminal controls stripped and every secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut text = strip_terminal_controls(text);
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), MASK);
            }
        }
        for p in PATTERNS.iter() {
            if let std::borrow::Cow::Owned(masked) = p.regex.replace_all(&text, p.replacement) {
                text = masked;
            }
        }
        text
    }
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
