//! [`LocalRunner`]: the [`BuildBackend`] that runs builds on this machine, and the per-build
//! task (queue slot, clone, driver shell, timeout, stop, reports).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use prx_ci_proto::v1::Envelope;
use prx_ci_shared::Runtime;
use prx_ci_shared::bus::publish::{EventPublisher, PublishError};
use prx_ci_shared::codebuild::backend::{
    BackendError, BuildBackend, StartBuild, StartedBuild, StopOutcome,
};
use prx_ci_shared::codebuild::event::CodeBuildEvent;
use prx_ci_shared::retry::{Backoff, Retry, retry};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::buildspec::{Buildspec, PhaseName, parse_buildspec};
use crate::config::LocalRunnerConfig;
use crate::driver::{
    CommandList, Control, DriverFiles, driver_script, parse_control, parse_exports, resume_script,
};
use crate::environment::{BuiltIns, inherited_variables, process_environment, reported_variables};
use crate::isolation::{BuildProcess, Launcher};
use crate::report::{self, BuildInfo, Timeline, status};

/// Namespace of local build ids (UUID v5 of the request id). Never change it: a repeated start
/// must map to the same build.
const BUILD_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7a3c_1e55_90d4_4b2f_8c61_2d9e_4f0b_0002);

/// Backoff for publishing reports: retried as long as the runner runs (a report is never
/// dropped because the broker is briefly down).
const REPORT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(5),
    max_attempts: u32::MAX,
};

/// After shutdown starts, how long unsent reports are still retried.
const SHUTDOWN_REPORT_GRACE: Duration = Duration::from_secs(10);

/// How long [`LocalRunner::shutdown`] waits for builds to stop and their reports to be stored.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The local build backend. Cheap to share: `Arc<LocalRunner>` is an `Arc<dyn BuildBackend>`.
#[derive(Debug)]
pub struct LocalRunner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    publisher: EventPublisher,
    config: LocalRunnerConfig,
    builds_dir: PathBuf,
    work_dir: PathBuf,
    launcher: Launcher,
    slots: Arc<Semaphore>,
    builds: Mutex<HashMap<String, Arc<BuildControl>>>,
    inherited: BTreeMap<String, String>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A build this process knows about.
#[derive(Debug)]
struct BuildControl {
    started: StartedBuild,
    /// Cancelled by `stop` (and by shutdown, its parent).
    stop: CancellationToken,
    /// Set once the build's processes are gone; `stop` then answers `AlreadyFinished`.
    finished: Mutex<bool>,
}

/// What is persisted per build (`builds/<uuid>.json`): a restart must neither start a build a
/// second time nor leave one without a final report.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BuildRecord {
    build_id: String,
    request_id: String,
    repository: String,
    clone_url: String,
    source_version: String,
    start_time_unix: i64,
    environment: Vec<(String, String)>,
    /// The final status, once its report is stored.
    final_status: Option<String>,
}

/// Why a build was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    TimedOut,
    Stopped,
}

impl Interruption {
    fn status(self) -> &'static str {
        match self {
            Interruption::TimedOut => status::TIMED_OUT,
            Interruption::Stopped => status::STOPPED,
        }
    }

    fn context(self, timeout: Duration) -> String {
        match self {
            Interruption::TimedOut => format!(
                "BUILD_TIMED_OUT: Build has timed out (timeout {}s)",
                timeout.as_secs()
            ),
            Interruption::Stopped => "BUILD_STOPPED: Build was stopped".to_owned(),
        }
    }
}

