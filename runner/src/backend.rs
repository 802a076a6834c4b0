//! [`LocalRunner`], the [`BuildBackend`] that runs builds on this machine.
//!
//! It accepts a build once per request id (claimed in its record, so runners sharing a data dir
//! never both run it), hands it to its own task ([`crate::build`]), stops it on request, and
//! on shutdown interrupts running builds (`FAULT`) and leaves queued ones for the next start; at
//! start it starts its builds a previous process left queued and reports the ones it left
//! running as `FAULT`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prx_ci_shared::Runtime;
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::build::{Shared, run_build};
use crate::build_log::BuildLog;
use crate::config::LocalRunnerConfig;
use crate::environment::reported_variables;
use crate::isolation::Launcher;
use crate::record::{
    self, BuildRecord, Layout, QueuedRequest, claim_record, find_record, read_record,
};
use crate::registry::{BuildControl, Registry};
use crate::reporter::{self, Timeline, publish_report};
use prx_ci_shared::codebuild::build::{LOCAL_BACKEND, SourceVersion, status};
use prx_ci_shared::log_tail::Redactor;

/// How long [`LocalRunner::shutdown`] waits for builds to stop and their reports to be stored.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The local build backend. Cheap to share: `Arc<LocalRunner>` is an `Arc<dyn BuildBackend>`.
#[derive(Debug)]
pub struct LocalRunner {
    shared: Arc<Shared>,
    /// Every build task and FAULT report; shutdown waits for them.
    tasks: TaskTracker,
    /// The lock on this instance's name in the data dir, held until shutdown (see
    /// [`lock_instance`]).
    instance_lock: std::sync::Mutex<Option<std::fs::File>>,
}

/// Locks `builds/.instance-<name>.lock` (exclusive, not waiting): two runners sharing a data
/// dir under one instance name would each recover the other's builds (report its running ones
/// `FAULT`, run its queued ones again). The lock goes with the process, however it ends.
fn lock_instance(builds_dir: &std::path::Path, instance: &str) -> anyhow::Result<std::fs::File> {
    let name = if instance.is_empty() {
        "default"
    } else {
        instance
    };
    let path = builds_dir.join(format!(".instance-{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another runner with instance {:?} is using the data dir {}: give each runner that shares a data dir its own [runner] instance",
            instance,
            builds_dir.parent().unwrap_or(builds_dir).display()
        ),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

impl LocalRunner {
    /// Creates the data directory (`builds/`) and the work directory, captures the inherited
    /// environment, checks that builds can be isolated as configured (see
    /// `docs/local-runner.md`), and recovers the builds a previous process left unfinished
    /// ([`LocalRunner::recover_builds`]).
    pub fn new(rt: Runtime, mut config: LocalRunnerConfig) -> anyhow::Result<Arc<LocalRunner>> {
        use prx_ci_shared::config::Validate as _;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid [runner] configuration: {reason}"))?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the runner data dir {}",
                config.data_dir.display()
            )
        })?;
        config.data_dir = config.data_dir.canonicalize().with_context(|| {
            format!(
                "cannot resolve the runner data dir {}",
                config.data_dir.display()
            )
        })?;
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("cannot create the work dir {}", config.work_dir.display()))?;
        config.work_dir = config.work_dir.canonicalize().with_context(|| {
            format!("cannot resolve the work dir {}", config.work_dir.display())
        })?;
        let builds_dir = config.data_dir.join("builds");
        std::fs::create_dir_all(&builds_dir)
            .with_context(|| format!("cannot create {}", builds_dir.display()))?;
        let instance_lock = lock_instance(&builds_dir, &config.instance)?;
        let work_dir = config.work_dir.clone();
        let hidden = hidden_paths(&config)?;
        let launcher = Launcher::new(
            config.isolation,
            &config.shell,
            hidden,
            // Unique per runner: several runners of one process (tests) may share a work dir.
            &work_dir.join(format!(".probe-{}", uuid::Uuid::new_v4())),
        )?;
        let inherited = config
            .inherit_env
            .iter()
            .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
            .collect();
        let runner = Arc::new(LocalRunner {
            shared: Arc::new(Shared {
                publisher: rt.publisher.clone(),
                slots: Arc::new(Semaphore::new(config.max_concurrent_builds)),
                config,
                layout: Layout {
                    builds_dir,
                    work_dir,
                },
                launcher,
                registry: Registry::default(),
                inherited,
                shutdown: CancellationToken::new(),
            }),
            tasks: TaskTracker::new(),
            instance_lock: std::sync::Mutex::new(Some(instance_lock)),
        });
        runner.recover_builds();
        Ok(runner)
    }

    /// The configuration in use (with the data dir made absolute).
    pub fn config(&self) -> &LocalRunnerConfig {
        &self.shared.config
    }

    /// The build id a request id maps to (`local:<uuid v5>`).
    pub fn build_id_for(request_id: &str) -> String {
        record::build_id_for(request_id)
    }

    /// The log file of a build.
    pub fn log_path(&self, build_id: &str) -> PathBuf {
        self.shared.layout.log_path(build_id)
    }

    /// Interrupts every running build (reported `FAULT`: the system's failure, re-run by the
    /// dispatcher), leaves queued builds for the next start, refuses new ones, and waits
    /// (bounded) until their processes are gone and their final reports are stored.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                wait = ?SHUTDOWN_WAIT,
                "local builds or their reports did not finish before shutdown"
            );
        }
        // Another runner may take this instance over now.
        self.instance_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Runs an accepted build in its own task.
    fn run(&self, control: Arc<BuildControl>, request: StartBuild, record: BuildRecord) {
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            run_build(shared, control, request, record).await;
        });
    }

    /// This runner's builds that a previous process left without a final status: a build
    /// still queued is started again (it never ran); a running one is reported `FAULT` (the
    /// system's failure, so the dispatcher re-runs it), with the same event ids as a real
    /// final report, so if that one was stored after all, this one deduplicates.
    fn recover_builds(&self) {
        let Ok(entries) = std::fs::read_dir(&self.shared.layout.builds_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(record) = read_record(&entry.path()) else {
                continue;
            };
            if record.final_status.is_some() || record.instance != self.shared.config.instance {
                continue;
            }
            if let Some(request) = record.queued_request() {
                let started = started(&self.shared.layout, &record.build_id);
                let control = BuildControl::new(started, self.shared.shutdown.child_token());
                if let Some(control) = self.shared.registry.register(control, || false) {
                    tracing::info!(build_id = %record.build_id, "starting a build queued before the runner restarted");
                    self.run(control, request, record);
                }
                continue;
            }
            let shared = self.shared.clone();
            self.tasks.spawn(async move {
                let config = &shared.config;
                let info = record.info(&shared.layout, &config.aws_account_id, config.timeout);
                let mut timeline = Timeline::new(info);
                let now = OffsetDateTime::now_utc();
                let event = timeline.completed(status::FAULT, Vec::new(), now);
                let log = BuildLog::new(timeline.info.log_path.clone());
                log.line("the runner stopped while this build was running; reported as FAULT");
                // What the build's own run masks: its reported, inherited and buildspec
                // variables (the record keeps the request, so its buildspec, while it runs).
                let buildspec = record.buildspec_variables();
                let redactor = Redactor::for_variables(
                    timeline
                        .info
                        .environment
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .chain(
                            shared
                                .inherited
                                .iter()
                                .chain(&buildspec)
                                .map(|(k, v)| (k.as_str(), v.as_str())),
                        ),
                );
                let envelope =
                    reporter::envelope(&event, &record.repository, now, Some(log.tail(&redactor)));
                if publish_report(&shared.publisher, &envelope, &shared.shutdown).await {
                    shared.layout.save_record(&record.finished(status::FAULT));
                }
            });
        }
    }
}

