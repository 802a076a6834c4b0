//! What a mapped parameter's name and value must look like: SSM's name rules under the prefix;
//! under `strict` value checks the image tag or object key shapes of the build's own artifacts,
//! under `trusted` ones whatever SSM accepts as a `String` value. Pure: no I/O.

use prx_ci_shared::domain::Architecture;
use prx_ci_shared::ownership::parameter_name::{self, NameProblem};

use super::{ArtifactKind, BuildFacts, RejectReason};
use crate::apps::ValueChecks;
use crate::check::Check;

/// The longest `String` value a Standard-tier parameter holds (SSM: "Standard tier parameters
/// support a maximum parameter value of 4096 characters"). Counted in UTF-8 bytes, never fewer
/// than characters, so nothing SSM would refuse gets through.
pub const MAX_VALUE_BYTES: usize = 4096;

/// What a value that passed the value checks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueShape {
    /// A value of the post-build helper's shape (this build's; under `trusted` checks also
    /// another commit's or repository's): its artifact is checked before the write.
    Helper,
    /// A `trusted` app's own value: written as it is (it names no artifact to check).
    Custom,
}

/// Checks `value` under `mode`: the helper's shape for this build ([`check_value`]) passes
/// either way (and is [`ValueShape::Helper`]); otherwise `strict` refuses it, naming the strict
/// check, and `trusted` accepts it if SSM would ([`check_ssm_value`]): as
/// [`ValueShape::Helper`] when it still has the helper's shape for some other build (so an
/// image or archive that does not exist is never written), else as [`ValueShape::Custom`].
pub fn check_value_under(
    mode: ValueChecks,
    kind: ArtifactKind,
    label: &str,
    value: &str,
    build: &BuildFacts,
) -> Result<ValueShape, (Check, String)> {
    match check_value(kind, label, value, build) {
        Ok(()) => Ok(ValueShape::Helper),
        Err(detail) => match mode {
            ValueChecks::Strict => Err((Check::strict(kind), detail)),
            ValueChecks::Trusted => {
                check_ssm_value(value).map_err(|detail| (Check::SsmValueRules, detail))?;
                let any_build = BuildFacts::default();
                Ok(match check_value(kind, label, value, &any_build) {
                    Ok(()) => ValueShape::Helper,
                    Err(_) => ValueShape::Custom,
                })
            }
        },
    }
}

/// What `PutParameter` accepts as the value of a Standard-tier `String` parameter: not empty,
/// at most [`MAX_VALUE_BYTES`], and no `{{...}}` (SSM refuses values that nest another
/// parameter). Nothing else is checked: no data type or allowed pattern is set.
pub fn check_ssm_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty; SSM refuses an empty value".to_owned());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes; a Standard-tier SSM parameter holds at most {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    if let Some(open) = value.find("{{")
        && let Some(close) = value[open + 2..].find("}}")
    {
        let end = open + 2 + close + 2;
        let quoted: String = value[open..end].chars().take(60).collect();
        return Err(format!(
            "the value contains {quoted:?} at byte {open}; SSM refuses values that nest a parameter (`{{{{...}}}}`)"
        ));
    }
    Ok(())
}

/// SSM's naming rules plus the configured prefix
/// ([`prx_ci_shared::ownership::check_parameter_name`]), as a skip reason.
pub fn check_parameter_name(name: &str, prefix: &str) -> Result<(), (RejectReason, Check, String)> {
    parameter_name::check_parameter_name(name, prefix).map_err(|(problem, detail)| {
        let (reason, check) = match problem {
            NameProblem::OutsidePrefix => (RejectReason::OutsidePrefix, Check::ParameterPrefix),
            NameProblem::Invalid => (RejectReason::InvalidParameterName, Check::SsmNameRules),
        };
        (reason, check, detail)
    })
}

/// The value shape Spire CD parses (see the reference: "What Spire CD expects from CI").
pub fn check_value(
    kind: ArtifactKind,
    label: &str,
    value: &str,
    build: &BuildFacts,
) -> Result<(), String> {
    match kind {
        ArtifactKind::EcrImage => check_ecr_value(label, value, build),
        ArtifactKind::S3Object => check_s3_value(label, value, build),
    }
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The tags the post-build helper gives an image: `<sha>-<arch>` when the build publishes one
/// image (the original's tag), `<sha>-<arch>-<label in lower case>` when it publishes several.
fn check_ecr_value(label: &str, value: &str, build: &BuildFacts) -> Result<(), String> {
    const SHAPE: &str =
        "expected github/<owner>/<repo>:<sha>-<arch>[-<label in lower case>] (no registry host)";
    let Some((repository, tag)) = value.split_once(':') else {
        return Err(format!("{value:?} has no `:` before the tag; {SHAPE}"));
    };
    let segments: Vec<&str> = repository.split('/').collect();
    if segments.len() != 3
        || segments[0] != "github"
        || segments.iter().any(|s| s.is_empty())
        || repository
            .bytes()
            .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)))
    {
        return Err(format!(
            "repository {repository:?} is not a lower-case github/<owner>/<repo>; {SHAPE}"
        ));
    }
    if !build.repository.is_empty() {
        let expected = format!("github/{}", build.repository.to_ascii_lowercase());
        if repository != expected {
            return Err(format!(
                "repository {repository:?} is not this build's {expected:?}"
            ));
        }
    }
    let (sha, arch) = match tag.split_once('-') {
        Some((sha, arch)) => (sha, arch),
        None => (tag, ""),
    };
    if !is_sha(sha) {
        return Err(format!(
            "tag {tag:?} does not start with a 40-hex commit SHA; {SHAPE}"
        ));
    }
    if !build.commit.is_empty() && !sha.eq_ignore_ascii_case(&build.commit) {
        return Err(format!(
            "tag {tag:?} is not for this build's commit {}",
            build.commit
        ));
    }
    // The architecture is one of two fixed words, so the rest of the tag after it can only be
    // the helper's label suffix.
    let (arch, suffix) = match arch.split_once('-') {
        Some((arch, suffix)) => (arch, Some(suffix)),
        None => (arch, None),
    };
    let Some(arch) = Architecture::parse(arch) else {
        return Err(format!(
            "tag {tag:?} does not continue with -x86_64 or -aarch64 after the commit; {SHAPE}"
        ));
    };
    if let Some(suffix) = suffix
        && suffix != label.to_ascii_lowercase()
    {
        return Err(format!(
            "tag {tag:?} ends in -{suffix}, but the helper tags label {label}'s image -{}; {SHAPE}",
            label.to_ascii_lowercase()
        ));
    }
    if let Some(expected) = build.architecture
        && arch != expected
    {
        return Err(format!(
            "tag {tag:?} is for {arch}, but this build ran on {expected}"
        ));
    }
    Ok(())
}