impl LocalRunner {
    /// Creates the data directory (`builds/`) and the work directory, captures the inherited
    /// environment, checks that builds can be isolated as configured (see
    /// `docs/local-runner.md`), and reports builds a previous process left unfinished as
    /// `FAULT`.
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
            inner: Arc::new(Inner {
                publisher: rt.publisher.clone(),
                slots: Arc::new(Semaphore::new(config.max_concurrent_builds)),
                config,
                builds_dir,
                work_dir,
                launcher,
                builds: Mutex::new(HashMap::new()),
                inherited,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        });
        runner.report_interrupted_builds();
        Ok(runner)
    }

    /// The configuration in use (with the data dir made absolute).
    pub fn config(&self) -> &LocalRunnerConfig {
        &self.inner.config
    }

    /// The build id a request id maps to (`local:<uuid v5>`).
    pub fn build_id_for(request_id: &str) -> String {
        format!("local:{}", build_uuid(request_id))
    }

    /// The log file of a build.
    pub fn log_path(&self, build_id: &str) -> PathBuf {
        let uuid = build_id.strip_prefix("local:").unwrap_or(build_id);
        self.inner.builds_dir.join(format!("{uuid}.log"))
    }

    /// Stops every running and queued build (each reported `STOPPED`), refuses new ones, and
    /// waits (bounded) until their processes are gone and their final reports are stored.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                wait = ?SHUTDOWN_WAIT,
                "local builds or their reports did not finish before shutdown"
            );
        }
    }

    /// Builds recorded without a final status ran in a process that died: report them as
    /// `FAULT` (with the same event ids as a real final report, so if that one was stored
    /// after all, this one deduplicates).
    fn report_interrupted_builds(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.builds_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(record) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<BuildRecord>(&bytes).ok())
            else {
                continue;
            };
            if record.final_status.is_some() {
                continue;
            }
            let inner = self.inner.clone();
            self.inner.tasks.spawn(async move {
                let info = inner.build_info(&record);
                let mut timeline = Timeline::new(info);
                let now = OffsetDateTime::now_utc();
                let event = timeline.completed(status::FAULT, Vec::new(), now);
                inner.log_line(
                    &timeline.info.log_path,
                    "the runner stopped while this build was running; reported as FAULT",
                );
                let envelope = report::envelope(&event, &record.repository, now);
                if publish_report(&inner.publisher, &envelope, &inner.shutdown).await {
                    inner.save_record(&BuildRecord {
                        final_status: Some(status::FAULT.to_owned()),
                        ..record
                    });
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

fn build_uuid(request_id: &str) -> Uuid {
    Uuid::new_v5(&BUILD_ID_NAMESPACE, request_id.as_bytes())
}

#[async_trait::async_trait]
impl BuildBackend for LocalRunner {
    async fn start(&self, request: StartBuild) -> Result<StartedBuild, BackendError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(BackendError::Transient(anyhow::anyhow!(
                "the local runner is shutting down"
            )));
        }
        if request.source_version.trim().is_empty() || request.source_version.starts_with('-') {
            return Err(BackendError::Permanent(anyhow::anyhow!(
                "invalid source version {:?}",
                request.source_version
            )));
        }
        let uuid = build_uuid(&request.request_id);
        let build_id = format!("local:{uuid}");
        let log_path = inner.builds_dir.join(format!("{uuid}.log"));
        let started = StartedBuild {
            build_id: build_id.clone(),
            backend: "local".to_owned(),
            project: report::PROJECT.to_owned(),
            region: String::new(),
            log_url: format!("file://{}", log_path.display()),
        };
        let record_path = inner.builds_dir.join(format!("{uuid}.json"));
        let control = {
            let mut builds = inner.builds.lock().unwrap_or_else(PoisonError::into_inner);
            if builds.contains_key(&build_id) || record_path.exists() {
                tracing::info!(%build_id, request_id = %request.request_id, "build already started");
                return Ok(started);
            }
            let control = Arc::new(BuildControl {
                started: started.clone(),
                stop: inner.shutdown.child_token(),
                finished: Mutex::new(false),
            });
            builds.insert(build_id.clone(), control.clone());
            control
        };
        let record = BuildRecord {
            build_id: build_id.clone(),
            request_id: request.request_id.clone(),
            repository: request.repository.to_string(),
            clone_url: request.clone_url.clone(),
            source_version: request.source_version.clone(),
            start_time_unix: OffsetDateTime::now_utc().unix_timestamp(),
            environment: reported_variables(&inner.config, &request.environment, request.untrusted)
                .into_iter()
                .collect(),
            final_status: None,
        };
        if let Err(err) = write_record(&record_path, &record) {
            inner
                .builds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&build_id);
            return Err(BackendError::Transient(err));
        }
        tracing::info!(
            %build_id,
            request_id = %request.request_id,
            repository = %request.repository,
            commit = %request.commit,
            "local build accepted"
        );
        let task_inner = inner.clone();
        inner.tasks.spawn(async move {
            run_build(task_inner, control, request, record).await;
        });
        Ok(started)
    }

    async fn stop(&self, build_id: &str) -> Result<StopOutcome, BackendError> {
        let control = self
            .inner
            .builds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(build_id)
            .cloned();
        let Some(control) = control else {
            return Ok(StopOutcome::AlreadyFinished);
        };
        let finished = control
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *finished {
            return Ok(StopOutcome::AlreadyFinished);
        }
        control.stop.cancel();
        tracing::info!(build_id = %control.started.build_id, "stopping local build");
        Ok(StopOutcome::Stopped)
    }
}

