//! Build ids, where a build's files live, and the build record (`builds/<uuid>.json`).
//!
//! The record answers a repeated start and tells a restarted runner which builds never got
//! their final report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::Context as _;
use prx_ci_shared::codebuild::backend::StartBuild;
use prx_ci_shared::domain::{Architecture, CommitSha, RepoName};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::reporter::BuildInfo;

/// Namespace of local build ids (UUID v5 of the request id). Never change it: a repeated start
/// must map to the same build.
const BUILD_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7a3c_1e55_90d4_4b2f_8c61_2d9e_4f0b_0002);

/// The prefix of local build ids.
const BUILD_ID_PREFIX: &str = "local:";

/// The build id a request id maps to (`local:<uuid v5>`).
pub fn build_id_for(request_id: &str) -> String {
    format!(
        "{BUILD_ID_PREFIX}{}",
        Uuid::new_v5(&BUILD_ID_NAMESPACE, request_id.as_bytes())
    )
}

/// The uuid part of a build id, which names the build's files (a bare uuid is taken as is).
pub fn uuid_of(build_id: &str) -> &str {
    build_id.strip_prefix(BUILD_ID_PREFIX).unwrap_or(build_id)
}

/// Where builds' files live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data_dir>/builds`: records, logs and driver scripts, hidden from builds.
    pub builds_dir: PathBuf,
    /// The work root: one directory per running build.
    pub work_dir: PathBuf,
}

impl Layout {
    pub fn record_path(&self, build_id: &str) -> PathBuf {
        self.builds_dir.join(format!("{}.json", uuid_of(build_id)))
    }

    pub fn log_path(&self, build_id: &str) -> PathBuf {
        self.builds_dir.join(format!("{}.log", uuid_of(build_id)))
    }

    /// The driver script as kept for inspection; the build runs a copy in its build dir.
    pub fn driver_path(&self, build_id: &str) -> PathBuf {
        self.builds_dir.join(format!("{}.sh", uuid_of(build_id)))
    }

    /// `<work_dir>/<uuid>`: the checkout (`src/`) and the driver's files; the only part of
    /// the work root an isolated build sees.
    pub fn build_dir(&self, build_id: &str) -> PathBuf {
        self.work_dir.join(uuid_of(build_id))
    }

    /// Writes `record` in its place, logging a failure: the build goes on without it.
    pub fn save_record(&self, record: &BuildRecord) {
        if let Err(err) = write_record(&self.record_path(&record.build_id), record) {
            tracing::warn!(error = %format!("{err:#}"), "cannot update the build record");
        }
    }
}

/// The log URL reported for a log file.
pub fn log_url(log_path: &Path) -> String {
    format!("file://{}", log_path.display())
}

/// What is persisted per build (`builds/<uuid>.json`): a restart must neither start a build a
/// second time nor leave one without a final report. Records written by earlier versions must
/// stay readable: add fields only with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub build_id: String,
    pub request_id: String,
    pub repository: String,
    pub clone_url: String,
    pub source_version: String,
    pub start_time_unix: i64,
    pub environment: Vec<(String, String)>,
    /// The final status, once its report is stored.
    pub final_status: Option<String>,
    /// The runner that owns the build (`[runner] instance`; empty: the unnamed one). Runners
    /// sharing a data dir recover only their own builds after a restart.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Set once the build left `QUEUED` (its phases began). A build still queued when its
    /// runner stopped is started again by the next one; a running one is reported `FAULT`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
    /// The request, kept until the build finishes: while it is queued a restarted runner
    /// starts it from there; while it runs, a restarted runner that reports it `FAULT` masks
    /// its buildspec's variables in the log tail ([`BuildRecord::buildspec_variables`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<QueuedRequest>,
}

/// A [`StartBuild`] as recorded for a queued build (plain strings, read back with
/// [`QueuedRequest::start_build`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRequest {
    pub commit: String,
    pub architecture: Architecture,
    pub buildspec: String,
    pub environment: BTreeMap<String, String>,
    pub untrusted: bool,
}

