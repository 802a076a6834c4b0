//! SSM's rules for a parameter name, plus the configured prefix. Pure: no I/O.

/// SSM's limit on a parameter name (characters).
pub const MAX_NAME_LENGTH: usize = 1011;
/// SSM's limit on hierarchy levels.
pub const MAX_HIERARCHY_LEVELS: usize = 15;

/// Which rule a name broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is not under the configured prefix.
    OutsidePrefix,
    /// The name breaks one of SSM's rules.
    Invalid,
}

/// SSM's naming rules plus the configured prefix. Checked in this order: whitespace (the
/// original did not trim, a stray space made it skip the name silently), prefix, length,
/// characters, hierarchy shape, reserved `aws`/`ssm` prefixes.
pub fn check_parameter_name(name: &str, prefix: &str) -> Result<(), (NameProblem, String)> {
    let invalid = |detail: String| Err((NameProblem::Invalid, detail));
    if let Some(at) = name.find(|c: char| c.is_whitespace()) {
        return invalid(format!(
            "{name:?} contains a space at byte {at}: names are not trimmed, remove the space"
        ));
    }
    if !name.starts_with(prefix) {
        return Err((
            NameProblem::OutsidePrefix,
            format!("{name:?} is outside the allowed prefix {prefix:?}"),
        ));
    }
    if name.chars().count() > MAX_NAME_LENGTH {
        return invalid(format!(
            "name is {} characters long; SSM allows {MAX_NAME_LENGTH}",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
    {
        return invalid(format!(
            "{name:?} contains {bad:?}: SSM allows only a-z A-Z 0-9 _ . - /"
        ));
    }
    if name.contains('/') && !name.starts_with('/') {
        return invalid(format!(
            "{name:?} is hierarchical but does not start with `/`"
        ));
    }
    let levels: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    if name.starts_with("//") || levels.iter().any(|l| l.is_empty()) {
        return invalid(format!(
            "{name:?} has an empty hierarchy level (`//` or a trailing `/`)"
        ));
    }
    if levels.len() > MAX_HIERARCHY_LEVELS {
        return invalid(format!(
            "{name:?} has {} hierarchy levels; SSM allows {MAX_HIERARCHY_LEVELS}",
            levels.len()
        ));
    }
    let first = levels[0].to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        return invalid(format!(
            "{name:?} starts with the reserved prefix `aws` or `ssm`"
        ));
    }
    Ok(())
}