fn write_record(path: &Path, record: &BuildRecord) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(record).context("cannot encode the build record")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

impl Inner {
    fn build_info(&self, record: &BuildRecord) -> BuildInfo {
        let uuid = record
            .build_id
            .strip_prefix("local:")
            .unwrap_or(&record.build_id);
        let log_path = self.builds_dir.join(format!("{uuid}.log"));
        BuildInfo {
            build_id: record.build_id.clone(),
            repository: record.repository.clone(),
            account: self.config.aws_account_id.clone(),
            region: String::new(),
            clone_url: record.clone_url.clone(),
            source_version: record.source_version.clone(),
            start_time: OffsetDateTime::from_unix_timestamp(record.start_time_unix)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            timeout_minutes: self.config.timeout.as_secs().div_ceil(60),
            environment: record.environment.clone(),
            log_url: format!("file://{}", log_path.display()),
            log_path: log_path.display().to_string(),
        }
    }

    fn save_record(&self, record: &BuildRecord) {
        let uuid = record
            .build_id
            .strip_prefix("local:")
            .unwrap_or(&record.build_id);
        let path = self.builds_dir.join(format!("{uuid}.json"));
        if let Err(err) = write_record(&path, record) {
            tracing::warn!(error = %format!("{err:#}"), "cannot update the build record");
        }
    }

    /// Appends a runner line to a build log (best effort: the log is for people).
    fn log_line(&self, log_path: &str, message: &str) {
        let line = format!(
            "[prx-ci] {} {message}\n",
            report::codebuild_time(OffsetDateTime::now_utc())
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(err) = written {
            tracing::warn!(%log_path, error = %err, "cannot write the build log");
        }
    }
}

/// Publishes one report, retrying until stored; gives up only some time after shutdown.
async fn publish_report(
    publisher: &EventPublisher,
    envelope: &Envelope,
    shutdown: &CancellationToken,
) -> bool {
    let publish = retry(
        &REPORT_BACKOFF,
        |_| publisher.publish(envelope),
        |err| match err {
            PublishError::Envelope(_) => Retry::Never,
            _ => Retry::Backoff,
        },
    );
    let give_up = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_REPORT_GRACE).await;
    };
    tokio::select! {
        result = publish => match result {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(event_id = %envelope.event_id, error = %err, "build report lost");
                false
            }
        },
        () = give_up => {
            tracing::error!(event_id = %envelope.event_id, "build report not stored before shutdown");
            false
        }
    }
}

/// Publishes a build's reports one at a time, in order, each after the previous one's ack.
async fn run_reporter(
    publisher: EventPublisher,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    shutdown: CancellationToken,
) -> bool {
    let mut all_stored = true;
    while let Some(envelope) = rx.recv().await {
        all_stored &= publish_report(&publisher, &envelope, &shutdown).await;
    }
    all_stored
}

