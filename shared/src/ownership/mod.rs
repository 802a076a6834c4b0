//! Parameter ownership: which repository may publish a parameter name (rules here are pure).
//!
//! Every app shares the parameter prefix (`/prx/stag/Spire/`), so without owners any enrolled
//! build could name another app's parameter in its mapping and point that app at an image of
//! its own. Each name therefore belongs to one repository:
//!
//! 1. Config owners (`[publisher.owners]`, pattern -> `owner/repo`) win. A pattern ending in
//!    `/` owns every name beneath it, any other pattern exactly that name; the longest matching
//!    pattern decides.
//! 2. Otherwise the repository that claimed the name (the first to publish it, or the one an
//!    operator transferred it to) owns it.
//! 3. A name nobody owns is claimed by the repository publishing it (compare-and-set create,
//!    so two first publishes cannot both claim it).
//!
//! Repositories compare case-insensitively (GitHub names do); parameter names exactly (SSM
//! names are case-sensitive).
//!
//! The publisher enforces these rules on every publish and the ops API transfers names, so they
//! live here, with the owners' KV store ([`owner_store`]) and SSM's name rules
//! ([`parameter_name`]) they depend on. Everything in this file is pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Validate;
use crate::domain::RepoName;

pub mod owner_store;
pub mod parameter_name;

pub use owner_store::{Checked, OWNERS_BUCKET, OwnerStore, TransferError};
pub use parameter_name::{NameProblem, check_parameter_name};

/// True when `a` and `b` name the same GitHub repository.
pub fn same_repository(a: &str, b: &str) -> bool {
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// One `[publisher.owners]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOwner {
    /// A parameter name, or a prefix ending in `/`.
    pub pattern: String,
    /// `owner/repo`.
    pub repository: String,
}

impl ConfigOwner {
    /// Whether the entry covers `parameter`.
    pub fn covers(&self, parameter: &str) -> bool {
        if self.pattern.ends_with('/') {
            parameter.starts_with(&self.pattern)
        } else {
            parameter == self.pattern
        }
    }
}

/// The validated `[publisher.owners]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOwners {
    /// Longest pattern first, so the first entry that covers a name is the one that decides.
    entries: Vec<ConfigOwner>,
}

impl ConfigOwners {
    /// Validates `owners` (pattern -> `owner/repo`): every pattern is a parameter name under
    /// `parameter_prefix` or a prefix ending in `/` under it; every owner is `owner/repo`.
    pub fn parse(
        owners: &BTreeMap<String, String>,
        parameter_prefix: &str,
    ) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(owners.len());
        for (pattern, repository) in owners {
            // A prefix must read as a valid name once one level is added below it.
            let probe = if pattern.ends_with('/') {
                format!("{pattern}x")
            } else {
                pattern.clone()
            };
            check_parameter_name(&probe, parameter_prefix)
                .map_err(|(_, detail)| format!("owners: {pattern:?}: {detail}"))?;
            let repo = RepoName::parse(repository.trim())
                .map_err(|e| format!("owners: {pattern:?}: {e}"))?;
            entries.push(ConfigOwner {
                pattern: pattern.clone(),
                repository: repo.to_string(),
            });
        }
        entries.sort_by(|a, b| {
            b.pattern
                .len()
                .cmp(&a.pattern.len())
                .then_with(|| a.pattern.cmp(&b.pattern))
        });
        Ok(Self { entries })
    }

    /// The entry that decides who owns `parameter` (the longest pattern covering it).
    pub fn owner_of(&self, parameter: &str) -> Option<&ConfigOwner> {
        self.entries.iter().find(|e| e.covers(parameter))
    }

    /// Every entry, longest pattern first.
    pub fn entries(&self) -> &[ConfigOwner] {
        &self.entries
    }
}

/// The publisher's default `parameter_prefix`.
pub const DEFAULT_PARAMETER_PREFIX: &str = "/prx/stag/Spire/";

/// The ownership part of section `[publisher]` (`parameter_prefix` and `[publisher.owners]`),
/// for services other than the publisher that need the owners (the ops API). Other keys of the
/// section are the publisher's and are ignored here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OwnershipConfig {
    /// Only parameter names starting with this are written. Default `/prx/stag/Spire/`.
    pub parameter_prefix: String,
    /// `[publisher.owners]`: parameter name, or prefix ending in `/`, -> `owner/repo`.
    pub owners: BTreeMap<String, String>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        Self {
            parameter_prefix: DEFAULT_PARAMETER_PREFIX.to_owned(),
            owners: BTreeMap::new(),
        }
    }
}

