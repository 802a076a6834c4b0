//! Parsing a buildspec (version 0.2) into what the local runner executes. Pure: no I/O.
//!
//! Supported: `env.variables`, `env.exported-variables`, `env.shell` (bash), and for each of
//! `install`, `pre_build`, `build`, `post_build`: `commands`, `finally` and `on-failure`
//! (`ABORT`/`CONTINUE`). Keys the local runner cannot honour (`env.parameter-store`,
//! `env.secrets-manager`, `artifacts`, `reports`, `cache`, `runtime-versions`, ...) are accepted
//! and listed in [`Buildspec::notes`], which the runner writes to the build log.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

/// The four command phases of buildspec 0.2, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PhaseName {
    Install,
    PreBuild,
    Build,
    PostBuild,
}

impl PhaseName {
    /// All of them, in execution order.
    pub const ALL: [PhaseName; 4] = [
        PhaseName::Install,
        PhaseName::PreBuild,
        PhaseName::Build,
        PhaseName::PostBuild,
    ];

    /// The key in `phases:` (`pre_build`).
    pub fn key(self) -> &'static str {
        match self {
            PhaseName::Install => "install",
            PhaseName::PreBuild => "pre_build",
            PhaseName::Build => "build",
            PhaseName::PostBuild => "post_build",
        }
    }

    /// CodeBuild's phase type (`PRE_BUILD`).
    pub fn phase_type(self) -> &'static str {
        match self {
            PhaseName::Install => "INSTALL",
            PhaseName::PreBuild => "PRE_BUILD",
            PhaseName::Build => "BUILD",
            PhaseName::PostBuild => "POST_BUILD",
        }
    }

    /// The phase whose CodeBuild phase type is `phase_type`.
    pub fn from_phase_type(phase_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.phase_type() == phase_type)
    }
}

/// What happens after a phase fails (`on-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Skip the later phases (except `post_build` after a failed `build`). The default.
    #[default]
    Abort,
    /// Run the later phases anyway (the build still fails).
    Continue,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Abort => "ABORT",
            OnFailure::Continue => "CONTINUE",
        }
    }
}

/// One phase's commands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhaseSpec {
    pub commands: Vec<String>,
    /// Run after `commands` even when one of them failed.
    pub finally: Vec<String>,
    pub on_failure: OnFailure,
}

/// A parsed buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Buildspec {
    /// `env.variables` (scalars rendered as strings).
    pub variables: BTreeMap<String, String>,
    /// `env.exported-variables`, in order, without duplicates.
    pub exported_variables: Vec<String>,
    /// The phases present in the buildspec (absent phases run no commands).
    pub phases: BTreeMap<PhaseName, PhaseSpec>,
    /// What the local runner ignores, phrased for the build log.
    pub notes: Vec<String>,
}

impl Buildspec {
    /// The commands of `phase` (empty when the buildspec has none).
    pub fn phase(&self, phase: PhaseName) -> PhaseSpec {
        self.phases.get(&phase).cloned().unwrap_or_default()
    }
}

/// Why a buildspec cannot run; the message is CodeBuild's phase context for the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("YAML_FILE_ERROR: {0}")]
pub struct BuildspecError(pub String);

fn error(message: impl Into<String>) -> BuildspecError {
    BuildspecError(message.into())
}

/// Whether `name` can be a shell variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses buildspec text.
pub fn parse_buildspec(text: &str) -> Result<Buildspec, BuildspecError> {
    let root: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| error(format!("buildspec is not valid YAML: {e}")))?;
    let Value::Mapping(root) = root else {
        return Err(error("buildspec must be a YAML mapping"));
    };
    let mut spec = Buildspec::default();

    match root.get("version") {
        None => return Err(error("buildspec has no `version` (expected 0.2)")),
        Some(v) => {
            let version = scalar(v).unwrap_or_default();
            if version == "0.1" {
                return Err(error(
                    "buildspec version 0.1 is not supported by the local runner (use 0.2)",
                ));
            }
            if version != "0.2" {
                return Err(error(format!(
                    "unknown buildspec version `{version}` (expected 0.2)"
                )));
            }
        }
    }

    for (key, value) in &root {
        let key = key_str(key)?;
        match key {
            "version" => {}
            "env" => parse_env(value, &mut spec)?,
            "phases" => parse_phases(value, &mut spec)?,
            "run-as" | "proxy" | "artifacts" | "reports" | "cache" | "batch" => spec.notes.push(
                format!("buildspec `{key}` is not emulated by the local runner; ignored"),
            ),
            other => return Err(error(format!("unknown buildspec key `{other}`"))),
        }
    }
    if !root.contains_key("phases") {
        return Err(error("buildspec has no `phases`"));
    }
    Ok(spec)
}

