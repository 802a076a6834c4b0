//! Unit tests of the mapping grammar.

use super::*;

pub(super) const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
pub(super) const PREFIX: &str = "/prx/stag/Spire/";

pub(super) fn facts() -> BuildFacts {
    BuildFacts {
        repository: "PRX/My-App".into(),
        commit: SHA.into(),
        architecture: Some(Architecture::X86_64),
    }
}

pub(super) fn ecr() -> String {
    format!("github/prx/my-app:{SHA}-x86_64")
}

pub(super) fn s3(label: &str) -> String {
    format!("GitHub/PRX/My-App/{SHA}/{label}.zip")
}

/// Every parameter under the default, `strict` value checks.
fn strict(_: &ParameterName) -> ValueChecks {
    ValueChecks::Strict
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn published(items: &[Item]) -> Vec<(&str, &str)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Publish(t) => Some((t.parameter.as_str(), t.value.as_str())),
            Item::Skip(_) => None,
        })
        .collect()
}

fn skipped(items: &[Item]) -> Vec<(RejectReason, &str, &str)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Skip(r) => Some((r.reason, r.parameter.as_str(), r.mapping.as_str())),
            Item::Publish(_) => None,
        })
        .collect()
}

#[test]
fn reference_example_with_two_mappings() {
    // The reference's example: one label, two names; a second label, one name.
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "MY_APP=/prx/stag/Spire/MyApp/pkg/docker-image-tag,/other/name;MY_DB=/prx/stag/Spire/Db/pkg/docker-image-tag",
        ),
        ("MY_APP", &ecr()),
        ("MY_DB", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    assert_eq!(
        published(&items),
        vec![
            ("/prx/stag/Spire/MyApp/pkg/docker-image-tag", ecr().as_str()),
            ("/prx/stag/Spire/Db/pkg/docker-image-tag", ecr().as_str()),
        ]
    );
    assert_eq!(
        skipped(&items),
        vec![(
            RejectReason::OutsidePrefix,
            "/other/name",
            "MY_APP=/prx/stag/Spire/MyApp/pkg/docker-image-tag,/other/name"
        )]
    );
}