impl OwnershipConfig {
    /// The validated `[publisher.owners]` table.
    pub fn config_owners(&self) -> Result<ConfigOwners, String> {
        ConfigOwners::parse(&self.owners, &self.parameter_prefix)
    }
}

/// Checks a `parameter_prefix`: it starts and ends with `/` and a name one level below it is a
/// valid parameter name.
pub fn check_parameter_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "parameter_prefix {prefix:?} must start and end with `/`"
        ));
    }
    check_parameter_name(&format!("{prefix}x"), prefix)
        .map_err(|(_, detail)| format!("parameter_prefix: {detail}"))
}

impl Validate for OwnershipConfig {
    fn validate(&self) -> Result<(), String> {
        check_parameter_prefix(&self.parameter_prefix)?;
        self.config_owners().map(|_| ())
    }
}

/// `action` of a claim made by a first publish.
pub const ACTION_CLAIM: &str = "claim";
/// `action` of an operator's transfer.
pub const ACTION_TRANSFER: &str = "transfer";

/// Who owns a claimed parameter name (JSON in the owners KV bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub parameter: String,
    /// `owner/repo`.
    pub repository: String,
    /// [`ACTION_CLAIM`] or [`ACTION_TRANSFER`]: how the current owner got it.
    pub action: String,
    /// The owner before (transfers; "" when it was unowned).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous: String,
    /// Claims: the build that claimed it, and its commit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    /// Transfers: the identity the ops API authenticated, and the reason given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// Who owns a name, and on what grounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner<'a> {
    Config(&'a ConfigOwner),
    Claimed(&'a OwnerRecord),
}

impl Owner<'_> {
    pub fn repository(&self) -> &str {
        match self {
            Owner::Config(c) => &c.repository,
            Owner::Claimed(r) => &r.repository,
        }
    }

    /// For people: `PRX/app (config owners "/prx/stag/Spire/App/")`.
    pub fn describe(&self) -> String {
        match self {
            Owner::Config(c) => format!("{} (config owners {:?})", c.repository, c.pattern),
            Owner::Claimed(r) if r.action == ACTION_TRANSFER => format!(
                "{} (transferred by {} at {})",
                r.repository, r.requested_by, r.at
            ),
            Owner::Claimed(r) => format!(
                "{} (claimed by build {} at {})",
                r.repository, r.build_id, r.at
            ),
        }
    }
}

/// What a publish of a name may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The publishing repository owns the name: go on.
    Allowed(Owner<'a>),
    /// Nobody owns the name: claim it for the publishing repository (create-only), then go on.
    Claim,
    /// Another repository owns it (or the build names no repository): write nothing.
    NotOwner(Option<Owner<'a>>),
}

/// Decides whether `repository` may publish `parameter`, given the config owners and the
/// claimed record (if any). Config wins over a claim.
pub fn decide<'a>(
    config: &'a ConfigOwners,
    claimed: Option<&'a OwnerRecord>,
    parameter: &str,
    repository: &str,
) -> Verdict<'a> {
    let owner = match (config.owner_of(parameter), claimed) {
        (Some(c), _) => Some(Owner::Config(c)),
        (None, Some(r)) => Some(Owner::Claimed(r)),
        (None, None) => None,
    };
    match owner {
        Some(owner) if same_repository(repository, owner.repository()) => Verdict::Allowed(owner),
        Some(owner) => Verdict::NotOwner(Some(owner)),
        None if repository.is_empty() => Verdict::NotOwner(None),
        None => Verdict::Claim,
    }
}

/// The `NOT_OWNER` skip detail: names the owner.
pub fn not_owner_detail(parameter: &str, owner: Option<&Owner<'_>>, repository: &str) -> String {
    match owner {
        Some(owner) => format!(
            "{parameter} belongs to {}; this build is from {repository}",
            owner.describe()
        ),
        None => format!("the build names no repository, so it cannot own {parameter}"),
    }
}

/// Why an operator's transfer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    #[error(
        "{parameter} is owned by config ({repository} through [publisher.owners] {pattern:?}); change the config instead"
    )]
    ConfigOwned {
        parameter: String,
        repository: String,
        pattern: String,
    },
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidRepository(String),
    #[error("{parameter} already belongs to {repository}")]
    AlreadyOwner {
        parameter: String,
        repository: String,
    },
}

/// An operator's request to move a name to another repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer<'a> {
    pub parameter: &'a str,
    /// `owner/repo` to own it from now on.
    pub repository: &'a str,
    /// The identity the ops API authenticated (never text the caller supplied).
    pub requested_by: &'a str,
    pub reason: &'a str,
}