fn key_str(key: &Value) -> Result<&str, BuildspecError> {
    key.as_str()
        .ok_or_else(|| error(format!("buildspec key {key:?} is not a string")))
}

/// A scalar rendered as the string CodeBuild would use.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

fn mapping<'a>(value: &'a Value, what: &str) -> Result<Option<&'a Mapping>, BuildspecError> {
    match value {
        Value::Null => Ok(None),
        Value::Mapping(m) => Ok(Some(m)),
        _ => Err(error(format!("`{what}` must be a mapping"))),
    }
}

fn parse_env(value: &Value, spec: &mut Buildspec) -> Result<(), BuildspecError> {
    let Some(env) = mapping(value, "env")? else {
        return Ok(());
    };
    for (key, value) in env {
        match key_str(key)? {
            "variables" => {
                let Some(vars) = mapping(value, "env.variables")? else {
                    continue;
                };
                for (name, value) in vars {
                    let name = key_str(name)?;
                    if !is_variable_name(name) {
                        return Err(error(format!(
                            "env.variables: `{name}` is not a valid variable name"
                        )));
                    }
                    let value = scalar(value).ok_or_else(|| {
                        error(format!(
                            "env.variables.{name} must be a string, not a list or mapping"
                        ))
                    })?;
                    spec.variables.insert(name.to_owned(), value);
                }
            }
            "exported-variables" => {
                let names = match value {
                    Value::Null => Vec::new(),
                    Value::Sequence(items) => items.clone(),
                    _ => return Err(error("env.exported-variables must be a list of names")),
                };
                for (i, name) in names.iter().enumerate() {
                    let name = name.as_str().ok_or_else(|| {
                        error(format!("env.exported-variables[{i}] is not a string"))
                    })?;
                    if !is_variable_name(name) {
                        return Err(error(format!(
                            "env.exported-variables: `{name}` is not a valid variable name"
                        )));
                    }
                    if !spec.exported_variables.iter().any(|n| n == name) {
                        spec.exported_variables.push(name.to_owned());
                    }
                }
            }
            "shell" => {
                let shell = scalar(value).unwrap_or_default();
                if shell != "bash" {
                    spec.notes.push(format!(
                        "env.shell `{shell}` requested; the local runner runs every buildspec with bash"
                    ));
                }
            }
            "git-credential-helper" => {}
            key @ ("parameter-store" | "secrets-manager") => spec.notes.push(format!(
                "env.{key} is not resolved by the local runner: those variables are not set \
                 (set them in [runner.environment] instead)"
            )),
            key @ ("run-as" | "proxy") => spec.notes.push(format!(
                "env.{key} is not emulated by the local runner; ignored"
            )),
            other => return Err(error(format!("unknown key `env.{other}`"))),
        }
    }
    Ok(())
}

fn parse_phases(value: &Value, spec: &mut Buildspec) -> Result<(), BuildspecError> {
    let Some(phases) = mapping(value, "phases")? else {
        return Ok(());
    };
    for (key, value) in phases {
        let key = key_str(key)?;
        let phase = PhaseName::ALL
            .into_iter()
            .find(|p| p.key() == key)
            .ok_or_else(|| {
                error(format!(
                    "unknown phase `{key}` (expected install, pre_build, build, post_build)"
                ))
            })?;
        let mut parsed = PhaseSpec::default();
        if let Some(body) = mapping(value, &format!("phases.{key}"))? {
            for (field, value) in body {
                match key_str(field)? {
                    "commands" => parsed.commands = commands(value, &format!("{key}.commands"))?,
                    "finally" => parsed.finally = commands(value, &format!("{key}.finally"))?,
                    "on-failure" => {
                        parsed.on_failure = match scalar(value).as_deref() {
                            Some("ABORT") => OnFailure::Abort,
                            Some("CONTINUE") => OnFailure::Continue,
                            _ => {
                                return Err(error(format!(
                                    "phases.{key}.on-failure must be ABORT or CONTINUE"
                                )));
                            }
                        }
                    }
                    "runtime-versions" => spec.notes.push(format!(
                        "phases.{key}.runtime-versions is not emulated: the host's tools are used"
                    )),
                    "run-as" => spec.notes.push(format!(
                        "phases.{key}.run-as is not emulated: commands run as the runner's user"
                    )),
                    other => {
                        return Err(error(format!("unknown key `phases.{key}.{other}`")));
                    }
                }
            }
        }
        spec.phases.insert(phase, parsed);
    }
    Ok(())
}