#[test]
fn ecr_then_s3_in_order() {
    let v = vars(&[
        (
            S3_MAPPING_VARIABLE,
            "LAMBDA_ZIP=/prx/stag/Spire/Fn/api/pkg/s3-object-key",
        ),
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/App/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
        ("LAMBDA_ZIP", &s3("LAMBDA_ZIP")),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let Item::Publish(first) = &items[0] else {
        panic!()
    };
    let Item::Publish(second) = &items[1] else {
        panic!()
    };
    assert_eq!(first.kind, ArtifactKind::EcrImage);
    assert_eq!(second.kind, ArtifactKind::S3Object);
    assert_eq!(second.value, s3("LAMBDA_ZIP"));
    assert_eq!(second.label, "LAMBDA_ZIP");
}

#[test]
fn empty_or_absent_variables_ask_for_nothing() {
    assert!(parse_mappings(&vars(&[]), &facts(), PREFIX, &strict).is_empty());
    let v = vars(&[(ECR_MAPPING_VARIABLE, ""), (S3_MAPPING_VARIABLE, "")]);
    assert!(parse_mappings(&v, &facts(), PREFIX, &strict).is_empty());
    // Empty segments: trailing or doubled `;`.
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            ";APP=/prx/stag/Spire/A/pkg/docker-image-tag;;",
        ),
        ("APP", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    assert_eq!(items.len(), 1);
    assert_eq!(published(&items).len(), 1);
}

#[test]
fn mappings_that_do_not_split_in_two_are_invalid_with_the_raw_text() {
    for (text, needle) in [
        ("APP", "has no `=`"),
        ("APP=/prx/stag/Spire/a=b", "2 `=` signs"),
        ("APP==/prx/stag/Spire/a", "2 `=` signs"),
        ("=/prx/stag/Spire/a", "empty label"),
        ("APP=", "names no parameter"),
        ("APP=,,", "names no parameter"),
    ] {
        let v = vars(&[(ECR_MAPPING_VARIABLE, text), ("APP", &ecr())]);
        let items = parse_mappings(&v, &facts(), PREFIX, &strict);
        let [Item::Skip(r)] = items.as_slice() else {
            panic!("{text}: {items:?}")
        };
        assert_eq!(r.reason, RejectReason::InvalidMapping, "{text}");
        assert_eq!(r.mapping, text);
        assert!(r.detail.contains(needle), "{text}: {}", r.detail);
    }
}

#[test]
fn one_bad_mapping_does_not_spoil_the_others() {
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "BROKEN;APP=/prx/stag/Spire/A/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    assert_eq!(
        skipped(&items),
        vec![(RejectReason::InvalidMapping, "", "BROKEN")]
    );
    assert_eq!(published(&items).len(), 1);
}

#[test]
fn missing_or_empty_label_variables() {
    let name = "/prx/stag/Spire/A/pkg/docker-image-tag";
    let v = vars(&[(ECR_MAPPING_VARIABLE, &format!("APP={name}"))]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let [Item::Skip(r)] = items.as_slice() else {
        panic!()
    };
    assert_eq!(r.reason, RejectReason::LabelVariableMissing);
    assert_eq!(r.parameter, name);
    assert!(r.detail.contains("exported-variables"), "{}", r.detail);

    let v = vars(&[(ECR_MAPPING_VARIABLE, &format!("APP={name}")), ("APP", "")]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let [Item::Skip(r)] = items.as_slice() else {
        panic!()
    };
    assert_eq!(r.reason, RejectReason::LabelVariableMissing);
    assert!(r.detail.contains("empty"), "{}", r.detail);
}

#[test]
fn stray_spaces_get_a_precise_reason() {
    // After a comma: the original's prefix test failed silently.
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/A/pkg/docker-image-tag, /prx/stag/Spire/B/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    assert_eq!(published(&items).len(), 1);
    let Item::Skip(r) = &items[1] else { panic!() };
    assert_eq!(r.reason, RejectReason::InvalidParameterName);
    assert!(r.detail.contains("space at byte 0"), "{}", r.detail);

    // After a semicolon: the label gains a space.
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/A/pkg/docker-image-tag; DB=/prx/stag/Spire/B/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
        ("DB", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let Item::Skip(r) = &items[1] else { panic!() };
    assert_eq!(r.reason, RejectReason::LabelVariableMissing);
    assert_eq!(r.label, " DB");
    assert!(r.detail.contains("contains a space"), "{}", r.detail);

    // Around `=`.
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP = /prx/stag/Spire/A/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let Item::Skip(r) = &items[0] else { panic!() };
    assert_eq!(r.reason, RejectReason::InvalidParameterName);
}

#[test]
fn a_name_repeated_is_written_once_with_the_last_value() {
    let name = "/prx/stag/Spire/A/pkg/docker-image-tag";
    let v = vars(&[
        (ECR_MAPPING_VARIABLE, &format!("APP={name};WEB={name}")),
        ("APP", &ecr()),
        ("WEB", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    assert_eq!(published(&items), vec![(name, ecr().as_str())]);
    let Item::Skip(r) = &items[0] else { panic!() };
    assert_eq!(r.label, "APP");
    assert!(r.detail.contains("later mapping"));
}

#[test]
fn wrong_values_are_skipped_with_invalid_value() {
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/A/pkg/docker-image-tag",
        ),
        ("APP", "latest"),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let [Item::Skip(r)] = items.as_slice() else {
        panic!()
    };
    assert_eq!(r.reason, RejectReason::InvalidValue);
    assert_eq!(r.value, "latest");
}

#[test]
fn configured_prefix_is_honoured() {
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/A/pkg/docker-image-tag,/team/x/pkg/docker-image-tag",
        ),
        ("APP", &ecr()),
    ]);
    let items = parse_mappings(&v, &facts(), "/team/", &strict);
    assert_eq!(
        published(&items),
        vec![("/team/x/pkg/docker-image-tag", ecr().as_str())]
    );
}

proptest::proptest! {
    #[test]
    fn never_panics(
        ecr_text in "[A-Z_=;,/ a-z.\\-]{0,80}",
        s3_text in "\\PC{0,60}",
        label_value in "\\PC{0,80}",
    ) {
        let v = vars(&[
            (ECR_MAPPING_VARIABLE, &ecr_text),
            (S3_MAPPING_VARIABLE, &s3_text),
            ("APP", &label_value),
            ("A", &ecr()),
        ]);
        let items = parse_mappings(&v, &facts(), PREFIX, &strict);
        for item in items {
            if let Item::Publish(t) = item {
                proptest::prop_assert!(t.parameter.as_str().starts_with(PREFIX));
                proptest::prop_assert!(check_parameter_name(t.parameter.as_str(), PREFIX).is_ok());
            }
        }
    }

    #[test]
    fn accepts_everything_the_original_wrote_with_a_good_value(
        names in proptest::collection::vec("[A-Za-z0-9_.-]{1,12}(/[A-Za-z0-9_.-]{1,12}){0,3}", 1..4),
    ) {
        // The original wrote every name under the prefix; so do we (valid names, good value).
        let full: Vec<String> = names.iter().map(|n| format!("{PREFIX}{n}")).collect();
        let v = vars(&[(ECR_MAPPING_VARIABLE, &format!("APP={}", full.join(","))), ("APP", &ecr())]);
        let items = parse_mappings(&v, &facts(), PREFIX, &strict);
        let mut expected: Vec<&str> = vec![];
        for n in &full {
            if !expected.contains(&n.as_str()) { expected.push(n); }
        }
        let got: Vec<&str> = published(&items).into_iter().map(|(n, _)| n).collect();
        // Duplicates keep the last occurrence.
        let mut expected_sorted = expected.clone(); expected_sorted.sort_unstable();
        let mut got_sorted = got.clone(); got_sorted.sort_unstable();
        proptest::prop_assert_eq!(got_sorted, expected_sorted);
    }
}

#[test]
fn strict_parameters_refuse_custom_values_naming_the_check() {
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "APP=/prx/stag/Spire/App/pkg/docker-image-tag",
        ),
        ("APP", "my-custom-value:v1"),
        (
            S3_MAPPING_VARIABLE,
            "ZIP=/prx/stag/Spire/Fn/pkg/s3-object-key",
        ),
        ("ZIP", "custom/key.zip"),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &strict);
    let rejected: Vec<(Check, &str)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Skip(r) if r.reason == RejectReason::InvalidValue => {
                Some((r.check, r.detail.as_str()))
            }
            _ => None,
        })
        .collect();
    let [(ecr_check, ecr_detail), (s3_check, s3_detail)] = rejected[..] else {
        panic!("{items:#?}")
    };
    assert_eq!(ecr_check, Check::StrictEcrValue);
    assert!(
        ecr_detail.starts_with(
            "strict value check (ECR image tag): repository \"my-custom-value\" is not a lower-case github/<owner>/<repo>"
        ),
        "{ecr_detail}"
    );
    assert_eq!(s3_check, Check::StrictS3Value);
    assert!(
        s3_detail.starts_with("strict value check (S3 object key): "),
        "{s3_detail}"
    );
}

