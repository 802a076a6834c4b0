//! The mapping grammar of `PRX_SPIRE_ECR_PKG_PARAMETERS` / `PRX_SPIRE_S3_PKG_PARAMETERS`
//! (`LABEL=/p1,/p2;LABEL2=/p3`); names and values are checked in [`checks`]. Pure: no I/O.
//!
//! Compatible with the original updater: mappings split on `;`, each split on `=` and used only
//! when that yields exactly two parts, names split on `,`, nothing trimmed, the value is the
//! merged variable named by the label. Every parameter the original would have written is a
//! [`Target`] here; everything it silently ignored is a [`Rejected`] with a precise reason.

use std::collections::HashMap;
use std::fmt;

use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::Architecture;

/// The variable holding ECR mappings.
pub const ECR_MAPPING_VARIABLE: &str = env::SPIRE_ECR_PKG_PARAMETERS;
/// The variable holding S3 mappings.
pub const S3_MAPPING_VARIABLE: &str = env::SPIRE_S3_PKG_PARAMETERS;

pub use prx_ci_shared::ownership::parameter_name::{MAX_HIERARCHY_LEVELS, MAX_NAME_LENGTH};

mod checks;

pub use checks::{check_parameter_name, check_value};

/// What a mapping points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// `github/<owner>/<repo>:<sha>-<arch>`.
    EcrImage,
    /// `GitHub/<Owner>/<Repo>/<sha>/<LABEL>.zip`.
    S3Object,
}

impl ArtifactKind {
    pub fn mapping_variable(self) -> &'static str {
        match self {
            Self::EcrImage => ECR_MAPPING_VARIABLE,
            Self::S3Object => S3_MAPPING_VARIABLE,
        }
    }

    pub fn to_proto(self) -> prx_ci_proto::v1::ArtifactKind {
        match self {
            Self::EcrImage => prx_ci_proto::v1::ArtifactKind::EcrImage,
            Self::S3Object => prx_ci_proto::v1::ArtifactKind::S3Object,
        }
    }
}

/// A parameter name that passed SSM's naming rules and the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParameterName(String);

impl ParameterName {
    /// Checks `name` against SSM's rules and `prefix` (see [`check_parameter_name`]).
    pub fn parse(name: &str, prefix: &str) -> Result<Self, (RejectReason, String)> {
        check_parameter_name(name, prefix).map(|()| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParameterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the grammar rejected something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InvalidMapping,
    LabelVariableMissing,
    OutsidePrefix,
    InvalidParameterName,
    InvalidValue,
}

impl RejectReason {
    pub fn to_proto(self) -> prx_ci_proto::v1::PublishSkipReason {
        use prx_ci_proto::v1::PublishSkipReason as R;
        match self {
            Self::InvalidMapping => R::InvalidMapping,
            Self::LabelVariableMissing => R::LabelVariableMissing,
            Self::OutsidePrefix => R::OutsidePrefix,
            Self::InvalidParameterName => R::InvalidParameterName,
            Self::InvalidValue => R::InvalidValue,
        }
    }
}

/// A parameter the build asks to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: ArtifactKind,
    pub label: String,
    pub parameter: ParameterName,
    pub value: String,
    /// The raw mapping text it came from.
    pub mapping: String,
}

/// Something the original would have silently ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: ArtifactKind,
    /// "" when the mapping itself is unusable.
    pub label: String,
    /// "" when the mapping itself is unusable.
    pub parameter: String,
    pub value: String,
    pub mapping: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// One outcome of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Publish(Target),
    Skip(Rejected),
}

/// What the build says about itself, for value checks. Empty/`None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFacts {
    /// `owner/repo` (`PRX_REPO`).
    pub repository: String,
    /// `PRX_COMMIT`.
    pub commit: String,
    /// `PRX_TARGET_ARCHITECTURE`.
    pub architecture: Option<Architecture>,
}

/// Parses both mapping variables (ECR first, then S3, as the original) from the build's merged
/// variables. A parameter named more than once is written once, with the last mapping's value
/// (the original wrote each in turn, so the last one stood); the earlier ones are rejected.
pub fn parse_mappings(
    variables: &HashMap<String, String>,
    build: &BuildFacts,
    prefix: &str,
) -> Vec<Item> {
    let mut items = Vec::new();
    for kind in [ArtifactKind::EcrImage, ArtifactKind::S3Object] {
        if let Some(text) = variables.get(kind.mapping_variable())
            && !text.is_empty()
        {
            items.extend(parse_variable(kind, text, variables, build, prefix));
        }
    }
    // Later mappings win for the same name.
    let mut last: HashMap<String, usize> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        if let Item::Publish(t) = item {
            last.insert(t.parameter.as_str().to_owned(), index);
        }
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Item::Publish(t) if last.get(t.parameter.as_str()) != Some(&index) => {
                Item::Skip(Rejected {
                    kind: t.kind,
                    label: t.label,
                    parameter: t.parameter.0,
                    value: t.value,
                    mapping: t.mapping,
                    reason: RejectReason::InvalidMapping,
                    detail:
                        "the parameter is named again by a later mapping; the later one is used"
                            .to_owned(),
                })
            }
            other => other,
        })
        .collect()
}