/// Checks `request` against the config and the current claim, and returns the record that
/// replaces the claim. Config-owned names cannot be transferred (config would win anyway).
pub fn transfer(
    config: &ConfigOwners,
    parameter_prefix: &str,
    current: Option<&OwnerRecord>,
    request: &Transfer<'_>,
    now: &str,
) -> Result<OwnerRecord, TransferRefused> {
    let Transfer {
        parameter,
        repository,
        requested_by,
        reason,
    } = *request;
    check_parameter_name(parameter, parameter_prefix)
        .map_err(|(_, detail)| TransferRefused::InvalidName(detail))?;
    let repo = RepoName::parse(repository.trim())
        .map_err(|e| TransferRefused::InvalidRepository(e.to_string()))?
        .to_string();
    if let Some(c) = config.owner_of(parameter) {
        return Err(TransferRefused::ConfigOwned {
            parameter: parameter.to_owned(),
            repository: c.repository.clone(),
            pattern: c.pattern.clone(),
        });
    }
    if let Some(current) = current
        && same_repository(&current.repository, &repo)
    {
        return Err(TransferRefused::AlreadyOwner {
            parameter: parameter.to_owned(),
            repository: current.repository.clone(),
        });
    }
    Ok(OwnerRecord {
        parameter: parameter.to_owned(),
        repository: repo,
        action: ACTION_TRANSFER.to_owned(),
        previous: current.map(|c| c.repository.clone()).unwrap_or_default(),
        build_id: String::new(),
        commit: String::new(),
        requested_by: requested_by.to_owned(),
        reason: reason.to_owned(),
        at: now.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/prx/stag/Spire/";

    fn owners(pairs: &[(&str, &str)]) -> ConfigOwners {
        let map = pairs
            .iter()
            .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
            .collect();
        ConfigOwners::parse(&map, PREFIX).unwrap()
    }

    fn claimed(parameter: &str, repository: &str) -> OwnerRecord {
        OwnerRecord {
            parameter: parameter.into(),
            repository: repository.into(),
            action: ACTION_CLAIM.into(),
            build_id: "local:1".into(),
            at: "2026-01-01T00:00:00Z".into(),
            ..OwnerRecord::default()
        }
    }

    const NAME: &str = "/prx/stag/Spire/App/pkg/docker-image-tag";

    #[test]
    fn an_unowned_name_is_claimed_by_the_publishing_repository() {
        let config = ConfigOwners::default();
        assert_eq!(decide(&config, None, NAME, "PRX/app"), Verdict::Claim);
    }

    #[test]
    fn the_claimant_may_publish_and_others_may_not() {
        let config = ConfigOwners::default();
        let record = claimed(NAME, "PRX/app");
        assert_eq!(
            decide(&config, Some(&record), NAME, "PRX/app"),
            Verdict::Allowed(Owner::Claimed(&record))
        );
        let Verdict::NotOwner(Some(owner)) = decide(&config, Some(&record), NAME, "PRX/other")
        else {
            panic!("another repository may not publish")
        };
        let detail = not_owner_detail(NAME, Some(&owner), "PRX/other");
        assert!(detail.contains("belongs to PRX/app"), "{detail}");
        assert!(detail.contains("local:1"), "{detail}");
        assert!(detail.contains("from PRX/other"), "{detail}");
    }

    #[test]
    fn repositories_compare_case_insensitively() {
        let config = ConfigOwners::default();
        let record = claimed(NAME, "PRX/App");
        assert!(matches!(
            decide(&config, Some(&record), NAME, "prx/APP"),
            Verdict::Allowed(_)
        ));
        let config = owners(&[("/prx/stag/Spire/App/", "prx/app")]);
        assert!(matches!(
            decide(&config, None, NAME, "PRX/App"),
            Verdict::Allowed(Owner::Config(_))
        ));
    }

    #[test]
    fn config_wins_over_a_claim() {
        let config = owners(&[("/prx/stag/Spire/App/", "PRX/app")]);
        let squatter = claimed(NAME, "PRX/other");
        assert!(matches!(
            decide(&config, Some(&squatter), NAME, "PRX/app"),
            Verdict::Allowed(Owner::Config(_))
        ));
        let Verdict::NotOwner(Some(owner)) = decide(&config, Some(&squatter), NAME, "PRX/other")
        else {
            panic!("config decides")
        };
        assert_eq!(owner.repository(), "PRX/app");
        assert!(owner.describe().contains("config owners"));
        // A config-owned name is never claimed.
        assert!(matches!(
            decide(&config, None, NAME, "PRX/other"),
            Verdict::NotOwner(Some(Owner::Config(_)))
        ));
    }

    #[test]
    fn the_longest_pattern_wins_and_prefixes_stop_at_a_level() {
        let config = owners(&[
            ("/prx/stag/Spire/", "PRX/platform"),
            ("/prx/stag/Spire/App/", "PRX/app"),
            (NAME, "PRX/special"),
        ]);
        assert_eq!(config.owner_of(NAME).unwrap().repository, "PRX/special");
        assert_eq!(
            config
                .owner_of("/prx/stag/Spire/App/pkg/other")
                .unwrap()
                .repository,
            "PRX/app"
        );
        // `App/` does not cover `AppX/`; the shorter prefix does.
        assert_eq!(
            config
                .owner_of("/prx/stag/Spire/AppX/pkg/x")
                .unwrap()
                .repository,
            "PRX/platform"
        );
        // An exact name covers only itself.
        let exact = owners(&[("/prx/stag/Spire/App/pkg/a", "PRX/app")]);
        assert!(exact.owner_of("/prx/stag/Spire/App/pkg/ab").is_none());
        assert!(exact.owner_of("/prx/stag/Spire/App/pkg/a").is_some());
    }

    #[test]
    fn a_build_without_a_repository_never_claims() {
        let config = ConfigOwners::default();
        assert_eq!(decide(&config, None, NAME, ""), Verdict::NotOwner(None));
        let record = OwnerRecord::default();
        assert!(matches!(
            decide(&config, Some(&record), NAME, ""),
            Verdict::NotOwner(Some(_))
        ));
    }

    #[test]
    fn config_owners_are_validated() {
        for (pattern, repo, needle) in [
            ("/other/App/", "PRX/app", "outside"),
            ("/prx/stag/Spire/App/", "not-a-repo", "owner/repo"),
            ("/prx/stag/Spire/A b/", "PRX/app", "space"),
            ("/prx/stag/Spire/App//", "PRX/app", "empty hierarchy"),
        ] {
            let map = BTreeMap::from([(pattern.to_owned(), repo.to_owned())]);
            let err = ConfigOwners::parse(&map, PREFIX).unwrap_err();
            assert!(err.contains(needle), "{pattern} {repo}: {err}");
            assert!(err.contains("owners"), "{err}");
        }
    }

    #[test]
    fn transfers_replace_claims_but_never_config() {
        let config = owners(&[("/prx/stag/Spire/Config/", "PRX/config")]);
        let record = claimed(NAME, "PRX/app");
        let to = |parameter, repository| Transfer {
            parameter,
            repository,
            requested_by: "ops-token",
            reason: "app renamed",
        };
        let moved = transfer(
            &config,
            PREFIX,
            Some(&record),
            &to(NAME, "PRX/new"),
            "2026-01-02T00:00:00Z",
        )
        .unwrap();
        assert_eq!(moved.repository, "PRX/new");
        assert_eq!(moved.previous, "PRX/app");
        assert_eq!(moved.action, ACTION_TRANSFER);
        assert_eq!(moved.requested_by, "ops-token");
        assert_eq!(moved.reason, "app renamed");
        assert_eq!(
            decide(&config, Some(&moved), NAME, "PRX/app"),
            Verdict::NotOwner(Some(Owner::Claimed(&moved)))
        );

        let unowned = transfer(&config, PREFIX, None, &to(NAME, "PRX/new"), "t").unwrap();
        assert_eq!(unowned.previous, "");

        let refused = transfer(
            &config,
            PREFIX,
            None,
            &to("/prx/stag/Spire/Config/pkg/x", "PRX/new"),
            "t",
        )
        .unwrap_err();
        assert!(matches!(refused, TransferRefused::ConfigOwned { .. }));
        assert!(refused.to_string().contains("PRX/config"));

        for (name, repo) in [
            ("/elsewhere/x", "PRX/new"),
            (NAME, "nope"),
            (NAME, "prx/APP"),
        ] {
            assert!(
                transfer(&config, PREFIX, Some(&record), &to(name, repo), "t").is_err(),
                "{name} {repo}"
            );
        }
    }

    #[test]
    fn records_round_trip_as_json() {
        let record = claimed(NAME, "PRX/app");
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("requested_by"), "{json}");
        assert_eq!(serde_json::from_str::<OwnerRecord>(&json).unwrap(), record);
    }
}