/// What builds must not see: the data dir (other builds' logs and records), the work root
/// (other builds' checkouts; a build's own dir is mounted back, even under a hidden path), and
/// `hidden_paths`. The work dir and the data dir must not contain each other.
fn hidden_paths(config: &LocalRunnerConfig) -> anyhow::Result<Vec<PathBuf>> {
    if config.work_dir.starts_with(&config.data_dir)
        || config.data_dir.starts_with(&config.work_dir)
    {
        anyhow::bail!(
            "invalid [runner] configuration: work_dir {} and data_dir {} must be outside each other",
            config.work_dir.display(),
            config.data_dir.display()
        );
    }
    let mut hidden = vec![config.data_dir.clone(), config.work_dir.clone()];
    for path in &config.hidden_paths {
        let absolute = match path.canonicalize() {
            Ok(path) => path,
            Err(_) if path.is_absolute() => path.clone(),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot resolve hidden path {}", path.display()));
            }
        };
        hidden.push(absolute);
    }
    Ok(hidden)
}

/// What the runner answers for its build `build_id`.
fn started(layout: &Layout, build_id: &str) -> StartedBuild {
    StartedBuild {
        build_id: build_id.to_owned(),
        backend: LOCAL_BACKEND.to_owned(),
        project: reporter::PROJECT.to_owned(),
        region: String::new(),
        log_url: record::log_url(&layout.log_path(build_id)),
    }
}