#[test]
fn trusted_parameters_take_any_value_ssm_accepts() {
    let trusted_legacy = |p: &ParameterName| {
        if p.as_str().starts_with("/prx/stag/Spire/Legacy/") {
            ValueChecks::Trusted
        } else {
            ValueChecks::Strict
        }
    };
    let long = "x".repeat(MAX_VALUE_BYTES + 1);
    // Another commit's image: trusted, but it still names an artifact that must exist.
    let old_image = format!("github/prx/my-app:{}-x86_64", "f".repeat(40));
    let v = vars(&[
        (
            ECR_MAPPING_VARIABLE,
            "CUSTOM=/prx/stag/Spire/Legacy/a,/prx/stag/Spire/App/a;HELPER=/prx/stag/Spire/Legacy/b;LONG=/prx/stag/Spire/Legacy/c;NESTED=/prx/stag/Spire/Legacy/d;OLD=/prx/stag/Spire/Legacy/e",
        ),
        ("CUSTOM", "my-custom-value:v1"),
        ("HELPER", &ecr()),
        ("OLD", &old_image),
        ("LONG", &long),
        ("NESTED", "{{ssm:/prx/other}}"),
    ]);
    let items = parse_mappings(&v, &facts(), PREFIX, &trusted_legacy);
    let published: Vec<(&str, &str, ValueShape)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Publish(t) => Some((t.parameter.as_str(), t.value.as_str(), t.shape)),
            Item::Skip(_) => None,
        })
        .collect();
    assert_eq!(
        published,
        vec![
            (
                "/prx/stag/Spire/Legacy/a",
                "my-custom-value:v1",
                ValueShape::Custom
            ),
            (
                "/prx/stag/Spire/Legacy/b",
                ecr().as_str(),
                ValueShape::Helper
            ),
            (
                "/prx/stag/Spire/Legacy/e",
                old_image.as_str(),
                ValueShape::Helper
            ),
        ]
    );
    let refused: Vec<(&str, Check, &str)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Skip(r) => Some((r.parameter.as_str(), r.check, r.detail.as_str())),
            Item::Publish(_) => None,
        })
        .collect();
    let [
        (strict_name, strict_check, _),
        (long_name, long_check, long_detail),
        (nested_name, nested_check, nested_detail),
    ] = refused[..]
    else {
        panic!("{refused:#?}")
    };
    // The same value under a strict parameter is refused.
    assert_eq!(
        (strict_name, strict_check),
        ("/prx/stag/Spire/App/a", Check::StrictEcrValue)
    );
    assert_eq!(
        (long_name, long_check),
        ("/prx/stag/Spire/Legacy/c", Check::SsmValueRules)
    );
    assert!(
        long_detail.starts_with("SSM value rules: the value is 4097 bytes"),
        "{long_detail}"
    );
    assert_eq!(
        (nested_name, nested_check),
        ("/prx/stag/Spire/Legacy/d", Check::SsmValueRules)
    );
    assert!(
        nested_detail.contains("nest a parameter"),
        "{nested_detail}"
    );
}

#[test]
fn ssm_value_rules() {
    for ok in [
        "x",
        "my-custom-value:v1",
        "{single}",
        "{{ unclosed",
        "closed }} first {{",
        &"é".repeat(MAX_VALUE_BYTES / 2),
        &"a".repeat(MAX_VALUE_BYTES),
    ] {
        assert_eq!(check_ssm_value(ok), Ok(()), "{ok}");
    }
    for (bad, needle) in [
        ("", "empty"),
        (&"a".repeat(MAX_VALUE_BYTES + 1), "4097 bytes"),
        // Counted in bytes: 2049 two-byte characters are 4098 bytes.
        (&"é".repeat(MAX_VALUE_BYTES / 2 + 1), "4098 bytes"),
        ("a{{b}}c", "\"{{b}}\" at byte 1"),
        ("{{ssm:/x/y}}", "nest a parameter"),
        ("{{}}", "nest a parameter"),
    ] {
        let err = check_ssm_value(bad).unwrap_err();
        assert!(err.contains(needle), "{bad:.20}: {err}");
    }
}