/// One build from acceptance to its final report.
async fn run_build(
    inner: Arc<Inner>,
    control: Arc<BuildControl>,
    request: StartBuild,
    record: BuildRecord,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(run_reporter(
        inner.publisher.clone(),
        rx,
        inner.shutdown.clone(),
    ));
    let uuid = record
        .build_id
        .strip_prefix("local:")
        .unwrap_or(&record.build_id)
        .to_owned();
    let build_dir = inner.work_dir.join(&uuid);
    let mut build = Build {
        timeline: Timeline::new(inner.build_info(&record)),
        src_dir: build_dir.join("src"),
        driver_path: inner.builds_dir.join(format!("{uuid}.sh")),
        exports_path: build_dir.join("exports"),
        control_path: build_dir.join("control"),
        state_path: build_dir.join("state"),
        build_dir,
        inner: inner.clone(),
        control: control.clone(),
        request,
        reports: tx,
    };
    let span = tracing::info_span!("local_build", build_id = %record.build_id, repository = %record.repository);
    let final_status = tracing::Instrument::instrument(build.execute(), span).await;
    drop(build);
    let stored = reporter.await.unwrap_or(false);
    // From now on the record answers repeated starts, and `stop` finds nothing to stop.
    inner
        .builds
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&record.build_id);
    if stored {
        inner.save_record(&BuildRecord {
            final_status: Some(final_status.to_owned()),
            ..record
        });
    }
}

/// The state of one running build.
struct Build {
    inner: Arc<Inner>,
    control: Arc<BuildControl>,
    request: StartBuild,
    timeline: Timeline,
    /// `<work_dir>/<uuid>`: the checkout (`src/`) and the driver's files; the only part of the
    /// work root an isolated build sees.
    build_dir: PathBuf,
    src_dir: PathBuf,
    /// The driver script as kept for inspection (`builds/<uuid>.sh`); the build runs a copy in
    /// `build_dir`.
    driver_path: PathBuf,
    exports_path: PathBuf,
    control_path: PathBuf,
    state_path: PathBuf,
    reports: mpsc::UnboundedSender<Envelope>,
}

/// How the phases went.
struct PhasesOutcome {
    interrupted: Option<Interruption>,
    exported: Vec<(String, String)>,
    post_build_ran: bool,
}

impl Build {
    fn send(&self, event: &CodeBuildEvent) {
        let envelope = report::envelope(
            event,
            &self.timeline.info.repository,
            OffsetDateTime::now_utc(),
        );
        // The reporter outlives every sender; a send error means it panicked, logged there.
        let _ = self.reports.send(envelope);
    }

    fn start_phase(&mut self, phase_type: &str) {
        self.log(&format!("Entering phase {phase_type}"));
        self.timeline
            .start_phase(phase_type, OffsetDateTime::now_utc());
    }

    fn end_phase(&mut self, phase_status: &str, context: Vec<String>) {
        if let Some(current) = self.timeline.current() {
            let line = format!(
                "Phase complete: {} State: {phase_status}",
                current.phase_type
            );
            self.log(&line);
        }
        if let Some(event) =
            self.timeline
                .end_phase(phase_status, context, OffsetDateTime::now_utc())
        {
            self.send(&event);
        }
    }

    fn log(&self, message: &str) {
        self.inner.log_line(&self.timeline.info.log_path, message);
    }