#[async_trait::async_trait]
impl BuildBackend for LocalRunner {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            return Err(BackendError::Transient(anyhow::anyhow!(
                "the local runner is shutting down"
            )));
        }
        // Every form CodeBuild accepts, and nothing git could read as an option or refspec.
        if let Err(err) = SourceVersion::parse(&request.source_version) {
            return Err(BackendError::Permanent(anyhow::Error::new(err)));
        }
        let build_id = record::build_id_for(&request.request_id);
        let layout = &shared.layout;
        let started = started(layout, &build_id);
        let record_path = layout.record_path(&build_id);
        let control = BuildControl::new(started.clone(), shared.shutdown.child_token());
        // A record means a build of this request was accepted before (perhaps in an earlier
        // process, or by another runner sharing the data dir): it must not run twice.
        let Some(control) = shared.registry.register(control, || record_path.exists()) else {
            tracing::info!(%build_id, request_id = %request.request_id, "build already started");
            return Ok(started);
        };
        let record = BuildRecord {
            build_id: build_id.clone(),
            request_id: request.request_id.clone(),
            repository: request.repository.to_string(),
            clone_url: request.clone_url.clone(),
            source_version: request.source_version.clone(),
            start_time_unix: OffsetDateTime::now_utc().unix_timestamp(),
            environment: reported_variables(
                &shared.config,
                &request.environment,
                request.untrusted,
            )
            .into_iter()
            .collect(),
            final_status: None,
            instance: shared.config.instance.clone(),
            running: false,
            request: Some(QueuedRequest::new(&request)),
        };
        match claim_record(&record_path, &record) {
            Ok(true) => {}
            Ok(false) => {
                shared.registry.remove(&build_id);
                tracing::info!(%build_id, request_id = %request.request_id, "build already started by another runner");
                return Ok(started);
            }
            Err(err) => {
                shared.registry.remove(&build_id);
                return Err(BackendError::Transient(err));
            }
        }
        tracing::info!(
            %build_id,
            request_id = %request.request_id,
            repository = %request.repository,
            commit = %request.commit,
            "local build accepted"
        );
        self.run(control, request, record);
        Ok(started)
    }

    async fn find(
        &self,
        request: &StartBuild,
        _since: OffsetDateTime,
    ) -> Result<Option<StartedBuild>, BackendError> {
        // Its own records: a build is recorded before it runs, and kept after it finished.
        let layout = &self.shared.layout;
        Ok(find_record(layout, &request.request_id).map(|r| started(layout, &r.build_id)))
    }

    async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError> {
        let Some(control) = self.shared.registry.get(build_id) else {
            return Ok(StopOutcome::AlreadyFinished);
        };
        let outcome = control.request_stop();
        if outcome == StopOutcome::Stopped {
            tracing::info!(build_id = %control.started.build_id, "stopping local build");
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(data_dir: &Path, work_dir: &Path) -> LocalRunnerConfig {
        LocalRunnerConfig {
            data_dir: data_dir.to_owned(),
            work_dir: work_dir.to_owned(),
            ..LocalRunnerConfig::default()
        }
    }

    #[test]
    fn one_runner_per_instance_name_and_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_instance(dir.path(), "a").unwrap();
        let err = lock_instance(dir.path(), "a").unwrap_err();
        assert!(
            err.to_string()
                .contains("another runner with instance \"a\""),
            "{err}"
        );
        lock_instance(dir.path(), "b").expect("another name is another runner");
        lock_instance(dir.path(), "").expect("the unnamed runner");
        drop(held);
        lock_instance(dir.path(), "a").expect("free again once the first is gone");
    }

    #[test]
    fn builds_never_see_the_data_dir_or_the_work_root() {
        let hidden = hidden_paths(&config(Path::new("/data"), Path::new("/work"))).unwrap();
        assert_eq!(hidden, [PathBuf::from("/data"), PathBuf::from("/work")]);
    }

    #[test]
    fn the_work_dir_and_the_data_dir_must_not_contain_each_other() {
        for (data, work) in [("/x", "/x/work"), ("/x/data", "/x"), ("/x", "/x")] {
            let err = hidden_paths(&config(Path::new(data), Path::new(work))).unwrap_err();
            assert!(
                err.to_string().contains("must be outside each other"),
                "{data} {work}: {err}"
            );
        }
        // A shared prefix of names is not containment.
        assert!(hidden_paths(&config(Path::new("/x/data"), Path::new("/x/data-work"))).is_ok());
    }

    #[test]
    fn hidden_paths_are_resolved_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("secrets")).unwrap();
        std::os::unix::fs::symlink(real.join("secrets"), real.join("link")).unwrap();
        let mut config = config(Path::new("/data"), Path::new("/work"));
        config.hidden_paths = vec![real.join("link"), PathBuf::from("/no/such/path")];
        let hidden = hidden_paths(&config).unwrap();
        assert_eq!(
            hidden[2..],
            [real.join("secrets"), PathBuf::from("/no/such/path")],
            "a symlink is hidden where it points; a missing absolute path is kept"
        );
        config.hidden_paths = vec![PathBuf::from("no/such/relative/path")];
        let err = hidden_paths(&config).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot resolve hidden path no/such/relative/path"),
            "{err}"
        );
    }
}
