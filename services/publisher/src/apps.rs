//! Per-app publishing rules (`[publisher.apps]`): how strictly a parameter's value is checked,
//! and which architecture a push publishes when it built several. Pure: no I/O.
//!
//! A key of `[publisher.apps]` is either a parameter name or prefix (starts with `/`; a prefix
//! ends in `/`) or a repository (`owner/repo`, any case). Precedence:
//!
//! - `value_checks`: the longest parameter entry covering the name, then the build's
//!   repository's entry, then `[publisher] value_checks` (default `strict`).
//! - the primary architecture: the buildspec's marker (`BuildRequested.primary_architecture`,
//!   set by the dispatcher), then the repository's entry, then `[publisher]
//!   primary_architecture` (default `x86_64`). It is set per repository only: both builds of one
//!   push must agree on it, and they share the repository, not every parameter.

use std::collections::BTreeMap;
use std::fmt;

use prx_ci_shared::domain::{Architecture, RepoName};
use prx_ci_shared::ownership::parameter_name::check_parameter_name;
use serde::Deserialize;

/// How a parameter's value is checked before it is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueChecks {
    /// Only the post-build helper's value shapes, for this build's repository, commit and
    /// architecture, and the artifact must exist (the default).
    #[default]
    Strict,
    /// Any value SSM accepts for a `String` parameter, as the original wrote whatever the build
    /// exported; a value of the helper's shape (any commit's) still gets its artifact check.
    Trusted,
}

impl ValueChecks {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Trusted => "trusted",
        }
    }
}