fn check_s3_value(label: &str, value: &str, build: &BuildFacts) -> Result<(), String> {
    const SHAPE: &str = "expected GitHub/<Owner>/<Repo>/<sha>/<LABEL>.zip (an object key)";
    let segments: Vec<&str> = value.split('/').collect();
    let [root, owner, repo, sha, file] = segments.as_slice() else {
        return Err(format!(
            "{value:?} does not have five `/`-separated parts; {SHAPE}"
        ));
    };
    if *root != "GitHub" || owner.is_empty() || repo.is_empty() {
        return Err(format!(
            "{value:?} does not start with GitHub/<Owner>/<Repo>/; {SHAPE}"
        ));
    }
    if !build.repository.is_empty() {
        let actual = format!("{owner}/{repo}");
        if !actual.eq_ignore_ascii_case(&build.repository) {
            return Err(format!(
                "key {value:?} is for {actual}, not this build's {}",
                build.repository
            ));
        }
    }
    if !is_sha(sha) {
        return Err(format!(
            "{value:?}: {sha:?} is not a 40-hex commit SHA; {SHAPE}"
        ));
    }
    if !build.commit.is_empty() && !sha.eq_ignore_ascii_case(&build.commit) {
        return Err(format!(
            "key {value:?} is not for this build's commit {}",
            build.commit
        ));
    }
    if *file != format!("{label}.zip") {
        return Err(format!(
            "key {value:?} does not end in /{label}.zip; {SHAPE}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::tests::{PREFIX, SHA, ecr, facts, s3};

    #[test]
    fn ssm_naming_rules() {
        let ok = [
            "/prx/stag/Spire/MyApp/pkg/docker-image-tag",
            "/prx/stag/Spire/Fn/sub/pkg/s3-object-key",
            "/prx/stag/Spire/a_b.c-d/e",
        ];
        for name in ok {
            assert_eq!(check_parameter_name(name, PREFIX), Ok(()), "{name}");
        }
        let long = format!("/prx/stag/Spire/{}", "a".repeat(1000));
        let deep = format!("/prx/stag/Spire/{}", ["x"; 13].join("/"));
        let cases = [
            (
                "/prx/stag/Spire/a b",
                RejectReason::InvalidParameterName,
                "space",
            ),
            (
                "/prx/stag/Spire/a\tb",
                RejectReason::InvalidParameterName,
                "space",
            ),
            (
                "/prx/stag/Spire/a$b",
                RejectReason::InvalidParameterName,
                "'$'",
            ),
            (
                "/prx/stag/Spire/é",
                RejectReason::InvalidParameterName,
                "'é'",
            ),
            (
                "/prx/stag/Spire/a//b",
                RejectReason::InvalidParameterName,
                "empty hierarchy",
            ),
            (
                "/prx/stag/Spire/a/",
                RejectReason::InvalidParameterName,
                "empty hierarchy",
            ),
            (
                "/prx/stag/Spire/",
                RejectReason::InvalidParameterName,
                "empty hierarchy",
            ),
            (long.as_str(), RejectReason::InvalidParameterName, "1011"),
            (
                deep.as_str(),
                RejectReason::InvalidParameterName,
                "16 hierarchy levels",
            ),
            ("/prx/prod/Spire/a", RejectReason::OutsidePrefix, "outside"),
            ("prx/stag/Spire/a", RejectReason::OutsidePrefix, "outside"),
            ("/PRX/stag/Spire/a", RejectReason::OutsidePrefix, "outside"),
        ];
        for (name, reason, needle) in cases {
            let (r, _, detail) = check_parameter_name(name, PREFIX).unwrap_err();
            assert_eq!(r, reason, "{name}");
            assert!(detail.contains(needle), "{name}: {detail}");
        }
        // Reserved prefixes and the leading-slash rule (with a permissive configured prefix).
        for name in ["/aws/x", "/SSM/x", "awsParam", "ssm-param"] {
            let (r, _, detail) = check_parameter_name(name, "").unwrap_err();
            assert_eq!(r, RejectReason::InvalidParameterName, "{name}");
            assert!(detail.contains("reserved"), "{name}: {detail}");
        }
        let (_, _, detail) = check_parameter_name("a/b", "").unwrap_err();
        assert!(detail.contains("does not start with `/`"), "{detail}");
        assert_eq!(check_parameter_name("plain", ""), Ok(()));
        assert_eq!(
            check_parameter_name(&format!("/{}", ["x"; 15].join("/")), ""),
            Ok(())
        );
    }

    #[test]
    fn ecr_value_shapes() {
        let f = facts();
        assert_eq!(
            check_value(ArtifactKind::EcrImage, "APP", &ecr(), &f),
            Ok(())
        );
        let upper = format!("github/prx/my-app:{}-x86_64", SHA.to_uppercase());
        assert_eq!(
            check_value(ArtifactKind::EcrImage, "APP", &upper, &f),
            Ok(())
        );
        let other_sha = "f".repeat(40);
        let cases = [
            (
                format!("123.dkr.ecr.us-east-1.amazonaws.com/github/prx/my-app:{SHA}-x86_64"),
                "lower-case github",
            ),
            (
                format!("GitHub/PRX/My-App:{SHA}-x86_64"),
                "lower-case github",
            ),
            (format!("github/prx/my-app{SHA}"), "no `:`"),
            (format!("github/prx/other:{SHA}-x86_64"), "not this build's"),
            (
                format!("github/prx/my-app:{other_sha}-x86_64"),
                "not for this build's commit",
            ),
            (
                format!("github/prx/my-app:{SHA}-aarch64"),
                "this build ran on x86_64",
            ),
            (format!("github/prx/my-app:{SHA}"), "does not continue with"),
            (
                format!("github/prx/my-app:{SHA}-"),
                "does not continue with",
            ),
            (
                format!("github/prx/my-app:{SHA}-arm-app"),
                "does not continue with",
            ),
            (
                format!("github/prx/my-app:{SHA}-x86_64-worker"),
                "tags label APP's image -app",
            ),
            (format!("github/prx/my-app:{SHA}-x86_64-"), "ends in -,"),
            (
                format!("github/prx/my-app:{SHA}-x86_64-APP"),
                "ends in -APP",
            ),
            (format!("github/prx/my-app:release-{SHA}-x86_64"), "40-hex"),
            ("github/prx/my-app:abc-x86_64".to_owned(), "40-hex"),
        ];
        for (value, needle) in cases {
            let err = check_value(ArtifactKind::EcrImage, "APP", &value, &f).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
        // Several labelled images: the helper suffixes each tag with its label in lower case.
        for (label, suffix) in [("APP", "app"), ("Worker_Image2", "worker_image2")] {
            let several = format!("github/prx/my-app:{SHA}-x86_64-{suffix}");
            assert_eq!(
                check_value(ArtifactKind::EcrImage, label, &several, &f),
                Ok(()),
                "{several}"
            );
        }
        // Unknown facts are not checked.
        let v = format!("github/x/y:{other_sha}-aarch64");
        assert_eq!(
            check_value(ArtifactKind::EcrImage, "APP", &v, &BuildFacts::default()),
            Ok(())
        );
    }

    #[test]
    fn s3_value_shapes() {
        let f = facts();
        assert_eq!(
            check_value(ArtifactKind::S3Object, "ZIP", &s3("ZIP"), &f),
            Ok(())
        );
        let cases = [
            (format!("GitHub/PRX/My-App/{SHA}.zip"), "five"),
            (
                format!("s3://bucket/GitHub/PRX/My-App/{SHA}/ZIP.zip"),
                "five",
            ),
            (
                format!("github/PRX/My-App/{SHA}/ZIP.zip"),
                "does not start with GitHub",
            ),
            (
                format!("GitHub/PRX/Other/{SHA}/ZIP.zip"),
                "not this build's",
            ),
            (
                format!("GitHub/PRX/My-App/{}/ZIP.zip", "a".repeat(40)),
                "not for this build's commit",
            ),
            ("GitHub/PRX/My-App/abc/ZIP.zip".to_owned(), "40-hex"),
            (
                format!("GitHub/PRX/My-App/{SHA}/OTHER.zip"),
                "does not end in /ZIP.zip",
            ),
            (
                format!("GitHub/PRX/My-App/{SHA}/ZIP"),
                "does not end in /ZIP.zip",
            ),
        ];
        for (value, needle) in cases {
            let err = check_value(ArtifactKind::S3Object, "ZIP", &value, &f).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}
