//! Snapshots of the GitHub check run (App mode) rendered from real event sequences folded into
//! a build view: status, conclusion, title, details link and the Markdown summary.

use std::collections::HashMap;

use prx_ci_notifier::check_run::{CheckRun, desired_check_run};
use prx_ci_notifier::config::CheckRunConfig;
use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::Chain;
use prx_ci_shared::bus::envelope::timestamp;
use prx_ci_shared::notice::console_links::LinkConfig;
use prx_ci_shared::notice::fixtures::{self, SHA};
use prx_ci_shared::notice::view::BuildView;
use time::macros::datetime;

const NEWER: &str = "abcdef0123456789abcdef0123456789abcdef01";

fn push_env() -> HashMap<String, String> {
    [
        ("PRX_REPO", "PRX/my-app"),
        ("PRX_COMMIT", SHA),
        ("PRX_BRANCH", "main"),
        ("PRX_CI_PUBLISH", "true"),
        ("PRX_TARGET_ARCHITECTURE", "x86_64"),
        ("PRX_AWS_ACCOUNT_ID", "123456789012"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

struct Build {
    view: BuildView,
    next: u32,
}

impl Build {
    fn new() -> Self {
        let mut build = Self {
            view: BuildView::default(),
            next: 0,
        };
        build.apply(Payload::BuildRequested(v1::BuildRequested {
            build: Some(fixtures::build_ref()),
            environment: push_env(),
            event_name: "push".into(),
            ..Default::default()
        }));
        build
    }

    fn apply(&mut self, payload: Payload) -> &mut Self {
        self.next += 1;
        let minute = u8::try_from(self.next).unwrap();
        let at = datetime!(2026-11-26 08:00 UTC) + time::Duration::minutes(minute.into());
        let envelope =
            Chain::starting("delivery-1").envelope_at(format!("event-{}", self.next), at, payload);
        assert!(self.view.apply(&envelope).unwrap());
        self
    }

    fn started(&mut self) -> &mut Self {
        self.apply(Payload::BuildStarted(v1::BuildStarted {
            build: Some(fixtures::build_ref()),
            started_at: Some(timestamp(datetime!(2026-11-26 08:01 UTC))),
            ..Default::default()
        }))
    }

    fn phase(&mut self, completed: &str, status: &str, current: &str, message: &str) -> &mut Self {
        self.apply(Payload::BuildPhaseChanged(v1::BuildPhaseChanged {
            build: Some(fixtures::build_ref()),
            completed_phase: completed.into(),
            completed_phase_status: status.into(),
            current_phase: current.into(),
            message: message.into(),
            duration_ms: 12_000,
            ..Default::default()
        }))
    }

    fn completed(&mut self, status: v1::BuildStatus, failed_phase: &str) -> &mut Self {
        self.apply(Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(fixtures::build_ref()),
            status: status as i32,
            failed_phase: failed_phase.into(),
            duration_ms: 192_000,
            finished_at: Some(timestamp(datetime!(2026-11-26 08:04:12 UTC))),
            ..Default::default()
        }))
    }

    fn completed_with_tail(
        &mut self,
        status: v1::BuildStatus,
        failed_phase: &str,
        log_tail: v1::LogTail,
    ) -> &mut Self {
        self.apply(Payload::BuildCompleted(v1::BuildCompleted {
            build: Some(fixtures::build_ref()),
            status: status as i32,
            failed_phase: failed_phase.into(),
            duration_ms: 192_000,
            finished_at: Some(timestamp(datetime!(2026-11-26 08:04:12 UTC))),
            log_tail: Some(log_tail),
            ..Default::default()
        }))
    }

    fn skipped(
        &mut self,
        parameter: &str,
        reason: v1::PublishSkipReason,
        check: &str,
        detail: &str,
    ) -> &mut Self {
        self.apply(Payload::PublishSkipped(v1::PublishSkipped {
            parameter: parameter.into(),
            value: format!("GitHub/PRX/my-app/{SHA}/LAMBDA_ZIP.zip"),
            kind: v1::ArtifactKind::S3Object as i32,
            label: "LAMBDA_ZIP".into(),
            build: Some(fixtures::build_ref()),
            reason: reason as i32,
            superseded_by_commit: if reason == v1::PublishSkipReason::Superseded {
                NEWER.into()
            } else {
                String::new()
            },
            check: check.into(),
            detail: detail.into(),
            ..Default::default()
        }))
    }

    fn run(&self) -> CheckRun {
        let links = LinkConfig {
            sso_start_url: Some("https://d-906713e952.awsapps.com/start".into()),
            ..LinkConfig::default()
        };
        desired_check_run(&CheckRunConfig::default(), &links, &self.view).unwrap()
    }
}

/// The snapshot text: what GitHub shows, then the summary as written.
fn shown(run: &CheckRun) -> String {
    format!(
        "name: {}\nstatus: {}\nconclusion: {}\ntitle: {}\ndetails_url: {}\nstarted_at: {}\ncompleted_at: {}\n---\n{}",
        run.name,
        run.status.as_str(),
        run.conclusion.map_or("-", |c| c.as_str()),
        run.title,
        run.details_url.as_deref().unwrap_or("-"),
        run.started_at.as_deref().unwrap_or("-"),
        run.completed_at.as_deref().unwrap_or("-"),
        run.summary
    )
}

#[test]
fn check_run_of_a_requested_build() {
    insta::assert_snapshot!(shown(&Build::new().run()));
}

#[test]
fn check_run_of_a_succeeded_build_with_publisher_decisions() {
    let mut build = Build::new();
    build
        .started()
        .phase("INSTALL", "SUCCEEDED", "PRE_BUILD", "")
        .phase("PRE_BUILD", "SUCCEEDED", "BUILD", "")
        .phase("BUILD", "SUCCEEDED", "POST_BUILD", "")
        .completed(v1::BuildStatus::Succeeded, "")
        .apply(Payload::PublishApplied(v1::PublishApplied {
            parameter: "/prx/stag/Spire/MyApp/pkg/docker-image-tag".into(),
            value: format!("github/prx/my-app:{SHA}-x86_64"),
            kind: v1::ArtifactKind::EcrImage as i32,
            label: "RAILS_APP".into(),
            build: Some(fixtures::build_ref()),
            version: 7,
            shadow: false,
        }))
        .skipped(
            "/prx/stag/Spire/MyApp/pkg/s3-object-key",
            v1::PublishSkipReason::Superseded,
            "order fence",
            "a newer push (sequence 12) already wrote it",
        )
        .skipped(
            "/prx/prod/Spire/Other/pkg/s3-object-key",
            v1::PublishSkipReason::NotOwner,
            "ownership",
            "owned by PRX/other",
        );
    insta::assert_snapshot!(shown(&build.run()));
}

#[test]
fn check_run_of_a_build_failed_in_a_named_phase() {
    let mut build = Build::new();
    build
        .started()
        .phase("INSTALL", "SUCCEEDED", "PRE_BUILD", "")
        .phase(
            "BUILD",
            "FAILED",
            "POST_BUILD",
            "Error while executing command: make test. Reason: exit status 2\n```\n<script>@team [x](https://evil)",
        )
        .completed(v1::BuildStatus::Failed, "BUILD");
    insta::assert_snapshot!(shown(&build.run()));
}

#[test]
fn check_run_of_a_superseded_build() {
    let mut build = Build::new();
    build
        .started()
        .phase("INSTALL", "SUCCEEDED", "PRE_BUILD", "")
        .apply(Payload::BuildCancelled(v1::BuildCancelled {
            build: Some(fixtures::build_ref()),
            superseded_by_sequence: 12,
            superseded_by_commit: NEWER.into(),
            superseded_by_event_id: "webhook-newer".into(),
        }))
        .completed(v1::BuildStatus::Stopped, "");
    insta::assert_snapshot!(shown(&build.run()));
}

#[test]
fn check_run_of_a_failed_build_with_the_end_of_its_log() {
    // The build's raw output, made into a tail the way the build-watcher does.
    let mut log: String = (1..=60)
        .map(|i| format!("[Container] step {i}\n"))
        .collect();
    log.push_str("\x1b[1;31m+ git push https://x-access-token:ghs_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8@github.com/PRX/my-app\x1b[0m\n");
    log.push_str("```\n");
    log.push_str("<script>@team [x](https://evil) # not a heading\n");
    log.push_str("FAIL src/app.test.ts (exit status 2)\n");
    let redactor = prx_ci_shared::log_tail::Redactor::default();
    let tail = prx_ci_shared::log_tail::tail_of(&log, false, &redactor);
    let mut build = Build::new();
    build
        .started()
        .phase("INSTALL", "SUCCEEDED", "PRE_BUILD", "")
        .phase(
            "BUILD",
            "FAILED",
            "POST_BUILD",
            "Error while executing command: make test. Reason: exit status 2",
        )
        .completed_with_tail(v1::BuildStatus::Failed, "BUILD", tail);
    let run = build.run();
    assert!(!run.summary.contains("ghs_"));
    insta::assert_snapshot!(shown(&run));
}

#[test]
fn check_run_of_a_timed_out_build_whose_log_is_unavailable() {
    let mut build = Build::new();
    build.started().completed_with_tail(
        v1::BuildStatus::TimedOut,
        "BUILD",
        prx_ci_shared::log_tail::unavailable(
            "log stream /aws/codebuild/infrastructure-ci-Runner2/6d1c4a38 does not exist",
        ),
    );
    insta::assert_snapshot!(shown(&build.run()));
}