impl QueuedRequest {
    pub fn new(request: &StartBuild) -> Self {
        Self {
            commit: request.commit.as_str().to_owned(),
            architecture: request.architecture,
            buildspec: request.buildspec.clone(),
            environment: request.environment.clone(),
            untrusted: request.untrusted,
        }
    }
}

impl BuildRecord {
    /// The record once the final report with `status` is stored.
    pub fn finished(self, status: &str) -> Self {
        Self {
            final_status: Some(status.to_owned()),
            request: None,
            ..self
        }
    }

    /// The record once the build left `QUEUED` (its request stays, no longer to be started).
    pub fn running(self) -> Self {
        Self {
            running: true,
            ..self
        }
    }

    /// The variables of the build's buildspec (`env.variables`), while its request is kept
    /// (until it finishes; none for a record of an earlier version, which dropped the request
    /// once the build ran, or for a buildspec that does not parse).
    pub fn buildspec_variables(&self) -> BTreeMap<String, String> {
        self.request
            .as_ref()
            .and_then(|r| crate::buildspec::parse_buildspec(&r.buildspec).ok())
            .map(|spec| spec.variables)
            .unwrap_or_default()
    }

    /// The request of a build still queued (`None` once it ran, for records of earlier
    /// versions, and for a record that cannot be read back as a request).
    pub fn queued_request(&self) -> Option<StartBuild> {
        if self.running || self.final_status.is_some() {
            return None;
        }
        let queued = self.request.as_ref()?;
        Some(StartBuild {
            request_id: self.request_id.clone(),
            repository: RepoName::parse(&self.repository).ok()?,
            commit: CommitSha::parse(&queued.commit).ok()?,
            architecture: queued.architecture,
            clone_url: self.clone_url.clone(),
            source_version: self.source_version.clone(),
            buildspec: queued.buildspec.clone(),
            environment: queued.environment.clone(),
            untrusted: queued.untrusted,
        })
    }

    /// What every report of this build carries.
    pub fn info(&self, layout: &Layout, account: &str, timeout: Duration) -> BuildInfo {
        let log_path = layout.log_path(&self.build_id);
        BuildInfo {
            build_id: self.build_id.clone(),
            repository: self.repository.clone(),
            account: account.to_owned(),
            region: String::new(),
            clone_url: self.clone_url.clone(),
            source_version: self.source_version.clone(),
            start_time: OffsetDateTime::from_unix_timestamp(self.start_time_unix)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            timeout_minutes: timeout.as_secs().div_ceil(60),
            environment: self.environment.clone(),
            log_url: log_url(&log_path),
            log_path: log_path.display().to_string(),
        }
    }
}

