//! The mapping grammar of `PRX_SPIRE_ECR_PKG_PARAMETERS` / `PRX_SPIRE_S3_PKG_PARAMETERS`
//! (`LABEL=/p1,/p2;LABEL2=/p3`); names and values are checked in [`checks`], values under each
//! parameter's [`ValueChecks`]. Pure: no I/O.
//!
//! Compatible with the original updater: mappings split on `;`, each split on `=` and used only
//! when that yields exactly two parts, names split on `,`, nothing trimmed, the value is the
//! merged variable named by the label. Every parameter the original would have written is a
//! [`Target`] here; everything it silently ignored is a [`Rejected`] with a precise reason.

use std::collections::HashMap;
use std::fmt;

use prx_ci_shared::codebuild::env;
use prx_ci_shared::domain::Architecture;

use crate::apps::ValueChecks;
use crate::check::Check;

/// The variable holding ECR mappings.
pub const ECR_MAPPING_VARIABLE: &str = env::SPIRE_ECR_PKG_PARAMETERS;
/// The variable holding S3 mappings.
pub const S3_MAPPING_VARIABLE: &str = env::SPIRE_S3_PKG_PARAMETERS;

pub use prx_ci_shared::ownership::parameter_name::{MAX_HIERARCHY_LEVELS, MAX_NAME_LENGTH};

mod checks;

pub use checks::{
    MAX_VALUE_BYTES, ValueShape, check_parameter_name, check_ssm_value, check_value,
    check_value_under,
};

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
    pub fn parse(name: &str, prefix: &str) -> Result<Self, (RejectReason, Check, String)> {
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
    /// The helper's value (its artifact is checked) or a `trusted` app's own.
    pub shape: ValueShape,
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
    /// The check that refused it (for `INVALID_VALUE`, which value check).
    pub check: Check,
    /// What is wrong; a value check's detail starts with its name.
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
/// variables; `value_checks` says how each parameter's value is checked. A parameter named more
/// than once is written once, with the last mapping's value (the original wrote each in turn,
/// so the last one stood); the earlier ones are rejected.
pub fn parse_mappings(
    variables: &HashMap<String, String>,
    build: &BuildFacts,
    prefix: &str,
    value_checks: &dyn Fn(&ParameterName) -> ValueChecks,
) -> Vec<Item> {
    let mut items = Vec::new();
    for kind in [ArtifactKind::EcrImage, ArtifactKind::S3Object] {
        if let Some(text) = variables.get(kind.mapping_variable())
            && !text.is_empty()
        {
            items.extend(parse_variable(
                kind,
                text,
                variables,
                build,
                prefix,
                value_checks,
            ));
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
                    check: Check::MappingGrammar,
                    detail:
                        "the parameter is named again by a later mapping; the later one is used"
                            .to_owned(),
                })
            }
            other => other,
        })
        .collect()
}

/// Parses one mapping variable's text (see [`parse_mappings`]).
pub fn parse_variable(
    kind: ArtifactKind,
    text: &str,
    variables: &HashMap<String, String>,
    build: &BuildFacts,
    prefix: &str,
    value_checks: &dyn Fn(&ParameterName) -> ValueChecks,
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
                check: Check::MappingGrammar,
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
            let reject = |reason: RejectReason, check: Check, detail: String| {
                Item::Skip(Rejected {
                    kind,
                    label: (*label).to_owned(),
                    parameter: name.to_owned(),
                    value: value.to_owned(),
                    mapping: mapping.to_owned(),
                    reason,
                    check,
                    detail: check.detail(&detail),
                })
            };
            let parameter = match ParameterName::parse(name, prefix) {
                Ok(p) => p,
                Err((reason, check, detail)) => {
                    items.push(reject(reason, check, detail));
                    continue;
                }
            };
            if value.is_empty() {
                items.push(reject(
                    RejectReason::LabelVariableMissing,
                    Check::MappingGrammar,
                    missing_label_detail(label, variables.contains_key(*label)),
                ));
                continue;
            }
            let shape = match check_value_under(value_checks(&parameter), kind, label, value, build)
            {
                Ok(shape) => shape,
                Err((check, detail)) => {
                    items.push(reject(RejectReason::InvalidValue, check, detail));
                    continue;
                }
            };
            items.push(Item::Publish(Target {
                kind,
                label: (*label).to_owned(),
                parameter,
                value: value.to_owned(),
                mapping: mapping.to_owned(),
                shape,
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
mod tests;
