//! The per-build task: one build from acceptance to its final report.
//!
//! The queue slot, the phases (PROVISIONING, DOWNLOAD_SOURCE, the buildspec phases in the driver
//! shell, UPLOAD_ARTIFACTS, FINALIZING), the timeout and stop, the clean-up, and the reports each
//! transition sends. The rules it applies live in [`crate::outcome`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context as _;
use prx_ci_proto::v1::{self, Envelope};
use prx_ci_shared::bus::publish::EventPublisher;
use prx_ci_shared::codebuild::backend::StartBuild;
use prx_ci_shared::codebuild::event::CodeBuildEvent;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;
use crate::buildspec::{Buildspec, PhaseName, parse_buildspec};
use crate::checkout::Checkout;
use crate::config::LocalRunnerConfig;
use crate::driver::{
    Control, DriverFiles, driver_script, parse_control, parse_exports, resume_script,
};
use crate::environment::{BuiltIns, inherited_variables, process_environment};
use crate::isolation::{BuildProcess, Launcher};
use crate::outcome::{
    InterruptWatch, Interruption, ShellEnd, client_error, failure_context, final_status, shell_end,
    shell_ended_before_buildspec, shell_ended_unexpectedly, uploads_artifacts,
};
use crate::process::{exit_text, kill_group};
use crate::record::{BuildRecord, Layout};
use crate::registry::{BuildControl, Registry};
use crate::reporter::{self, Timeline, run_reporter};
use prx_ci_shared::codebuild::build::{FinalStatus, status};
use prx_ci_shared::log_tail::{self, Redactor};

/// What the builds of one runner share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) publisher: EventPublisher,
    pub(crate) config: LocalRunnerConfig,
    pub(crate) layout: Layout,
    pub(crate) launcher: Launcher,
    /// One permit per build that may run at once; the others wait in QUEUED.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) registry: Registry,
    /// The configured host variables builds may inherit, captured at start.
    pub(crate) inherited: BTreeMap<String, String>,
    pub(crate) shutdown: CancellationToken,
}

/// Runs one build from acceptance to its final report, then records the final status (once
/// every report is stored) and forgets the build.
pub(crate) async fn run_build(
    shared: Arc<Shared>,
    control: Arc<BuildControl>,
    request: StartBuild,
    record: BuildRecord,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(run_reporter(
        shared.publisher.clone(),
        rx,
        shared.shutdown.clone(),
    ));
    let layout = &shared.layout;
    let build_dir = layout.build_dir(&record.build_id);
    let info = record.info(layout, &shared.config.aws_account_id, shared.config.timeout);
    // Masked in the log tail: the secret-looking values the build is given. The build's full
    // environment (buildspec variables too) adds its own when the driver starts.
    let secret_values = secret_values(
        info.environment
            .iter()
            .map(|(k, v)| (k, v))
            .chain(shared.inherited.iter()),
    );
    let mut build = Build {
        secret_values,
        log: BuildLog::new(info.log_path.clone()),
        timeline: Timeline::new(info),
        src_dir: build_dir.join("src"),
        driver_path: layout.driver_path(&record.build_id),
        exports_path: build_dir.join("exports"),
        control_path: build_dir.join("control"),
        state_path: build_dir.join("state"),
        build_dir,
        shared: shared.clone(),
        control: control.clone(),
        request,
        record: record.clone(),
        reports: tx,
    };
    let span = tracing::info_span!("local_build", build_id = %record.build_id, repository = %record.repository);
    let final_status = tracing::Instrument::instrument(build.execute(), span).await;
    drop(build);
    let stored = reporter.await.unwrap_or(false);
    // From now on the record answers repeated starts, and `stop` finds nothing to stop.
    shared.registry.remove(&record.build_id);
    if stored && let Some(final_status) = final_status {
        shared
            .layout
            .save_record(&record.running().finished(final_status));
    }
}

/// The state of one running build.
struct Build {
    shared: Arc<Shared>,
    control: Arc<BuildControl>,
    request: StartBuild,
    /// Its record as accepted (still queued).
    record: BuildRecord,
    timeline: Timeline,
    log: BuildLog,
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
    /// To this build's reporter, which publishes in order.
    reports: mpsc::UnboundedSender<Envelope>,
    /// The values of the build's secret-looking variables, masked in its log tail (memory
    /// only).
    secret_values: Vec<String>,
}

/// The secret-looking values among `variables` (`prx_ci_shared::log_tail::redact`).
fn secret_values<'a>(variables: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    log_tail::redact::secret_values(variables.map(|(k, v)| (k.as_str(), v.as_str())))
}

