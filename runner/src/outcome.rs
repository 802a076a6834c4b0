//! How a build ends: interruption (stop or timeout), final status, failure contexts.
//!
//! Pure rules with CodeBuild's texts, plus the one future that watches a build for an
//! interruption.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buildspec::{Buildspec, PhaseName};
use crate::driver::{CommandList, FailedCommand};
use crate::reporter::PhaseRecord;
use prx_ci_shared::codebuild::build::status;

/// Why a build was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    TimedOut,
    Stopped,
    /// The runner shut down: the system's failure, not the build's (`FAULT`, so it is re-run).
    Shutdown,
}

impl Interruption {
    /// The status of the phase it cut short, and of the build.
    pub fn status(self) -> &'static str {
        match self {
            Interruption::TimedOut => status::TIMED_OUT,
            Interruption::Stopped => status::STOPPED,
            Interruption::Shutdown => status::FAULT,
        }
    }

    /// CodeBuild's phase context for it (`timeout` is the build timeout).
    pub fn context(self, timeout: Duration) -> String {
        match self {
            Interruption::TimedOut => format!(
                "BUILD_TIMED_OUT: Build has timed out (timeout {}s)",
                timeout.as_secs()
            ),
            Interruption::Stopped => "BUILD_STOPPED: Build was stopped".to_owned(),
            Interruption::Shutdown => {
                "RUNNER_SHUTDOWN: the build runner shut down while this build was running"
                    .to_owned()
            }
        }
    }
}

/// Watches one build for an interruption: its stop token (cancelled by `stop` and by
/// shutdown, its parent), the runner's shutdown token (which tells the two apart) and its
/// deadline.
#[derive(Debug, Clone)]
pub struct InterruptWatch {
    pub stop: CancellationToken,
    pub shutdown: CancellationToken,
    pub deadline: Instant,
}

impl InterruptWatch {
    /// Resolves with the first interruption; owns what it needs, so a process runner can hold
    /// it while the build is borrowed elsewhere.
    pub fn wait(&self) -> impl Future<Output = Interruption> + 'static {
        let stop = self.stop.clone();
        let shutdown = self.shutdown.clone();
        let deadline = self.deadline;
        async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => Interruption::TimedOut,
                () = stop.cancelled() => if shutdown.is_cancelled() {
                    Interruption::Shutdown
                } else {
                    Interruption::Stopped
                },
            }
        }
    }
}

/// The build's final status. An interruption wins; a `stop` that was answered `Stopped`
/// before the build finished on its own makes it `STOPPED` (the caller was told so);
/// otherwise it succeeded only if no phase ended other than `SUCCEEDED` (a phase still
/// open counts as not failed).
pub fn final_status(
    interrupted: Option<Interruption>,
    stopped_meanwhile: bool,
    phases: &[PhaseRecord],
) -> &'static str {
    match (interrupted, stopped_meanwhile) {
        // Stopped by `stop`, then cut short by the shutdown: the caller was told Stopped.
        (Some(Interruption::Shutdown), true) => status::STOPPED,
        (Some(why), _) => why.status(),
        (None, true) => status::STOPPED,
        (None, false) if all_phases_succeeded(phases) => status::SUCCEEDED,
        (None, false) => status::FAILED,
    }
}

fn all_phases_succeeded(phases: &[PhaseRecord]) -> bool {
    phases
        .iter()
        .all(|p| p.status.as_deref().is_none_or(|s| s == status::SUCCEEDED))
}

/// Whether an `UPLOAD_ARTIFACTS` phase is reported: like CodeBuild, after `POST_BUILD` ran
/// and the build was not cut short.
pub fn uploads_artifacts(interrupted: Option<Interruption>, post_build_ran: bool) -> bool {
    interrupted.is_none() && post_build_ran
}

/// What the runner concludes when the driver shell has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellEnd {
    /// Cut short: the open phase ends with the interruption's status.
    Interrupted(Interruption),
    /// The driver always enters its first phase: the shell failed before that, so the runner
    /// reports that phase as failed itself.
    BeforeBuildspec,
    /// The shell ended without saying `DONE`, or with a phase still open.
    Unexpectedly,
    /// The driver reported everything.
    Finished,
}

/// Classifies the end of the driver shell.
pub fn shell_end(
    interrupted: Option<Interruption>,
    first_phase_entered: bool,
    done: bool,
    phase_open: bool,
) -> ShellEnd {
    match interrupted {
        Some(why) => ShellEnd::Interrupted(why),
        None if !first_phase_entered => ShellEnd::BeforeBuildspec,
        None if !done || phase_open => ShellEnd::Unexpectedly,
        None => ShellEnd::Finished,
    }
}