/// Writes the first record of a build at `path`, unless one is there already (written by
/// this or another runner sharing the data dir): false then. Atomic (a complete temporary
/// file hard-linked into place), so two runners never both claim one build.
pub fn claim_record(path: &Path, record: &BuildRecord) -> anyhow::Result<bool> {
    let tmp = path.with_extension(format!("json.{}.tmp", Uuid::new_v4()));
    let bytes = serde_json::to_vec_pretty(record).context("cannot encode the build record")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Writes `record` to `path` atomically (a temporary file renamed over it), so a crash never
/// leaves half a record.
pub fn write_record(path: &Path, record: &BuildRecord) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(record).context("cannot encode the build record")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the record at `path`: `None` for other files (logs, scripts, temporary files) and
/// for records that cannot be read.
pub fn read_record(path: &Path) -> Option<BuildRecord> {
    if path.extension().is_none_or(|e| e != "json") {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The record of the build `request_id` started here (in this or an earlier process), if any:
/// the record at its build id's path, written for exactly that request.
pub fn find_record(layout: &Layout, request_id: &str) -> Option<BuildRecord> {
    let build_id = build_id_for(request_id);
    read_record(&layout.record_path(&build_id)).filter(|r| r.request_id == request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BuildRecord {
        BuildRecord {
            build_id: build_id_for("req-1"),
            request_id: "req-1".into(),
            repository: "PRX/app".into(),
            clone_url: "file:///tmp/app".into(),
            source_version: "main".into(),
            start_time_unix: 1_504_282_349,
            environment: vec![("PRX_REPO".into(), "PRX/app".into())],
            final_status: None,
            instance: String::new(),
            running: false,
            request: None,
        }
    }

    #[test]
    fn a_build_is_claimed_once_across_runners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        assert!(claim_record(&path, &record()).unwrap());
        let other = BuildRecord {
            instance: "other".into(),
            ..record()
        };
        assert!(!claim_record(&path, &other).unwrap(), "already claimed");
        assert_eq!(read_record(&path), Some(record()), "the first claim stays");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_queued_build_keeps_its_request_until_it_runs() {
        let request = StartBuild {
            request_id: "req-1".into(),
            repository: RepoName::parse("PRX/app").unwrap(),
            commit: CommitSha::parse(&"a".repeat(40)).unwrap(),
            architecture: Architecture::Aarch64,
            clone_url: "file:///tmp/app".into(),
            source_version: "main".into(),
            buildspec: "version: 0.2\n".into(),
            environment: [("PRX_REPO".to_owned(), "PRX/app".to_owned())].into(),
            untrusted: true,
        };
        let queued = BuildRecord {
            request: Some(QueuedRequest::new(&request)),
            ..record()
        };
        let json = serde_json::to_string(&queued).unwrap();
        let back: BuildRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.queued_request(), Some(request));
        let running = back.clone().running();
        assert!(running.running);
        assert_eq!(
            running.queued_request(),
            None,
            "a running build is not started again"
        );
        assert_eq!(back.clone().finished("FAULT").request, None);
        assert_eq!(back.finished("FAULT").queued_request(), None);
        assert_eq!(
            record().queued_request(),
            None,
            "an earlier version's record"
        );
    }

    #[test]
    fn a_running_builds_record_keeps_its_buildspecs_variables_until_it_finishes() {
        let queued = BuildRecord {
            request: Some(QueuedRequest {
                commit: "a".repeat(40),
                architecture: Architecture::X86_64,
                buildspec: "version: 0.2\nenv:\n  variables:\n    SIGNING_KEY: sk-0123456789\nphases:\n  build:\n    commands:\n      - make\n"
                    .into(),
                environment: BTreeMap::new(),
                untrusted: false,
            }),
            ..record()
        };
        let running = queued.running();
        assert_eq!(
            running.buildspec_variables(),
            BTreeMap::from([("SIGNING_KEY".to_owned(), "sk-0123456789".to_owned())])
        );
        assert!(running.finished("FAULT").buildspec_variables().is_empty());
        assert!(
            record().buildspec_variables().is_empty(),
            "an earlier version's record"
        );
    }

    fn layout() -> Layout {
        Layout {
            builds_dir: PathBuf::from("/data/builds"),
            work_dir: PathBuf::from("/work"),
        }
    }

    #[test]
    fn a_request_id_always_maps_to_the_same_build_id() {
        // Pinned: a changed namespace would start repeated requests a second time.
        assert_eq!(
            build_id_for("req-1"),
            "local:66b536ec-835c-5090-9531-d2a0952238e0"
        );
        assert_eq!(build_id_for("req-1"), build_id_for("req-1"));
        assert_ne!(build_id_for("req-1"), build_id_for("req-2"));
    }

    #[test]
    fn a_request_finds_only_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            builds_dir: dir.path().to_owned(),
            work_dir: dir.path().join("work"),
        };
        assert!(
            find_record(&layout, "req-1").is_none(),
            "nothing recorded yet"
        );
        let record = record();
        write_record(&layout.record_path(&record.build_id), &record).unwrap();
        assert_eq!(find_record(&layout, "req-1"), Some(record.clone()));
        assert!(find_record(&layout, "req-2").is_none());
        // A record at the request's path written for another request is not the request's.
        let other = BuildRecord {
            request_id: "req-3".into(),
            ..record.clone()
        };
        write_record(&layout.record_path(&build_id_for("req-3")), &record).unwrap();
        assert!(find_record(&layout, "req-3").is_none());
        write_record(&layout.record_path(&build_id_for("req-3")), &other).unwrap();
        assert!(find_record(&layout, "req-3").is_some());
    }

    #[test]
    fn files_are_named_by_the_uuid_of_the_build_id() {
        let id = "local:66b536ec-835c-5090-9531-d2a0952238e0";
        let uuid = "66b536ec-835c-5090-9531-d2a0952238e0";
        assert_eq!(uuid_of(id), uuid);
        assert_eq!(uuid_of(uuid), uuid, "a bare uuid is taken as is");
        let layout = layout();
        assert_eq!(
            layout.record_path(id),
            Path::new("/data/builds").join(format!("{uuid}.json"))
        );
        assert_eq!(
            layout.log_path(id),
            Path::new("/data/builds").join(format!("{uuid}.log"))
        );
        assert_eq!(
            layout.driver_path(id),
            Path::new("/data/builds").join(format!("{uuid}.sh"))
        );
        assert_eq!(layout.build_dir(id), Path::new("/work").join(uuid));
        assert_eq!(
            log_url(&layout.log_path(id)),
            format!("file:///data/builds/{uuid}.log")
        );
    }

    #[test]
    fn the_record_format_is_stable() {
        // As written by earlier versions: a restarted runner must read it.
        let json = r#"{
  "build_id": "local:66b536ec-835c-5090-9531-d2a0952238e0",
  "request_id": "req-1",
  "repository": "PRX/app",
  "clone_url": "file:///tmp/app",
  "source_version": "main",
  "start_time_unix": 1504282349,
  "environment": [["PRX_REPO", "PRX/app"]],
  "final_status": null
}"#;
        let parsed: BuildRecord = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, record());
        let written = serde_json::to_value(record().finished("SUCCEEDED")).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(json).unwrap();
        expected["final_status"] = "SUCCEEDED".into();
        assert_eq!(written, expected);
    }

    #[test]
    fn records_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        write_record(&path, &record()).unwrap();
        write_record(&path, &record().finished("FAULT")).unwrap();
        assert_eq!(read_record(&path), Some(record().finished("FAULT")));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b.json"], "no temporary file left behind");
    }

    #[test]
    fn only_readable_json_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("b.log");
        std::fs::write(&log, serde_json::to_vec(&record()).unwrap()).unwrap();
        assert_eq!(read_record(&log), None, "not a .json file");
        let torn = dir.path().join("c.json");
        std::fs::write(&torn, b"{\"build_id\":").unwrap();
        assert_eq!(read_record(&torn), None);
        assert_eq!(read_record(&dir.path().join("missing.json")), None);
    }

    #[test]
    fn the_report_info_comes_from_the_record_and_the_config() {
        let info = record().info(&layout(), "000000000000", Duration::from_secs(61));
        assert_eq!(info.build_id, build_id_for("req-1"));
        assert_eq!(info.account, "000000000000");
        assert_eq!(info.region, "");
        assert_eq!(info.timeout_minutes, 2, "rounded up to whole minutes");
        assert_eq!(info.start_time.unix_timestamp(), 1_504_282_349);
        assert_eq!(
            info.log_path,
            "/data/builds/66b536ec-835c-5090-9531-d2a0952238e0.log"
        );
        assert_eq!(info.log_url, format!("file://{}", info.log_path));
        assert_eq!(info.environment, record().environment);
        let exact = record().info(&layout(), "", Duration::from_secs(3600));
        assert_eq!(exact.timeout_minutes, 60);
    }

    #[test]
    fn an_unrepresentable_start_time_reads_as_now() {
        let before = OffsetDateTime::now_utc();
        let record = BuildRecord {
            start_time_unix: i64::MAX,
            ..record()
        };
        let info = record.info(&layout(), "", Duration::from_secs(60));
        assert!(info.start_time >= before);
    }
}