/// How the phases went.
struct PhasesOutcome {
    interrupted: Option<Interruption>,
    exported: Vec<(String, String)>,
    post_build_ran: bool,
}

/// How one run of the driver shell went.
struct DriverOutcome {
    interrupted: Option<Interruption>,
    /// The shell exited during BUILD: POST_BUILD runs in a restored shell.
    resume: bool,
}

impl Build {
    fn send(&self, event: &CodeBuildEvent) {
        self.send_with_tail(event, None);
    }

    fn send_with_tail(&self, event: &CodeBuildEvent, log_tail: Option<v1::LogTail>) {
        let envelope = reporter::envelope(
            event,
            &self.timeline.info.repository,
            OffsetDateTime::now_utc(),
            log_tail,
        );
        // The reporter outlives every sender; a send error means it panicked, logged there.
        let _ = self.reports.send(envelope);
    }

    fn start_phase(&mut self, phase_type: &str) {
        self.log.line(&format!("Entering phase {phase_type}"));
        self.timeline
            .start_phase(phase_type, OffsetDateTime::now_utc());
    }

    fn end_phase(&mut self, phase_status: &str, context: Vec<String>) {
        if let Some(current) = self.timeline.current() {
            let line = format!(
                "Phase complete: {} State: {phase_status}",
                current.phase_type
            );
            self.log.line(&line);
        }
        if let Some(event) =
            self.timeline
                .end_phase(phase_status, context, OffsetDateTime::now_utc())
        {
            self.send(&event);
        }
    }

    fn watch(&self, deadline: Instant) -> InterruptWatch {
        InterruptWatch {
            stop: self.control.stop.clone(),
            shutdown: self.shared.shutdown.clone(),
            deadline,
        }
    }

    /// Runs the build; returns its final status after sending every report, or `None` when
    /// the runner shut down while the build was queued (it stays queued in its record, and
    /// the next start of the runner runs it).
    async fn execute(&mut self) -> Option<&'static str> {
        let now = OffsetDateTime::now_utc();
        self.log.line(&format!(
            "Build {} of {} at {} accepted",
            self.timeline.info.build_id, self.request.repository, self.request.source_version
        ));
        self.timeline.start_phase("SUBMITTED", now);
        let started = self.timeline.started(now);
        self.send(&started);
        self.end_phase(status::SUCCEEDED, Vec::new());

        self.start_phase("QUEUED");
        let slots = self.shared.slots.clone();
        let permit = tokio::select! {
            biased;
            () = self.control.stop.cancelled() => None,
            permit = slots.acquire_owned() => permit.ok(),
        };
        let Some(_permit) = permit else {
            // Cut short by the shutdown alone: it stays queued. Stopped by `stop` (even if a
            // shutdown followed): STOPPED, as the caller was told.
            if !self.control.stop_requested() {
                self.log.line(
                    "The runner shut down while this build was queued; it runs at the next start",
                );
                return None;
            }
            let context = Interruption::Stopped.context(self.shared.config.timeout);
            self.end_phase(status::STOPPED, vec![context]);
            return Some(self.complete(status::STOPPED, Vec::new()));
        };
        // From now on a restart cannot start it again: it reports it FAULT instead.
        self.shared
            .layout
            .save_record(&self.record.clone().running());
        self.end_phase(status::SUCCEEDED, Vec::new());