    fn interrupted(&self, deadline: Instant) -> impl Future<Output = Interruption> + 'static {
        let stop = self.control.stop.clone();
        async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => Interruption::TimedOut,
                () = stop.cancelled() => Interruption::Stopped,
            }
        }
    }

    /// Runs the build; returns its final status after sending every report.
    async fn execute(&mut self) -> &'static str {
        let now = OffsetDateTime::now_utc();
        self.log(&format!(
            "Build {} of {} at {} accepted",
            self.timeline.info.build_id, self.request.repository, self.request.source_version
        ));
        self.timeline.start_phase("SUBMITTED", now);
        let started = self.timeline.started(now);
        self.send(&started);
        self.end_phase(status::SUCCEEDED, Vec::new());

        self.start_phase("QUEUED");
        let slots = self.inner.slots.clone();
        let permit = tokio::select! {
            biased;
            () = self.control.stop.cancelled() => None,
            permit = slots.acquire_owned() => permit.ok(),
        };
        let Some(_permit) = permit else {
            let context = Interruption::Stopped.context(self.inner.config.timeout);
            self.end_phase(status::STOPPED, vec![context]);
            return self.complete(status::STOPPED, Vec::new());
        };
        self.end_phase(status::SUCCEEDED, Vec::new());

        let deadline = Instant::now() + self.inner.config.timeout;
        let outcome = self.run_phases(deadline).await;
        let stopped_meanwhile = {
            let mut finished = self
                .control
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *finished = true;
            self.control.stop.is_cancelled()
        };

        let final_status = match (outcome.interrupted, stopped_meanwhile) {
            (Some(why), _) => why.status(),
            // `stop` answered Stopped before the build finished on its own.
            (None, true) => status::STOPPED,
            (None, false) if self.all_phases_succeeded() => status::SUCCEEDED,
            (None, false) => status::FAILED,
        };
        if outcome.interrupted.is_none() && outcome.post_build_ran {
            self.start_phase("UPLOAD_ARTIFACTS");
            self.end_phase(status::SUCCEEDED, Vec::new());
        }
        self.start_phase("FINALIZING");
        self.clean_up().await;
        self.end_phase(status::SUCCEEDED, Vec::new());
        self.complete(final_status, outcome.exported)
    }

    fn all_phases_succeeded(&self) -> bool {
        self.timeline
            .phases
            .iter()
            .all(|p| p.status.as_deref().is_none_or(|s| s == status::SUCCEEDED))
    }

    fn complete(
        &mut self,
        final_status: &'static str,
        exported: Vec<(String, String)>,
    ) -> &'static str {
        self.log(&format!("Build {final_status}"));
        let event = self
            .timeline
            .completed(final_status, exported, OffsetDateTime::now_utc());
        self.send(&event);
        tracing::info!(status = final_status, "local build finished");
        final_status
    }

    /// Removes the saved shell state (it holds the build's variables).
    async fn remove_state(&self) {
        let _ = tokio::fs::remove_file(&self.state_path).await;
        let _ = tokio::fs::remove_file(self.state_path.with_extension("state.opts")).await;
    }

    async fn clean_up(&mut self) {
        let _ = tokio::fs::remove_file(&self.exports_path).await;
        self.remove_state().await;
        if self.inner.config.keep_workdirs {
            self.log(&format!("Keeping work dir {}", self.build_dir.display()));
            return;
        }
        if let Err(err) = tokio::fs::remove_dir_all(&self.build_dir).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            self.log(&format!(
                "cannot remove work dir {}: {err}",
                self.build_dir.display()
            ));
        }
    }

    /// PROVISIONING, DOWNLOAD_SOURCE, then the buildspec phases in the driver shell.
    async fn run_phases(&mut self, deadline: Instant) -> PhasesOutcome {
        let mut outcome = PhasesOutcome {
            interrupted: None,
            exported: Vec::new(),
            post_build_ran: false,
        };
        let timeout = self.inner.config.timeout;

        self.start_phase("PROVISIONING");
        if let Err(err) = self.provision().await {
            self.end_phase(status::FAILED, vec![format!("CLIENT_ERROR: {err:#}")]);
            return outcome;
        }
        self.end_phase(status::SUCCEEDED, Vec::new());

        self.start_phase("DOWNLOAD_SOURCE");
        let spec = match parse_buildspec(&self.request.buildspec) {
            Ok(spec) => spec,
            Err(err) => {
                self.log(&err.to_string());
                self.end_phase(status::FAILED, vec![err.to_string()]);
                return outcome;
            }
        };
        for note in &spec.notes {
            self.log(note);
        }
        let resolved = match self.download_source(deadline).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(why)) => {
                self.end_phase(why.status(), vec![why.context(timeout)]);
                outcome.interrupted = Some(why);
                return outcome;
            }
            Err(err) => {
                let message = format!("CLIENT_ERROR: {err:#}");
                self.log(&message);
                self.end_phase(status::FAILED, vec![message]);
                return outcome;
            }
        };
        self.end_phase(status::SUCCEEDED, Vec::new());

        let mut driver = self.run_driver(&spec, &resolved, deadline, false).await;
        if let Ok(DriverOutcome {
            interrupted: None,
            resume: true,
        }) = driver
        {
            self.log("The shell exited during BUILD: running POST_BUILD in a new shell restored from its state");
            driver = self.run_driver(&spec, &resolved, deadline, true).await;
        }
        match driver {
            Ok(driver) => {
                outcome.interrupted = driver.interrupted;
                outcome.post_build_ran = self
                    .timeline
                    .phases
                    .iter()
                    .any(|p| p.phase_type == PhaseName::PostBuild.phase_type());
            }
            Err(err) => {
                let message = format!("CLIENT_ERROR: {err:#}");
                self.log(&message);
                if self.timeline.current().is_none() {
                    self.start_phase(PhaseName::Install.phase_type());
                }
                self.end_phase(status::FAILED, vec![message]);
            }
        }
        if outcome.interrupted.is_none() {
            match tokio::fs::read(&self.exports_path).await {
                Ok(bytes) => outcome.exported = parse_exports(&bytes),
                Err(err) if !spec.exported_variables.is_empty() => {
                    self.log(&format!("exported variables were not captured: {err}"));
                }
                Err(_) => {}
            }
        }
        outcome
    }

    async fn provision(&self) -> anyhow::Result<()> {
        match tokio::fs::remove_dir_all(&self.build_dir).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot clear {}", self.build_dir.display()));
            }
        }
        tokio::fs::create_dir_all(&self.build_dir)
            .await
            .with_context(|| format!("cannot create {}", self.build_dir.display()))
    }

    /// Clones and checks out the requested version; returns the resolved commit.
    async fn download_source(
        &mut self,
        deadline: Instant,
    ) -> anyhow::Result<Result<String, Interruption>> {
        let url = self.request.clone_url.clone();
        let version = self.request.source_version.clone();
        let src = self.src_dir.display().to_string();
        self.log(&format!("Cloning {url} into {src}"));
        let status = self
            .git(
                &["clone", "--no-checkout", "--quiet", "--", &url, &src],
                None,
                deadline,
            )
            .await?;
        match status {
            Err(why) => return Ok(Err(why)),
            Ok(s) if !s.success() => {
                anyhow::bail!("cannot clone {url}: git clone {}", exit_text(s))
            }
            Ok(_) => {}
        }
        let checkout = |rev: &str| {
            vec![
                "checkout".to_owned(),
                "--quiet".to_owned(),
                "--detach".to_owned(),
                rev.to_owned(),
                "--".to_owned(),
            ]
        };
        let checkout_args = checkout(&version);
        let status = self.git_in_src(&checkout_args, deadline).await?;
        match status {
            Err(why) => return Ok(Err(why)),
            Ok(s) if s.success() => {}
            Ok(_) => {
                // Not a branch, tag or commit of the clone: fetch it by name (`pr/N` is
                // CodeBuild's pull request syntax, `refs/pull/N/head` on GitHub).
                let refspec = match version.strip_prefix("pr/") {
                    Some(n) => format!("refs/pull/{n}/head"),
                    None => version.clone(),
                };
                self.log(&format!(
                    "{version} is not in the clone; fetching {refspec}"
                ));
                let fetch = [
                    "fetch".to_owned(),
                    "--quiet".to_owned(),
                    "origin".to_owned(),
                    refspec,
                ];
                match self.git_in_src(&fetch, deadline).await? {
                    Err(why) => return Ok(Err(why)),
                    Ok(s) if !s.success() => anyhow::bail!(
                        "cannot check out {version} of {url}: it is not in the repository (git fetch {})",
                        exit_text(s)
                    ),
                    Ok(_) => {}
                }
                match self.git_in_src(&checkout("FETCH_HEAD"), deadline).await? {
                    Err(why) => return Ok(Err(why)),
                    Ok(s) if !s.success() => {
                        anyhow::bail!("cannot check out {version}: git checkout {}", exit_text(s))
                    }
                    Ok(_) => {}
                }
            }
        }
        let output = Command::new("git")
            .args(["-C", &src, "rev-parse", "HEAD"])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run git rev-parse")?;
        if !output.status.success() {
            anyhow::bail!("cannot resolve the checked-out commit (git rev-parse HEAD)");
        }
        let resolved = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        self.log(&format!("Checked out {version} ({resolved})"));
        Ok(Ok(resolved))
    }

    async fn git_in_src(
        &self,
        args: &[String],
        deadline: Instant,
    ) -> anyhow::Result<Result<ExitStatus, Interruption>> {
        let src = self.src_dir.display().to_string();
        let mut all = vec!["-C", src.as_str()];
        all.extend(args.iter().map(String::as_str));
        self.git(&all, None, deadline).await
    }

    /// Runs git in its own process group with its output in the build log.
    async fn git(
        &self,
        args: &[&str],
        dir: Option<&Path>,
        deadline: Instant,
    ) -> anyhow::Result<Result<ExitStatus, Interruption>> {
        let log = self.open_log()?;
        let mut cmd = Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().context("cannot share the build log")?,
            ))
            .stderr(Stdio::from(log));
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        run_in_group(cmd, self.interrupted(deadline))
            .await
            .context("cannot run git")
    }

    fn open_log(&self) -> anyhow::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.timeline.info.log_path)
            .with_context(|| format!("cannot open the build log {}", self.timeline.info.log_path))
    }

    /// Runs the buildspec phases in the driver shell, reporting each phase as it ends.
    async fn run_driver(
        &mut self,
        spec: &Buildspec,
        resolved: &str,
        deadline: Instant,
        resume: bool,
    ) -> anyhow::Result<DriverOutcome> {
        let files = DriverFiles {
            exports: &self.exports_path,
            control: &self.control_path,
            state: &self.state_path,
        };
        let (script, first_phase) = if resume {
            (resume_script(spec, files), PhaseName::PostBuild)
        } else {
            (driver_script(spec, files), PhaseName::Install)
        };
        let driver_path = if resume {
            self.driver_path.with_extension("resume.sh")
        } else {
            self.driver_path.clone()
        };
        let _ = tokio::fs::remove_file(&self.control_path).await;
        tokio::fs::write(&driver_path, &script)
            .await
            .with_context(|| format!("cannot write {}", driver_path.display()))?;
        let run_path = self
            .build_dir
            .join(if resume { "resume.sh" } else { "driver.sh" });
        tokio::fs::write(&run_path, &script)
            .await
            .with_context(|| format!("cannot write {}", run_path.display()))?;
        let reported: BTreeMap<String, String> =
            self.timeline.info.environment.iter().cloned().collect();
        let builtins = BuiltIns {
            build_id: self.timeline.info.build_id.clone(),
            src_dir: self.src_dir.display().to_string(),
            source_version: self.request.source_version.clone(),
            resolved_source_version: resolved.to_owned(),
            source_repo_url: self.request.clone_url.clone(),
            start_time_ms: self.timeline.info.start_time.unix_timestamp_nanos() / 1_000_000,
        };
        let inherited = inherited_variables(&self.inner.inherited, self.request.untrusted);
        let env = process_environment(
            &self.inner.config,
            &inherited,
            &spec.variables,
            &reported,
            &builtins,
        );
        let log = self.open_log()?;
        let mut child = self.inner.launcher.spawn(
            &BuildProcess {
                shell: &self.inner.config.shell,
                script: &run_path,
                build_dir: &self.build_dir,
                work_dir: &self.src_dir,
                env: &env,
            },
            Stdio::piped(),
            Stdio::from(log),
        )?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .context("the build shell has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let interrupt = self.interrupted(deadline);
        tokio::pin!(interrupt);
        let mut interrupted = None;
        let mut done = false;
        let mut resume_next = false;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match self.handle_control(spec, &line) {
                        Some(Control::Done) => done = true,
                        Some(Control::ResumePostBuild) => resume_next = true,
                        _ => {}
                    },
                    Ok(None) | Err(_) => break,
                },
                why = &mut interrupt => {
                    kill_group(pid);
                    interrupted = Some(why);
                    break;
                }
            }
        }
        let exit = child.wait().await;
        // Background processes the build left behind go with it (CodeBuild drops the container).
        kill_group(pid);
        if interrupted.is_none()
            && !done
            && let Ok(text) = tokio::fs::read_to_string(&self.control_path).await
        {
            for line in text.lines() {
                match self.handle_control(spec, line) {
                    Some(Control::Done) => done = true,
                    Some(Control::ResumePostBuild) => resume_next = true,
                    _ => {}
                }
            }
        }
        let _ = tokio::fs::remove_file(&self.control_path).await;
        if let Some(why) = interrupted {
            self.log(&why.context(self.inner.config.timeout));
            if self.timeline.current().is_some() {
                self.end_phase(why.status(), vec![why.context(self.inner.config.timeout)]);
            }
        } else if !self
            .timeline
            .phases
            .iter()
            .any(|p| p.phase_type == first_phase.phase_type())
        {
            // The driver always enters its first phase: the shell failed before that.
            let text = exit
                .as_ref()
                .map_or_else(ToString::to_string, |s| exit_text(*s));
            let message = format!(
                "COMMAND_EXECUTION_ERROR: the build shell ended before running the buildspec ({text}); see the build log"
            );
            self.log(&message);
            self.start_phase(first_phase.phase_type());
            self.end_phase(status::FAILED, vec![message]);
        } else if !done || self.timeline.current().is_some() {
            let text = match &exit {
                Ok(s) => exit_text(*s),
                Err(e) => e.to_string(),
            };
            let message =
                format!("COMMAND_EXECUTION_ERROR: the build shell ended unexpectedly ({text})");
            self.log(&message);
            if self.timeline.current().is_some() {
                self.end_phase(status::FAILED, vec![message]);
            }
        }
        Ok(DriverOutcome {
            interrupted,
            resume: resume_next && !resume,
        })
    }
}

