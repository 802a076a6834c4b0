use proptest::prelude::*;

use super::*;

fn redact(text: &str) -> String {
    Redactor::default().redact(text)
}

#[test]
fn ansi_escapes_and_control_characters_are_stripped() {
    assert_eq!(
        redact("\x1b[1;31merror\x1b[0m: \x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\ done\x07"),
        "error: link done"
    );
    assert_eq!(redact("a\tb\x00c\x08d"), "a bcd");
    assert_eq!(
        redact("progress 10%\rprogress 100%\r\nnext"),
        "progress 100%\nnext"
    );
    assert_eq!(redact("rtl \u{202E}txt.exe\u{200B}"), "rtl txt.exe");
    assert_eq!(redact("line 1\nline 2\n"), "line 1\nline 2\n");
    // Tag characters: invisible text.
    assert_eq!(redact("flag\u{E0041}\u{E0062}\u{E007F} ok"), "flag ok");
    assert!(is_format_character('\u{E0020}') && !is_format_character('e'));
}

#[test]
fn an_unterminated_osc_or_dcs_string_ends_at_its_line() {
    assert_eq!(
        redact("a\x1b]8;;https://x never closed\nnext line\nlast"),
        "a\nnext line\nlast"
    );
    assert_eq!(redact("\x1bPq#0;2;0;0;0\nafter"), "\nafter");
    assert_eq!(redact("b\x1b]0;title\x07 shown"), "b shown");
}

#[test]
fn github_tokens_of_every_kind_are_masked() {
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        let token = format!("{prefix}{}", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
        let out = redact(&format!("remote: using {token} for push"));
        assert_eq!(out, "remote: using [REDACTED] for push", "{prefix}");
    }
    let pat = format!("github_pat_11ABCDEFG0_{}", "x".repeat(59));
    assert_eq!(redact(&format!("token {pat}!")), "token [REDACTED]!");
    // Too short to be a token: left alone.
    assert_eq!(redact("ghp_short"), "ghp_short");
}

#[test]
fn slack_and_aws_key_ids_are_masked() {
    assert_eq!(
        redact("SLACK xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx end"),
        "SLACK [REDACTED] end"
    );
    assert_eq!(redact("xoxp-1234-5678-abcdef"), "[REDACTED]");
    assert_eq!(
        redact("key AKIAIOSFODNN7EXAMPLE used"),
        "key [REDACTED] used"
    );
    assert_eq!(redact("ASIAY34FZKBOKMUTVV7A"), "[REDACTED]");
}