/// Parses one mapping variable's text.
pub fn parse_variable(
    kind: ArtifactKind,
    text: &str,
    variables: &HashMap<String, String>,
    build: &BuildFacts,
    prefix: &str,
) -> Vec<Item> {
    let mut items = Vec::new();
    for mapping in text.split(';') {
        // An empty segment (`A=/x;`, `;;`) is not a mapping: nothing was asked.
        if mapping.is_empty() {
            continue;
        }
        let reject_mapping = |detail: String| {
            Item::Skip(Rejected {
                kind,
                label: String::new(),
                parameter: String::new(),
                value: String::new(),
                mapping: mapping.to_owned(),
                reason: RejectReason::InvalidMapping,
                detail,
            })
        };
        let parts: Vec<&str> = mapping.split('=').collect();
        let [label, names] = parts.as_slice() else {
            let detail = if parts.len() == 1 {
                format!("{mapping:?} has no `=`: expected LABEL=/name[,/name...]")
            } else {
                format!(
                    "{mapping:?} has {} `=` signs: expected exactly one, as in LABEL=/name[,/name...]",
                    parts.len() - 1
                )
            };
            items.push(reject_mapping(detail));
            continue;
        };
        if label.is_empty() {
            items.push(reject_mapping(format!(
                "{mapping:?} has an empty label before `=`"
            )));
            continue;
        }
        let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
        if names.is_empty() {
            items.push(reject_mapping(format!(
                "{mapping:?} names no parameter after `=`"
            )));
            continue;
        }
        let value = variables.get(*label).map(String::as_str).unwrap_or("");
        for name in names {
            let reject = |reason: RejectReason, detail: String| {
                Item::Skip(Rejected {
                    kind,
                    label: (*label).to_owned(),
                    parameter: name.to_owned(),
                    value: value.to_owned(),
                    mapping: mapping.to_owned(),
                    reason,
                    detail,
                })
            };
            let parameter = match ParameterName::parse(name, prefix) {
                Ok(p) => p,
                Err((reason, detail)) => {
                    items.push(reject(reason, detail));
                    continue;
                }
            };
            if value.is_empty() {
                items.push(reject(
                    RejectReason::LabelVariableMissing,
                    missing_label_detail(label, variables.contains_key(*label)),
                ));
                continue;
            }
            if let Err(detail) = check_value(kind, label, value, build) {
                items.push(reject(RejectReason::InvalidValue, detail));
                continue;
            }
            items.push(Item::Publish(Target {
                kind,
                label: (*label).to_owned(),
                parameter,
                value: value.to_owned(),
                mapping: mapping.to_owned(),
            }));
        }
    }
    items
}

fn missing_label_detail(label: &str, present_but_empty: bool) -> String {
    if let Some(at) = label.find(|c: char| c.is_whitespace()) {
        return format!(
            "label {label:?} contains a space at byte {at} (mappings are not trimmed), so no variable of that name exists"
        );
    }
    if present_but_empty {
        format!("variable {label} is empty")
    } else {
        format!(
            "variable {label} is missing: the build must export it (list it in env.exported-variables)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const PREFIX: &str = "/prx/stag/Spire/";

    fn facts() -> BuildFacts {
        BuildFacts {
            repository: "PRX/My-App".into(),
            commit: SHA.into(),
            architecture: Some(Architecture::X86_64),
        }
    }

    fn ecr() -> String {
        format!("github/prx/my-app:{SHA}-x86_64")
    }

    fn s3(label: &str) -> String {
        format!("GitHub/PRX/My-App/{SHA}/{label}.zip")
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        assert!(parse_mappings(&vars(&[]), &facts(), PREFIX).is_empty());
        let v = vars(&[(ECR_MAPPING_VARIABLE, ""), (S3_MAPPING_VARIABLE, "")]);
        assert!(parse_mappings(&v, &facts(), PREFIX).is_empty());
        // Empty segments: trailing or doubled `;`.
        let v = vars(&[
            (
                ECR_MAPPING_VARIABLE,
                ";APP=/prx/stag/Spire/A/pkg/docker-image-tag;;",
            ),
            ("APP", &ecr()),
        ]);
        let items = parse_mappings(&v, &facts(), PREFIX);
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
            let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
        let [Item::Skip(r)] = items.as_slice() else {
            panic!()
        };
        assert_eq!(r.reason, RejectReason::LabelVariableMissing);
        assert_eq!(r.parameter, name);
        assert!(r.detail.contains("exported-variables"), "{}", r.detail);

        let v = vars(&[(ECR_MAPPING_VARIABLE, &format!("APP={name}")), ("APP", "")]);
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), PREFIX);
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
        let items = parse_mappings(&v, &facts(), "/team/");
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
            let items = parse_mappings(&v, &facts(), PREFIX);
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
            let items = parse_mappings(&v, &facts(), PREFIX);
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
}