impl Build {
    /// Applies one control line; returns it.
    fn handle_control(&mut self, spec: &Buildspec, line: &str) -> Option<Control> {
        let control = parse_control(line);
        match &control {
            Some(Control::PhaseStart(phase)) => {
                self.timeline
                    .start_phase(phase.phase_type(), OffsetDateTime::now_utc());
            }
            Some(Control::PhaseEnd {
                phase,
                succeeded,
                failed,
            }) => {
                let (phase, succeeded) = (*phase, *succeeded);
                let (phase_status, context) = if succeeded {
                    (status::SUCCEEDED, Vec::new())
                } else {
                    (
                        status::FAILED,
                        vec![failure_context(spec, phase, failed.as_ref())],
                    )
                };
                if let Some(event) =
                    self.timeline
                        .end_phase(phase_status, context, OffsetDateTime::now_utc())
                {
                    self.send(&event);
                }
            }
            Some(Control::Done | Control::ResumePostBuild) => {}
            None => tracing::warn!(%line, "unexpected line on the control channel"),
        }
        control
    }
}

struct DriverOutcome {
    interrupted: Option<Interruption>,
    /// The shell exited during BUILD: POST_BUILD runs in a restored shell.
    resume: bool,
}

/// CodeBuild's message for a failed phase.
fn failure_context(
    spec: &Buildspec,
    phase: PhaseName,
    failed: Option<&crate::driver::FailedCommand>,
) -> String {
    let Some(failed) = failed else {
        return "COMMAND_EXECUTION_ERROR: the phase failed".to_owned();
    };
    let phase_spec = spec.phase(phase);
    let list = match failed.list {
        CommandList::Commands => &phase_spec.commands,
        CommandList::Finally => &phase_spec.finally,
    };
    let command = list.get(failed.index).map_or("?", String::as_str);
    format!(
        "COMMAND_EXECUTION_ERROR: Error while executing command: {command}. Reason: exit status {}",
        failed.exit_status
    )
}

fn exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit".to_owned(),
    }
}

/// Runs `cmd` as the leader of a new process group; on interruption kills the whole group.
async fn run_in_group(
    mut cmd: Command,
    interrupt: impl Future<Output = Interruption>,
) -> std::io::Result<Result<ExitStatus, Interruption>> {
    cmd.process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    tokio::select! {
        status = child.wait() => {
            kill_group(pid);
            status.map(Ok)
        }
        why = interrupt => {
            kill_group(pid);
            let _ = child.wait().await;
            Ok(Err(why))
        }
    }
}

/// Sends SIGKILL to the process group `pgid` (a group this runner created; errors such as
/// "no such process" mean it is already gone).
fn kill_group(pgid: Option<u32>) {
    let Some(pid) = pgid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}