#[test]
fn secret_assignments_keep_the_name_and_mask_the_value() {
    assert_eq!(
        redact("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        "aws_secret_access_key = [REDACTED]"
    );
    assert_eq!(
        redact("export NPM_TOKEN=npm_abcdef123456 && npm publish"),
        "export NPM_TOKEN=[REDACTED] && npm publish"
    );
    assert_eq!(
        redact(r#"{"password": "hunter22", "user": "ci"}"#),
        r#"{"password": "[REDACTED]", "user": "ci"}"#
    );
    assert_eq!(redact("DB_PASSWORD:'s3cr3t!'"), "DB_PASSWORD:'[REDACTED]'");
    assert_eq!(redact("api_key=abc123;"), "api_key=[REDACTED];");
}

#[test]
fn authorization_values_are_masked() {
    assert_eq!(
        redact("> Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        "> Authorization: Bearer [REDACTED]"
    );
    assert_eq!(
        redact(r#"curl -H "authorization: token 0123456789abcdef" https://api"#),
        r#"curl -H "authorization: token [REDACTED]" https://api"#
    );
    assert_eq!(
        redact("Authorization: Basic dXNlcjpwYXNz"),
        "Authorization: Basic [REDACTED]"
    );
    assert_eq!(
        redact("using bearer abcdefghijklmnop"),
        "using bearer [REDACTED]"
    );
}

#[test]
fn private_key_blocks_are_masked_whole_even_when_cut() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabcdef==\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        redact(&format!("before\n{key}\nafter")),
        "before\n[REDACTED PRIVATE KEY]\nafter"
    );
    assert_eq!(
        redact("x\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nmore"),
        "x\n[REDACTED PRIVATE KEY]"
    );
    assert_eq!(
        redact("QyNTUxOQAAACB\n-----END PRIVATE KEY-----\nafter"),
        "[REDACTED PRIVATE KEY]\nafter"
    );
    // A public key or certificate is not a secret.
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    assert_eq!(redact(cert), cert);
}

#[test]
fn url_credentials_lose_their_password() {
    assert_eq!(
        redact("Cloning into 'app'... https://x-access-token:s3cr3tvalue@github.com/PRX/app.git"),
        "Cloning into 'app'... https://x-access-token:[REDACTED]@github.com/PRX/app.git"
    );
    assert_eq!(
        redact("postgres://ci:hunter2@db:5432/app"),
        "postgres://ci:[REDACTED]@db:5432/app"
    );
    // No credentials: unchanged.
    assert_eq!(
        redact("http://localhost:8080/a@b"),
        "http://localhost:8080/a@b"
    );
}

#[test]
fn every_secret_shape_is_masked_and_what_surrounds_it_kept() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let npm = format!("npm_{}", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
    let pypi = "pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWlqa2wtbW5vcC1xcnN0LXV2d3h5ejAxMjM0NQ";
    let cases: Vec<(String, &str)> = vec![
        // Header and assignment names with `-` or `_` between their words.
        ("x-api-key: abcdef123456".into(), "x-api-key: [REDACTED]"),
        ("X-Api-Key=abc123xyz".into(), "X-Api-Key=[REDACTED]"),
        ("ACCESS-KEY: AbC123".into(), "ACCESS-KEY: [REDACTED]"),
        ("private-key=xyz123".into(), "private-key=[REDACTED]"),
        // Names ending in `_KEY` / `-KEY`.
        ("SIGNING_KEY=abcdef".into(), "SIGNING_KEY=[REDACTED]"),
        (
            "RAILS_MASTER_KEY=0123456789abcdef rake".into(),
            "RAILS_MASTER_KEY=[REDACTED] rake",
        ),
        ("deploy-key: xyz".into(), "deploy-key: [REDACTED]"),
        ("KEY_ID=abc keyboard=us".into(), "KEY_ID=abc keyboard=us"),
        // Well-known flags given their value after a space.
        (
            "mysql --password hunter2 -h db".into(),
            "mysql --password [REDACTED] -h db",
        ),
        ("gh --token abcdef1 x".into(), "gh --token [REDACTED] x"),
        (
            r#"cli --password "hunter2" -v"#.into(),
            r#"cli --password "[REDACTED]" -v"#,
        ),
        (
            "docker login --password-stdin registry".into(),
            "docker login --password-stdin registry",
        ),
        // `-p` is a password only after `login`.
        (
            "docker login -u AWS -p eyJwYXlsb2FkIjoi 1234.dkr.ecr".into(),
            "docker login -u AWS -p [REDACTED] 1234.dkr.ecr",
        ),
        ("npm login -p=s3cr3t".into(), "npm login -p=[REDACTED]"),
        ("tar -p -xf a.tar".into(), "tar -p -xf a.tar"),
        ("mkdir -p build/out".into(), "mkdir -p build/out"),
        // Bare tokens.
        (format!("using {npm} now"), "using [REDACTED] now"),
        (format!("twine {pypi}"), "twine [REDACTED]"),
        ("glpat-AbCdEfGhIjKlMnOpQrSt".into(), "[REDACTED]"),
        (format!("id {jwt} ok"), "id [REDACTED] ok"),
        // Cookies.
        (
            "Cookie: session=abc123; theme=dark".into(),
            "Cookie: [REDACTED]",
        ),
        (
            "< Set-Cookie: sid=xyz; Path=/; HttpOnly".into(),
            "< Set-Cookie: [REDACTED]",
        ),
        // A URL password holding an `@`, a user name holding one.
        (
            "https://u:p@ss@host/x@y".into(),
            "https://u:[REDACTED]@host/x@y",
        ),
        (
            "https://me@corp.com:pw@host".into(),
            "https://me@corp.com:[REDACTED]@host",
        ),
        // A name at the end of a line: the next line's first word is not its value.
        ("password:\nnext line".into(), "password:\nnext line"),
        ("Authorization:\nfoo".into(), "Authorization:\nfoo"),
        ("bearer\nabcdefghijkl".into(), "bearer\nabcdefghijkl"),
        ("--password\nnext".into(), "--password\nnext"),
        ("Cookie:\nnext".into(), "Cookie:\nnext"),
    ];
    for (text, expected) in &cases {
        assert_eq!(redact(text), *expected, "{text:?}");
        assert_eq!(redact(expected), *expected, "masked again: {expected:?}");
    }
}

#[test]
fn a_key_body_at_the_start_of_a_cut_text_is_masked() {
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";
    let text = format!("{body}\n{body}\nMZ9ab==\nnpm ERR! killed\n");
    assert_eq!(
        mask_leading_key_body(&text),
        "[REDACTED PRIVATE KEY]\nnpm ERR! killed\n"
    );
    // Short base64-looking lines (a commit, a word) are not a key's body.
    let commit = "4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1\nnext";
    assert_eq!(mask_leading_key_body(commit), commit);
    let later = format!("error\n{body}");
    assert_eq!(mask_leading_key_body(&later), later);
}

#[test]
fn exact_values_are_masked_longest_first() {
    let r = Redactor::new(["supersecretvalue".to_owned(), "supersecret".to_owned()]);
    assert_eq!(
        r.redact("a supersecretvalue b supersecret c"),
        "a [REDACTED] b [REDACTED] c"
    );
    // A value hidden by a colour change is found once the escapes are gone.
    assert_eq!(r.redact("x super\x1b[0msecret y"), "x [REDACTED] y");
    assert!(
        !format!("{r:?}").contains("supersecret"),
        "Debug never shows values"
    );
}

#[test]
fn secret_looking_variables_are_chosen_by_name_and_length() {
    let vars = [
        ("GITHUB_TOKEN", "ghp_notreallyatoken"),
        ("npm_password", "longenough"),
        ("SSH_KEY", "short"),
        ("CACHE_KEY", " main "),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ("PRX_REPO", "PRX/secret-service-app"),
        ("DEPLOY_CREDENTIALS", "user:passphrase"),
    ];
    assert_eq!(
        secret_values(vars),
        [
            "ghp_notreallyatoken",
            "longenough",
            "wJalrXUtnFEMI",
            "user:passphrase"
        ]
    );
    assert!(is_secret_name("Private_Thing"));
    assert!(!is_secret_name("PRX_COMMIT"));
    let r = Redactor::for_variables(vars);
    assert_eq!(
        r.redact("pw longenough, key short"),
        "pw [REDACTED], key short"
    );
}

#[test]
fn redacting_twice_changes_nothing_more() {
    let text =
        "GITHUB_TOKEN=ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 Authorization: Bearer abcdefgh12";
    let once = redact(text);
    assert_eq!(redact(&once), once);
}

/// A secret of each shape the patterns know, from random parts.
fn shaped_secret() -> impl Strategy<Value = String> {
    prop_oneof![
        ("gh[pousr]_", "[A-Za-z0-9]{36}").prop_map(|(p, t)| format!("{p}{t}")),
        "github_pat_[A-Za-z0-9_]{40,82}",
        "xox[abposr]-[0-9]{10,13}-[A-Za-z0-9]{10,24}",
        "(AKIA|ASIA)[A-Z0-9]{16}",
        "npm_[A-Za-z0-9]{36}",
        "glpat-[A-Za-z0-9_-]{20}",
        "pypi-AgE[A-Za-z0-9_-]{40,80}",
        "eyJ[A-Za-z0-9_-]{10,30}\\.eyJ[A-Za-z0-9_-]{10,30}\\.[A-Za-z0-9_-]{10,43}",
    ]
}

/// Log text around a secret: printable words, punctuation, line breaks, colour escapes.
fn log_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[ -~]{0,12}",
            Just("\n".to_owned()),
            Just("\x1b[31m".to_owned()),
            Just("\r\n".to_owned()),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn a_secret_of_a_known_shape_never_survives(
        before in log_text(),
        secret in shaped_secret(),
        after in log_text(),
    ) {
        let out = redact(&format!("{before}{secret}{after}"));
        prop_assert!(!out.contains(&secret), "{out:?}");
    }

    #[test]
    fn an_exact_value_never_survives(
        before in log_text(),
        value in "[!-~]{8,40}",
        after in log_text(),
        repeats in 1usize..3,
    ) {
        let r = Redactor::new([value.clone()]);
        let text = format!("{before}{}{after}", [value.as_str()].repeat(repeats).join(" "));
        let out = r.redact(&text);
        prop_assert!(!out.contains(&value), "{out:?}");
    }

    #[test]
    fn a_password_in_a_url_never_survives(
        user in "[a-z][a-z0-9-]{0,10}",
        password in "[A-Za-z0-9]{8,30}",
        before in log_text(),
    ) {
        let out = redact(&format!("{before} https://{user}:{password}@example.com/x"));
        prop_assert!(!out.contains(&format!(":{password}@")), "{out:?}");
    }
}