/// The phase context of [`ShellEnd::BeforeBuildspec`]; `exit` says how the shell ended.
pub fn shell_ended_before_buildspec(exit: &str) -> String {
    format!(
        "COMMAND_EXECUTION_ERROR: the build shell ended before running the buildspec ({exit}); see the build log"
    )
}

/// The phase context of [`ShellEnd::Unexpectedly`]; `exit` says how the shell ended.
pub fn shell_ended_unexpectedly(exit: &str) -> String {
    format!("COMMAND_EXECUTION_ERROR: the build shell ended unexpectedly ({exit})")
}

/// The phase context of a failure of the runner itself (provisioning, cloning, spawning).
pub fn client_error(err: &anyhow::Error) -> String {
    format!("CLIENT_ERROR: {err:#}")
}

/// CodeBuild's message for a failed phase: the failing command and its exit status.
pub fn failure_context(
    spec: &Buildspec,
    phase: PhaseName,
    failed: Option<&FailedCommand>,
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

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::buildspec::parse_buildspec;

    fn phase(phase_type: &str, phase_status: Option<&str>) -> PhaseRecord {
        let at = datetime!(2024-01-01 00:00:00 UTC);
        PhaseRecord {
            phase_type: phase_type.to_owned(),
            status: phase_status.map(str::to_owned),
            start: at,
            end: phase_status.map(|_| at),
            context: Vec::new(),
        }
    }

    #[test]
    fn interruptions_map_to_codebuild_statuses_and_contexts() {
        assert_eq!(Interruption::TimedOut.status(), "TIMED_OUT");
        assert_eq!(Interruption::Stopped.status(), "STOPPED");
        assert_eq!(
            Interruption::TimedOut.context(Duration::from_secs(90)),
            "BUILD_TIMED_OUT: Build has timed out (timeout 90s)"
        );
        assert_eq!(
            Interruption::TimedOut.context(Duration::from_millis(1500)),
            "BUILD_TIMED_OUT: Build has timed out (timeout 1s)",
            "whole seconds, like CodeBuild"
        );
        assert_eq!(
            Interruption::Stopped.context(Duration::from_secs(90)),
            "BUILD_STOPPED: Build was stopped"
        );
    }

    #[test]
    fn an_interruption_decides_the_final_status() {
        let failed = [phase("BUILD", Some(status::FAILED))];
        let succeeded = [phase("BUILD", Some(status::SUCCEEDED))];
        for phases in [&failed[..], &succeeded[..], &[]] {
            for stopped_meanwhile in [false, true] {
                assert_eq!(
                    final_status(Some(Interruption::TimedOut), stopped_meanwhile, phases),
                    "TIMED_OUT"
                );
                assert_eq!(
                    final_status(Some(Interruption::Stopped), stopped_meanwhile, phases),
                    "STOPPED"
                );
            }
            // The shutdown is the system's fault, unless `stop` had been answered first.
            assert_eq!(
                final_status(Some(Interruption::Shutdown), false, phases),
                "FAULT"
            );
            assert_eq!(
                final_status(Some(Interruption::Shutdown), true, phases),
                "STOPPED"
            );
        }
    }

    #[test]
    fn a_stop_answered_before_the_build_finished_makes_it_stopped() {
        let succeeded = [phase("BUILD", Some(status::SUCCEEDED))];
        assert_eq!(final_status(None, true, &succeeded), "STOPPED");
        let failed = [phase("BUILD", Some(status::FAILED))];
        assert_eq!(final_status(None, true, &failed), "STOPPED");
    }

    #[test]
    fn without_interruption_any_unsuccessful_phase_fails_the_build() {
        let ok = [
            phase("SUBMITTED", Some(status::SUCCEEDED)),
            phase("BUILD", Some(status::SUCCEEDED)),
        ];
        assert_eq!(final_status(None, false, &ok), "SUCCEEDED");
        assert_eq!(final_status(None, false, &[]), "SUCCEEDED");
        let open = [
            phase("SUBMITTED", Some(status::SUCCEEDED)),
            phase("FINALIZING", None),
        ];
        assert_eq!(
            final_status(None, false, &open),
            "SUCCEEDED",
            "an open phase has not failed"
        );
        for bad in [status::FAILED, status::FAULT, status::TIMED_OUT] {
            let phases = [
                phase("BUILD", Some(bad)),
                phase("POST_BUILD", Some(status::SUCCEEDED)),
            ];
            assert_eq!(final_status(None, false, &phases), "FAILED", "{bad}");
        }
    }

    #[test]
    fn artifacts_are_uploaded_only_after_post_build_and_without_interruption() {
        assert!(uploads_artifacts(None, true));
        assert!(!uploads_artifacts(None, false));
        assert!(!uploads_artifacts(Some(Interruption::Stopped), true));
        assert!(!uploads_artifacts(Some(Interruption::TimedOut), true));
    }

    #[test]
    fn the_end_of_the_shell_is_classified() {
        let stopped = Some(Interruption::Stopped);
        // An interruption wins over everything the driver did or did not say.
        for (entered, done, open) in [(false, false, false), (true, true, true)] {
            assert_eq!(
                shell_end(stopped, entered, done, open),
                ShellEnd::Interrupted(Interruption::Stopped)
            );
        }
        assert_eq!(
            shell_end(None, false, false, false),
            ShellEnd::BeforeBuildspec
        );
        assert_eq!(
            shell_end(None, false, true, false),
            ShellEnd::BeforeBuildspec
        );
        assert_eq!(shell_end(None, true, false, false), ShellEnd::Unexpectedly);
        assert_eq!(shell_end(None, true, true, true), ShellEnd::Unexpectedly);
        assert_eq!(shell_end(None, true, false, true), ShellEnd::Unexpectedly);
        assert_eq!(shell_end(None, true, true, false), ShellEnd::Finished);
    }

    #[test]
    fn shell_and_client_error_texts() {
        assert_eq!(
            shell_ended_before_buildspec("exit status 127"),
            "COMMAND_EXECUTION_ERROR: the build shell ended before running the buildspec (exit status 127); see the build log"
        );
        assert_eq!(
            shell_ended_unexpectedly("killed by signal 9"),
            "COMMAND_EXECUTION_ERROR: the build shell ended unexpectedly (killed by signal 9)"
        );
        let err = anyhow::anyhow!("permission denied").context("cannot create /work/x");
        assert_eq!(
            client_error(&err),
            "CLIENT_ERROR: cannot create /work/x: permission denied",
            "the whole cause chain"
        );
    }

    #[test]
    fn failure_context_names_the_failing_command() {
        let spec = parse_buildspec(
            "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n      - make test\n    finally:\n      - make clean\n",
        )
        .unwrap();
        let failed = |list, index, exit_status| FailedCommand {
            list,
            index,
            exit_status,
        };
        assert_eq!(
            failure_context(
                &spec,
                PhaseName::Build,
                Some(&failed(CommandList::Commands, 1, 2))
            ),
            "COMMAND_EXECUTION_ERROR: Error while executing command: make test. Reason: exit status 2"
        );
        assert_eq!(
            failure_context(
                &spec,
                PhaseName::Build,
                Some(&failed(CommandList::Finally, 0, 1))
            ),
            "COMMAND_EXECUTION_ERROR: Error while executing command: make clean. Reason: exit status 1"
        );
        assert_eq!(
            failure_context(
                &spec,
                PhaseName::Build,
                Some(&failed(CommandList::Commands, 7, 1))
            ),
            "COMMAND_EXECUTION_ERROR: Error while executing command: ?. Reason: exit status 1",
            "an index the buildspec does not have"
        );
        assert_eq!(
            failure_context(&spec, PhaseName::Build, None),
            "COMMAND_EXECUTION_ERROR: the phase failed"
        );
    }

    #[tokio::test]
    async fn a_passed_deadline_is_a_timeout() {
        let watch = InterruptWatch {
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            deadline: Instant::now(),
        };
        assert_eq!(watch.wait().await, Interruption::TimedOut);
    }

    #[tokio::test]
    async fn a_cancelled_stop_token_is_a_stop() {
        let watch = InterruptWatch {
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            deadline: Instant::now() + Duration::from_secs(3600),
        };
        let waiting = watch.wait();
        watch.stop.cancel();
        assert_eq!(waiting.await, Interruption::Stopped);
    }

    #[tokio::test]
    async fn a_shutdown_reaches_the_build_as_the_runner_s_fault() {
        let shutdown = CancellationToken::new();
        let watch = InterruptWatch {
            stop: shutdown.child_token(),
            shutdown: shutdown.clone(),
            deadline: Instant::now() + Duration::from_secs(3600),
        };
        shutdown.cancel();
        assert_eq!(watch.wait().await, Interruption::Shutdown);
        assert_eq!(Interruption::Shutdown.status(), status::FAULT);
    }
}
