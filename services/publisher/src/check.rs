//! The checks that can refuse a publish, by name: every `PublishSkipped` carries the one that
//! refused it (`check`), and a value check's detail starts with its name. Pure: no I/O.

use std::fmt;

use prx_ci_proto::v1::PublishSkipReason;

use crate::mapping::ArtifactKind;

/// A check that refused a parameter (or a whole build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// `PRX_CI_PUBLISH` and `PRX_CI_PRERELEASE` (`PUBLISHING_DISABLED`, `PRERELEASE`).
    PublishGate,
    /// What the build may decide for itself (`FORK`, `UNTRUSTED_OVERRIDE`).
    TrustRules,
    /// A build that cannot be placed in push order (`UNORDERED`).
    PushOrder,
    /// The `LABEL=/name,...` grammar and its label variable (`INVALID_MAPPING`,
    /// `LABEL_VARIABLE_MISSING`).
    MappingGrammar,
    /// `[publisher] parameter_prefix` (`OUTSIDE_PREFIX`).
    ParameterPrefix,
    /// SSM's parameter name rules (`INVALID_PARAMETER_NAME`).
    SsmNameRules,
    /// The helper's ECR value shape, for this build (`INVALID_VALUE`, `value_checks = "strict"`).
    StrictEcrValue,
    /// The helper's S3 value shape, for this build (`INVALID_VALUE`, `value_checks = "strict"`).
    StrictS3Value,
    /// What SSM accepts as a `String` value (`INVALID_VALUE`, `value_checks = "trusted"`).
    SsmValueRules,
    /// Parameter ownership (`NOT_OWNER`).
    Ownership,
    /// The image or object must exist (`ARTIFACT_MISSING`).
    Artifact,
    /// The per-parameter ordering fence (`SUPERSEDED`, `NOT_PRIMARY_ARCHITECTURE`,
    /// `ALREADY_PUBLISHED`).
    OrderFence,
}

impl Check {
    /// The name people read (`PublishSkipped.check`).
    pub fn name(self) -> &'static str {
        match self {
            Self::PublishGate => "publish gate",
            Self::TrustRules => "trust rules",
            Self::PushOrder => "push order",
            Self::MappingGrammar => "mapping grammar",
            Self::ParameterPrefix => "parameter prefix",
            Self::SsmNameRules => "SSM name rules",
            Self::StrictEcrValue => "strict value check (ECR image tag)",
            Self::StrictS3Value => "strict value check (S3 object key)",
            Self::SsmValueRules => "SSM value rules",
            Self::Ownership => "ownership",
            Self::Artifact => "artifact check",
            Self::OrderFence => "order fence",
        }
    }

    /// The strict value check of `kind`.
    pub fn strict(kind: ArtifactKind) -> Self {
        match kind {
            ArtifactKind::EcrImage => Self::StrictEcrValue,
            ArtifactKind::S3Object => Self::StrictS3Value,
        }
    }

    /// The one check that gives `reason`; `None` for `INVALID_VALUE`, which several value
    /// checks give (the refusal carries its own), and for `UNSPECIFIED`.
    pub fn of_reason(reason: PublishSkipReason) -> Option<Self> {
        use PublishSkipReason as R;
        Some(match reason {
            R::PublishingDisabled | R::Prerelease => Self::PublishGate,
            R::Fork | R::UntrustedOverride => Self::TrustRules,
            R::Unordered => Self::PushOrder,
            R::InvalidMapping | R::LabelVariableMissing => Self::MappingGrammar,
            R::OutsidePrefix => Self::ParameterPrefix,
            R::InvalidParameterName => Self::SsmNameRules,
            R::NotOwner => Self::Ownership,
            R::ArtifactMissing => Self::Artifact,
            R::Superseded | R::NotPrimaryArchitecture | R::AlreadyPublished => Self::OrderFence,
            R::InvalidValue | R::Unspecified => return None,
        })
    }

    /// Whether it checks the value (strict shapes, SSM value rules, the artifact): the detail
    /// of such a skip starts with the check's name, so people see which one to look at.
    pub fn checks_the_value(self) -> bool {
        matches!(
            self,
            Self::StrictEcrValue | Self::StrictS3Value | Self::SsmValueRules | Self::Artifact
        )
    }

    /// A skip's detail as reported: a value check's name, then `detail`; others unchanged.
    pub fn detail(self, detail: &str) -> String {
        if self.checks_the_value() && !detail.starts_with(self.name()) {
            format!("{}: {detail}", self.name())
        } else {
            detail.to_owned()
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_but_invalid_value_has_one_check() {
        // Every reason the proto has, however many it grows to.
        let reasons = (0..).map_while(|value| PublishSkipReason::try_from(value).ok());
        for reason in reasons {
            let check = Check::of_reason(reason);
            let ambiguous = matches!(
                reason,
                PublishSkipReason::InvalidValue | PublishSkipReason::Unspecified
            );
            assert_eq!(check.is_none(), ambiguous, "{reason:?}");
        }
    }

    #[test]
    fn value_checks_start_their_detail_with_their_name() {
        assert_eq!(
            Check::StrictEcrValue.detail("no `:`"),
            "strict value check (ECR image tag): no `:`"
        );
        assert_eq!(
            Check::Artifact.detail("ECR repository x does not exist"),
            "artifact check: ECR repository x does not exist"
        );
        // Once only, and other checks keep their detail as it is.
        let once = Check::SsmValueRules.detail("too long");
        assert_eq!(Check::SsmValueRules.detail(&once), once);
        assert_eq!(
            Check::OrderFence.detail("push 4 published"),
            "push 4 published"
        );
        assert_eq!(
            Check::strict(ArtifactKind::S3Object).name(),
            "strict value check (S3 object key)"
        );
    }
}
