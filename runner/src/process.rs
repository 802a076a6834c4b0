//! Process groups: running a command as a group leader, killing the group, exit texts.
//!
//! Killing the group kills everything the command started (CodeBuild drops the whole
//! container).

use std::process::ExitStatus;

use tokio::process::Command;

/// Runs `cmd` as the leader of a new process group until it exits or `interrupt` resolves;
/// either way the whole group is killed afterwards, so nothing the command left in the
/// background outlives it. Returns the exit status, or the interruption's value.
pub async fn run_in_group<T>(
    mut cmd: Command,
    interrupt: impl Future<Output = T>,
) -> std::io::Result<Result<ExitStatus, T>> {
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
/// "no such process" mean it is already gone). Refuses pids 0 and 1, which would name the
/// caller's own group or every process.
pub fn kill_group(pgid: Option<u32>) {
    let Some(pid) = pgid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// How a process ended, as the build log and phase contexts say it.
pub fn exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;
    use std::time::Duration;

    use super::*;

    /// A bound for waits on real processes; reaching it means the behaviour is broken.
    const BOUND: Duration = Duration::from_secs(20);

    #[test]
    fn exit_text_names_the_code_or_the_signal() {
        // Raw wait statuses: the code in the high byte, a signal in the low bits.
        assert_eq!(exit_text(ExitStatus::from_raw(0)), "exit status 0");
        assert_eq!(exit_text(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(exit_text(ExitStatus::from_raw(9)), "killed by signal 9");
        assert_eq!(exit_text(ExitStatus::from_raw(15)), "killed by signal 15");
    }

    #[test]
    fn kill_group_ignores_missing_and_dangerous_pids() {
        // Would kill this test process's group (0) or everything (1) if not refused.
        kill_group(None);
        kill_group(Some(0));
        kill_group(Some(1));
        kill_group(Some(u32::MAX));
    }

    #[tokio::test]
    async fn a_command_that_exits_reports_its_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]).stdin(Stdio::null());
        let result = run_in_group(cmd, std::future::pending::<()>())
            .await
            .unwrap();
        let status = result.expect("not interrupted");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_io_error() {
        let cmd = Command::new("/nonexistent/prx-ci-no-such-program");
        let result = run_in_group(cmd, std::future::pending::<()>()).await;
        assert!(result.is_err());
    }

    /// Starts `sh` with a background `sleep` that holds the write end of a pipe; the pipe reads
    /// EOF only once every process of the group is gone. Returns the command, a receiver that
    /// resolves once the background process runs, and one that resolves at EOF.
    fn group_with_background_process() -> (
        Command,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Receiver<()>,
    ) {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut cmd = Command::new("sh");
        // Short-lived and off the test's stderr, so a broken kill leaves nothing that holds
        // the test harness's output open for long.
        cmd.args(["-c", "sleep 60 & echo started; wait"])
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::null());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = started_tx.send(());
            let _ = reader.read_to_end(&mut Vec::new());
            let _ = eof_tx.send(());
        });
        (cmd, started_rx, eof_rx)
    }

    #[tokio::test]
    async fn an_interruption_kills_the_whole_group() {
        let (cmd, started, eof) = group_with_background_process();
        let interrupt = async {
            let _ = started.await;
            "stopped"
        };
        let result = tokio::time::timeout(BOUND, run_in_group(cmd, interrupt))
            .await
            .expect("the interruption ends the command")
            .unwrap();
        assert_eq!(result.unwrap_err(), "stopped");
        tokio::time::timeout(BOUND, eof)
            .await
            .expect("the background process was killed with its group")
            .unwrap();
    }

    #[tokio::test]
    async fn kill_group_kills_background_processes_too() {
        let (mut cmd, started, eof) = group_with_background_process();
        let mut child = cmd.process_group(0).spawn().unwrap();
        // The command keeps a copy of the pipe's write end; EOF needs it closed.
        drop(cmd);
        tokio::time::timeout(BOUND, started).await.unwrap().unwrap();
        kill_group(child.id());
        let status = child.wait().await.unwrap();
        assert_eq!(exit_text(status), "killed by signal 9");
        tokio::time::timeout(BOUND, eof)
            .await
            .expect("the background process was killed with its group")
            .unwrap();
    }
}