fn commands(value: &Value, what: &str) -> Result<Vec<String>, BuildspecError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(items) => items,
        _ => return Err(error(format!("phases.{what} must be a list of commands"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(_) | Value::Number(_) => Ok(scalar(item).unwrap_or_default()),
            _ => Err(error(format!(
                "phases.{what}[{i}] is not a string (quote commands that contain `: `)"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_buildspec() {
        let spec = parse_buildspec(
            r#"
version: 0.2
env:
  shell: bash
  variables:
    GREETING: hello
    COUNT: 3
    FLAG: true
    EMPTY:
  exported-variables:
    - RAILS_APP
    - PRX_SPIRE_ECR_PKG_PARAMETERS
    - RAILS_APP
  parameter-store:
    SECRET: /prx/secret
phases:
  install:
    runtime-versions:
      nodejs: 20
    commands:
      - echo install
  build:
    on-failure: CONTINUE
    commands:
      - 'echo "a: b"'
      - |
        if true; then
          echo multi
        fi
    finally:
      - echo cleanup
  post_build:
    commands:
      - . ./post_build.sh
artifacts:
  files: ["**/*"]
"#,
        )
        .unwrap();
        assert_eq!(spec.variables["GREETING"], "hello");
        assert_eq!(spec.variables["COUNT"], "3");
        assert_eq!(spec.variables["FLAG"], "true");
        assert_eq!(spec.variables["EMPTY"], "");
        assert_eq!(
            spec.exported_variables,
            ["RAILS_APP", "PRX_SPIRE_ECR_PKG_PARAMETERS"]
        );
        assert_eq!(spec.phase(PhaseName::Install).commands, ["echo install"]);
        assert_eq!(spec.phase(PhaseName::PreBuild), PhaseSpec::default());
        let build = spec.phase(PhaseName::Build);
        assert_eq!(build.on_failure, OnFailure::Continue);
        assert_eq!(build.commands.len(), 2);
        assert!(build.commands[1].contains("echo multi\nfi"));
        assert_eq!(build.finally, ["echo cleanup"]);
        assert_eq!(spec.notes.len(), 3, "{:?}", spec.notes);
    }

    #[test]
    fn string_version_and_empty_phases() {
        let spec = parse_buildspec("version: \"0.2\"\nphases:\n  build:\n").unwrap();
        assert_eq!(spec.phase(PhaseName::Build), PhaseSpec::default());
        assert!(spec.phases.contains_key(&PhaseName::Build));
    }

    #[test]
    fn rejects_with_a_clear_message() {
        for (text, expected) in [
            ("version: 0.2\nphases: [", "not valid YAML"),
            ("- a\n", "must be a YAML mapping"),
            ("phases: {}\n", "no `version`"),
            ("version: 0.1\nphases: {}\n", "0.1 is not supported"),
            ("version: 1.0\nphases: {}\n", "unknown buildspec version"),
            ("version: 0.2\n", "no `phases`"),
            (
                "version: 0.2\nphases:\n  test:\n    commands: [ls]\n",
                "unknown phase `test`",
            ),
            (
                "version: 0.2\nphases:\n  build:\n    commands:\n      - echo a: b\n",
                "phases.build.commands[0] is not a string",
            ),
            (
                "version: 0.2\nphases:\n  build:\n    commands: ls\n",
                "must be a list of commands",
            ),
            (
                "version: 0.2\nphases:\n  build:\n    on-failure: RETRY\n",
                "on-failure must be ABORT or CONTINUE",
            ),
            (
                "version: 0.2\nenv:\n  variables:\n    A-B: x\nphases: {}\n",
                "`A-B` is not a valid variable name",
            ),
            (
                "version: 0.2\nenv:\n  exported-variables: [ok, 'bad name']\nphases: {}\n",
                "`bad name` is not a valid variable name",
            ),
            (
                "version: 0.2\nphases: {}\nstages: {}\n",
                "unknown buildspec key `stages`",
            ),
        ] {
            let err = parse_buildspec(text).unwrap_err().to_string();
            assert!(err.starts_with("YAML_FILE_ERROR: "), "{err}");
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn variable_names() {
        for ok in ["A", "_a1", "PRX_REPO", "a_B_9"] {
            assert!(is_variable_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "é", "A.B"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }
}