        let deadline = Instant::now() + self.shared.config.timeout;
        let outcome = self.run_phases(deadline).await;
        let stopped_meanwhile = self.control.finish();
        let final_status = final_status(
            outcome.interrupted,
            stopped_meanwhile,
            &self.timeline.phases,
        );
        if uploads_artifacts(outcome.interrupted, outcome.post_build_ran) {
            self.start_phase("UPLOAD_ARTIFACTS");
            self.end_phase(status::SUCCEEDED, Vec::new());
        }
        self.start_phase("FINALIZING");
        self.clean_up().await;
        self.end_phase(status::SUCCEEDED, Vec::new());
        Some(self.complete(final_status, outcome.exported))
    }

    fn complete(
        &mut self,
        final_status: &'static str,
        exported: Vec<(String, String)>,
    ) -> &'static str {
        self.log.line(&format!("Build {final_status}"));
        let event = self
            .timeline
            .completed(final_status, exported, OffsetDateTime::now_utc());
        let log_tail = FinalStatus::parse(final_status)
            .is_some_and(log_tail::wants_tail)
            .then(|| {
                self.log
                    .tail(&Redactor::new(self.secret_values.iter().cloned()))
            });
        self.send_with_tail(&event, log_tail);
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
        if self.shared.config.keep_workdirs {
            self.log
                .line(&format!("Keeping work dir {}", self.build_dir.display()));
            return;
        }
        if let Err(err) = tokio::fs::remove_dir_all(&self.build_dir).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            self.log.line(&format!(
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
        let timeout = self.shared.config.timeout;

        self.start_phase("PROVISIONING");
        if let Err(err) = self.provision().await {
            self.end_phase(status::FAILED, vec![client_error(&err)]);
            return outcome;
        }
        self.end_phase(status::SUCCEEDED, Vec::new());

        self.start_phase("DOWNLOAD_SOURCE");
        let spec = match parse_buildspec(&self.request.buildspec) {
            Ok(spec) => spec,
            Err(err) => {
                self.log.line(&err.to_string());
                self.end_phase(status::FAILED, vec![err.to_string()]);
                return outcome;
            }
        };
        for note in &spec.notes {
            self.log.line(note);
        }
        let watch = self.watch(deadline);
        let checkout = Checkout {
            clone_url: &self.request.clone_url,
            source_version: &self.request.source_version,
            src_dir: &self.src_dir,
            log: &self.log,
            watch: &watch,
        };
        let resolved = match checkout.run().await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(why)) => {
                self.end_phase(why.status(), vec![why.context(timeout)]);
                outcome.interrupted = Some(why);
                return outcome;
            }
            Err(err) => {
                let message = client_error(&err);
                self.log.line(&message);
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
            self.log.line("The shell exited during BUILD: running POST_BUILD in a new shell restored from its state");
            driver = self.run_driver(&spec, &resolved, deadline, true).await;
        }
        match driver {
            Ok(driver) => {
                outcome.interrupted = driver.interrupted;
                outcome.post_build_ran = self.entered(PhaseName::PostBuild);
            }
            Err(err) => {
                let message = client_error(&err);
                self.log.line(&message);
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
                    self.log
                        .line(&format!("exported variables were not captured: {err}"));
                }
                Err(_) => {}
            }
        }
        outcome
    }

    /// Whether the timeline has reached `phase`.
    fn entered(&self, phase: PhaseName) -> bool {
        self.timeline
            .phases
            .iter()
            .any(|p| p.phase_type == phase.phase_type())
    }

    /// A fresh, empty build dir.
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

    /// Runs the buildspec phases in the driver shell (from POST_BUILD in a restored shell when
    /// `resume`), reporting each phase as it ends.
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
        let inherited = inherited_variables(&self.shared.inherited, self.request.untrusted);
        let env = process_environment(
            &self.shared.config,
            &inherited,
            &spec.variables,
            &reported,
            &builtins,
        );
        self.secret_values.extend(secret_values(env.iter()));
        let log = self.log.open()?;
        let mut child = self.shared.launcher.spawn(
            &BuildProcess {
                shell: &self.shared.config.shell,
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
        let interrupt = self.watch(deadline).wait();
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
        let how_it_ended = || match &exit {
            Ok(s) => exit_text(*s),
            Err(e) => e.to_string(),
        };
        let phase_open = self.timeline.current().is_some();
        match shell_end(interrupted, self.entered(first_phase), done, phase_open) {
            ShellEnd::Interrupted(why) => {
                let context = why.context(self.shared.config.timeout);
                self.log.line(&context);
                if phase_open {
                    self.end_phase(why.status(), vec![context]);
                }
            }
            ShellEnd::BeforeBuildspec => {
                let message = shell_ended_before_buildspec(&how_it_ended());
                self.log.line(&message);
                self.start_phase(first_phase.phase_type());
                self.end_phase(status::FAILED, vec![message]);
            }
            ShellEnd::Unexpectedly => {
                let message = shell_ended_unexpectedly(&how_it_ended());
                self.log.line(&message);
                if phase_open {
                    self.end_phase(status::FAILED, vec![message]);
                }
            }
            ShellEnd::Finished => {}
        }
        Ok(DriverOutcome {
            interrupted,
            resume: resume_next && !resume,
        })
    }

    /// Applies one control line to the timeline (reporting a phase that ended); returns it.
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
                let (phase_status, context) = if *succeeded {
                    (status::SUCCEEDED, Vec::new())
                } else {
                    (
                        status::FAILED,
                        vec![failure_context(spec, *phase, failed.as_ref())],
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
