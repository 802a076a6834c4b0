//! The recorded EventBridge events of `tests/data/codebuild/` through the real parser.

use prx_ci_build_watcher::report::{ReportKind, parse_report};
use prx_ci_shared::codebuild::build::FinalStatus;
use prx_ci_shared::testing::workspace_root;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("tests/data/codebuild").join(name)).unwrap()
}

const BUILD_ID: &str = "infrastructure-ci-Runner2:6f2c1b8e-3d4a-4c5b-9e7f-0a1b2c3d4e5f";

#[test]
fn in_progress_event_parses_with_the_handlers_variables() {
    let r = parse_report(&read("state-in-progress.json")).unwrap();
    assert_eq!(r.kind, ReportKind::InProgress);
    assert_eq!(r.build_id, BUILD_ID);
    let env = r.environment();
    assert_eq!(env["PRX_REPO"], "PRX/dovetail-insights");
    assert_eq!(env["PRX_CI_PUBLISH"], "true");
    let ended: Vec<_> = r.ended_phases().into_iter().map(|p| p.name).collect();
    assert_eq!(ended, ["SUBMITTED"], "QUEUED has not ended yet");
    let b = r.build_ref();
    assert_eq!(b.repository, "PRX/dovetail-insights");
    assert_eq!(b.commit, "4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1");
    assert_eq!(b.project, "infrastructure-ci-Runner2");
    assert!(
        b.log_url
            .starts_with("https://console.aws.amazon.com/cloudwatch/")
    );
    assert_eq!(
        r.started_at().unwrap(),
        time::macros::datetime!(2025-03-04 17:02:10 UTC)
    );
}

#[test]
fn phase_change_event_parses_its_completed_phase() {
    let r = parse_report(&read("phase-change-build.json")).unwrap();
    assert_eq!(
        r.kind,
        ReportKind::Phase {
            completed_phase: "BUILD".into()
        }
    );
    let p = r.completed_phase().unwrap();
    assert_eq!(p.status, "SUCCEEDED");
    assert_eq!(p.duration_ms, 186_000);
    assert_eq!(p.message, "", "`[: ]` says nothing");
    assert_eq!(r.phase_after("BUILD"), "POST_BUILD");
    assert_eq!(
        r.completed_phase_end("BUILD").unwrap(),
        time::macros::datetime!(2025-03-04 17:05:41 UTC)
    );
}

#[test]
fn succeeded_event_parses_with_exported_variables_merged_over_the_environment() {
    let r = parse_report(&read("state-succeeded.json")).unwrap();
    assert_eq!(r.kind, ReportKind::Final(FinalStatus::Succeeded));
    let merged = r.event.merged_variables();
    assert_eq!(
        merged["DOVETAIL_INSIGHTS"],
        "github/prx/dovetail-insights:4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1-x86_64"
    );
    assert_eq!(
        merged["PRX_SPIRE_ECR_PKG_PARAMETERS"],
        "DOVETAIL_INSIGHTS=/prx/stag/Spire/Dovetail-Insights/pkg/docker-image-tag"
    );
    assert_eq!(
        merged["PRX_COMMIT"],
        "4e1d7b0c9a2f3e8d6c5b4a3928171605f4e3d2c1"
    );
    assert_eq!(r.exported_variables().len(), 3);
    assert_eq!(r.failed_phase(), None);
    assert_eq!(r.phases().len(), 11);
    // 5:02:10 PM to the COMPLETED phase at 5:06:29 PM.
    assert_eq!(r.duration_ms(), 259_000);
}

#[test]
fn failed_event_names_the_failed_phase_and_its_context() {
    let r = parse_report(&read("state-failed.json")).unwrap();
    assert_eq!(r.kind, ReportKind::Final(FinalStatus::Failed));
    let failed = r.failed_phase().unwrap();
    assert_eq!(failed.name, "BUILD");
    assert_eq!(
        failed.message,
        "COMMAND_EXECUTION_ERROR: Error while executing command: docker build -t dovetail-insights .. Reason: exit status 1"
    );
    assert_eq!(r.duration_ms(), 111_000);
}