impl fmt::Display for ValueChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[publisher.apps."<key>"]` entry, as written in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// `strict` or `trusted`. Default: not set here (the next rule in precedence decides).
    pub value_checks: Option<ValueChecks>,
    /// `x86_64` or `aarch64`; repository entries only. Default: not set here.
    pub primary_architecture: Option<Architecture>,
}

/// A repository's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepositoryRules {
    /// The key as written (for messages).
    key: String,
    value_checks: Option<ValueChecks>,
    primary_architecture: Option<Architecture>,
}

/// The validated `[publisher.apps]` table with the section's global defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRules {
    default_value_checks: ValueChecks,
    default_primary: Architecture,
    /// Parameter names and prefixes, longest first (the first that covers a name decides).
    parameters: Vec<(String, ValueChecks)>,
    /// By lower-cased `owner/repo` (repositories compare case-insensitively).
    repositories: BTreeMap<String, RepositoryRules>,
}

impl AppRules {
    /// The global defaults alone (no table).
    pub fn new(default_value_checks: ValueChecks, default_primary: Architecture) -> Self {
        Self {
            default_value_checks,
            default_primary,
            parameters: Vec::new(),
            repositories: BTreeMap::new(),
        }
    }

    /// Validates `apps` against `parameter_prefix`: a key is a parameter name or a prefix
    /// ending in `/` under the prefix, or `owner/repo` (one entry per repository, in any case);
    /// every entry sets something; `primary_architecture` only on repositories.
    pub fn parse(
        apps: &BTreeMap<String, AppConfig>,
        parameter_prefix: &str,
        default_value_checks: ValueChecks,
        default_primary: Architecture,
    ) -> Result<Self, String> {
        let mut rules = Self::new(default_value_checks, default_primary);
        for (key, app) in apps {
            if app.value_checks.is_none() && app.primary_architecture.is_none() {
                return Err(format!(
                    "apps: {key:?} sets nothing: give it value_checks (\"strict\" or \"trusted\") or primary_architecture"
                ));
            }
            if key.starts_with('/') {
                // A prefix must read as a valid name once one level is added below it.
                let probe = if key.ends_with('/') {
                    format!("{key}x")
                } else {
                    key.clone()
                };
                check_parameter_name(&probe, parameter_prefix)
                    .map_err(|(_, detail)| format!("apps: {key:?}: {detail}"))?;
                if app.primary_architecture.is_some() {
                    return Err(format!(
                        "apps: {key:?}: primary_architecture is set per repository (an \"owner/repo\" key), not per parameter: both builds of a push must rank their architectures alike"
                    ));
                }
                if let Some(mode) = app.value_checks {
                    rules.parameters.push((key.clone(), mode));
                }
                continue;
            }
            let repository = RepoName::parse(key).map_err(|e| {
                format!(
                    "apps: {key:?} is neither a parameter name or prefix (starting with `/`) nor a repository: {e}"
                )
            })?;
            let id = repository.to_string().to_ascii_lowercase();
            if let Some(other) = rules.repositories.get(&id) {
                return Err(format!(
                    "apps: {:?} and {key:?} name the same repository (repositories compare case-insensitively); keep one",
                    other.key
                ));
            }
            rules.repositories.insert(
                id,
                RepositoryRules {
                    key: key.clone(),
                    value_checks: app.value_checks,
                    primary_architecture: app.primary_architecture,
                },
            );
        }
        rules
            .parameters
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(rules)
    }

    fn repository(&self, repository: &str) -> Option<&RepositoryRules> {
        self.repositories.get(&repository.to_ascii_lowercase())
    }

    /// How `parameter`'s value is checked for a build of `repository`: the longest parameter
    /// entry covering it, else the repository's entry, else the global default.
    pub fn value_checks(&self, parameter: &str, repository: &str) -> ValueChecks {
        let covers = |pattern: &str| {
            if pattern.ends_with('/') {
                parameter.starts_with(pattern)
            } else {
                parameter == pattern
            }
        };
        self.parameters
            .iter()
            .find(|(pattern, _)| covers(pattern))
            .map(|(_, mode)| *mode)
            .or_else(|| self.repository(repository).and_then(|r| r.value_checks))
            .unwrap_or(self.default_value_checks)
    }

    /// The architecture a push of `repository` publishes when it built several: the
    /// buildspec's marker (`marker`, from the dispatcher's request), else the repository's
    /// entry, else the global default.
    pub fn primary_architecture(
        &self,
        marker: Option<Architecture>,
        repository: &str,
    ) -> Architecture {
        marker
            .or_else(|| {
                self.repository(repository)
                    .and_then(|r| r.primary_architecture)
            })
            .unwrap_or(self.default_primary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/prx/stag/Spire/";
    const X86: Architecture = Architecture::X86_64;
    const ARM: Architecture = Architecture::Aarch64;

    fn app(value_checks: Option<ValueChecks>, primary: Option<Architecture>) -> AppConfig {
        AppConfig {
            value_checks,
            primary_architecture: primary,
        }
    }

    fn rules(entries: &[(&str, AppConfig)]) -> Result<AppRules, String> {
        let apps = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        AppRules::parse(&apps, PREFIX, ValueChecks::Strict, X86)
    }

    #[test]
    fn value_checks_longest_parameter_entry_then_repository_then_default() {
        use ValueChecks::{Strict, Trusted};
        let r = rules(&[
            ("/prx/stag/Spire/Legacy/", app(Some(Trusted), None)),
            ("/prx/stag/Spire/Legacy/pkg/", app(Some(Strict), None)),
            ("/prx/stag/Spire/Legacy/pkg/exact", app(Some(Trusted), None)),
            ("PRX/legacy-app", app(Some(Trusted), Some(ARM))),
            ("PRX/arm-only", app(None, Some(ARM))),
        ])
        .unwrap();
        let cases = [
            // Parameter entries beat the repository, the longest first.
            ("/prx/stag/Spire/Legacy/x", "PRX/other", Trusted),
            (
                "/prx/stag/Spire/Legacy/pkg/docker-image-tag",
                "PRX/legacy-app",
                Strict,
            ),
            ("/prx/stag/Spire/Legacy/pkg/exact", "PRX/other", Trusted),
            // A prefix stops at a level: `Legacy/` does not cover `LegacyX/`.
            ("/prx/stag/Spire/LegacyX/pkg/tag", "PRX/other", Strict),
            // Then the repository, in any case.
            ("/prx/stag/Spire/App/pkg/tag", "PRX/legacy-app", Trusted),
            ("/prx/stag/Spire/App/pkg/tag", "prx/LEGACY-APP", Trusted),
            // A repository entry without value_checks falls through to the default.
            ("/prx/stag/Spire/App/pkg/tag", "PRX/arm-only", Strict),
            ("/prx/stag/Spire/App/pkg/tag", "PRX/other", Strict),
        ];
        for (parameter, repository, expected) in cases {
            assert_eq!(
                r.value_checks(parameter, repository),
                expected,
                "{parameter} from {repository}"
            );
        }
        // The global default applies where nothing matches.
        let trusted = AppRules::new(Trusted, X86);
        assert_eq!(
            trusted.value_checks("/prx/stag/Spire/A/x", "PRX/a"),
            Trusted
        );
    }

    #[test]
    fn primary_architecture_marker_then_repository_then_default() {
        let r = rules(&[
            ("PRX/arm-app", app(None, Some(ARM))),
            ("PRX/strict-app", app(Some(ValueChecks::Strict), None)),
        ])
        .unwrap();
        assert_eq!(r.primary_architecture(None, "PRX/arm-app"), ARM);
        assert_eq!(r.primary_architecture(None, "prx/ARM-APP"), ARM);
        assert_eq!(r.primary_architecture(Some(X86), "PRX/arm-app"), X86);
        assert_eq!(r.primary_architecture(Some(ARM), "PRX/other"), ARM);
        assert_eq!(r.primary_architecture(None, "PRX/strict-app"), X86);
        assert_eq!(r.primary_architecture(None, "PRX/other"), X86);
        assert_eq!(r.primary_architecture(None, ""), X86);
        let arm_default = AppRules::new(ValueChecks::Strict, ARM);
        assert_eq!(arm_default.primary_architecture(None, "PRX/other"), ARM);
        assert_eq!(
            arm_default.primary_architecture(Some(X86), "PRX/other"),
            X86
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_key_and_the_reason() {
        let trusted = || app(Some(ValueChecks::Trusted), None);
        let cases = [
            (
                vec![("/prx/prod/App/", trusted())],
                "outside the allowed prefix",
            ),
            (vec![("/prx/stag/Spire/a b/", trusted())], "space"),
            (vec![("/prx/stag/Spire//", trusted())], "empty hierarchy"),
            (
                vec![("app", trusted())],
                "neither a parameter name or prefix",
            ),
            (
                vec![("PRX/a/b", trusted())],
                "neither a parameter name or prefix",
            ),
            (vec![("", trusted())], "neither a parameter name or prefix"),
            (vec![("PRX/app", app(None, None))], "sets nothing"),
            (
                vec![("/prx/stag/Spire/App/", app(None, Some(ARM)))],
                "primary_architecture is set per repository",
            ),
            (
                vec![("PRX/App", trusted()), ("prx/app", trusted())],
                "name the same repository",
            ),
        ];
        for (entries, needle) in cases {
            let err = rules(&entries).unwrap_err();
            assert!(err.contains(needle), "{entries:?}: {err}");
            assert!(err.starts_with("apps: "), "{err}");
        }
        assert!(rules(&[("/prx/stag/Spire/App/pkg/tag", trusted())]).is_ok());
    }
}
