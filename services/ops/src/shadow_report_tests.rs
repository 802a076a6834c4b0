use std::collections::HashMap;

use prx_ci_proto::v1::{self, envelope::Payload};
use prx_ci_shared::bus::envelope::{Chain, timestamp};
use time::macros::datetime;

use super::*;

const REPO: &str = "PRX/my-app";
const PARAM: &str = "/prx/stag/Spire/MyApp/pkg/docker-image-tag";

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

/// The dispatcher's variables of a push of `commit` (as the reference lists them).
fn push_variables(commit: &str, arch: &str) -> HashMap<String, String> {
    [
        (env::REPO, REPO),
        (env::COMMIT, commit),
        (env::BRANCH, "main"),
        (env::CI_PUBLISH, "true"),
        (env::GITHUB_AFTER, commit),
        (env::GITHUB_BEFORE, "0000000"),
        (env::TARGET_ARCHITECTURE, arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// One push's chain: delivery `d-<c>`, push position `position`.
struct Push {
    chain: Chain,
    commit: String,
    position: u64,
}

impl Push {
    fn new(c: char, position: u64) -> Self {
        Self {
            chain: Chain::starting(&format!("d-{c}")),
            commit: sha(c),
            position,
        }
    }

    fn envelope(&self, id: &str, payload: Payload) -> v1::Envelope {
        let mut e = self
            .chain
            .envelope_at(id.to_owned(), datetime!(2026-12-01 08:00 UTC), payload);
        e.push_sequence = self.position;
        e
    }

    fn build(&self, arch: v1::Architecture, shadowed: bool) -> v1::BuildRef {
        v1::BuildRef {
            build_id: if shadowed {
                format!("infrastructure-ci-Runner2:{}", self.commit)
            } else {
                format!("shadow:{}", self.commit)
            },
            repository: REPO.into(),
            commit: self.commit.clone(),
            architecture: arch as i32,
            shadowed,
            ..Default::default()
        }
    }

    fn requested(&self) -> v1::Envelope {
        self.envelope(
            "requested",
            Payload::BuildRequested(v1::BuildRequested {
                build: Some(self.build(v1::Architecture::X8664, false)),
                environment: push_variables(&self.commit, "x86_64"),
                shadow: true,
                ..Default::default()
            }),
        )
    }

    fn original_started(&self, environment: HashMap<String, String>) -> v1::Envelope {
        self.envelope(
            "started",
            Payload::BuildStarted(v1::BuildStarted {
                build: Some(self.build(v1::Architecture::X8664, true)),
                environment,
                requested: Some(v1::BuildRequested::default()),
                ..Default::default()
            }),
        )
    }

    fn original_succeeded(&self, finished_minute: u8) -> v1::Envelope {
        let mut variables = push_variables(&self.commit, "x86_64");
        let image = format!("github/prx/my-app:{}-x86_64", self.commit);
        variables.insert("MY_APP".into(), image.clone());
        variables.insert(
            env::SPIRE_ECR_PKG_PARAMETERS.into(),
            format!("MY_APP={PARAM}"),
        );
        let finished =
            datetime!(2026-12-01 09:00 UTC) + time::Duration::minutes(finished_minute.into());
        self.envelope(
            "completed",
            Payload::BuildCompleted(v1::BuildCompleted {
                build: Some(self.build(v1::Architecture::X8664, true)),
                status: v1::BuildStatus::Succeeded as i32,
                exported_variables: [("MY_APP".to_owned(), image)].into_iter().collect(),
                variables,
                finished_at: Some(timestamp(finished)),
                requested: Some(v1::BuildRequested::default()),
                ..Default::default()
            }),
        )
    }

    fn published(&self) -> v1::Envelope {
        self.envelope(
            "published",
            Payload::PublishApplied(v1::PublishApplied {
                parameter: PARAM.into(),
                value: format!("github/prx/my-app:{}-x86_64", self.commit),
                build: Some(self.build(v1::Architecture::X8664, true)),
                shadow: true,
                ..Default::default()
            }),
        )
    }
}

fn report(events: &[v1::Envelope]) -> v1::ShadowReportResponse {
    let mut fold = ShadowFold::default();
    for e in events {
        fold.apply(e);
    }
    fold.report()
}

fn verdict(w: &v1::ShadowWebhook) -> v1::ShadowVerdict {
    v1::ShadowVerdict::try_from(w.verdict).unwrap()
}

#[test]
fn names_an_agreement_a_variable_disagreement_and_the_originals_regression() {
    let (a, b, c) = (
        Push::new('a', 1 << 32),
        Push::new('b', 2 << 32),
        Push::new('c', 3 << 32),
    );
    let mut disagreeing = push_variables(&b.commit, "x86_64");
    disagreeing.insert(env::BRANCH.into(), "master".into());
    let events = [
        a.requested(),
        b.requested(),
        c.requested(),
        a.original_started(push_variables(&a.commit, "x86_64")),
        b.original_started(disagreeing),
        c.original_started(push_variables(&c.commit, "x86_64")),
        a.original_succeeded(1),
        a.published(),
        // The original's C finished before its B: its updater left the pointer on B.
        c.original_succeeded(2),
        c.published(),
        b.original_succeeded(3),
        // This system's fence refused B after C: no PublishApplied for B.
    ];
    let report = report(&events);

    let by_delivery: HashMap<&str, &v1::ShadowWebhook> = report
        .webhooks
        .iter()
        .map(|w| (w.delivery_id.as_str(), w))
        .collect();
    assert_eq!(verdict(by_delivery["d-a"]), v1::ShadowVerdict::Agree);
    assert_eq!(verdict(by_delivery["d-c"]), v1::ShadowVerdict::Agree);
    let b_report = by_delivery["d-b"];
    assert_eq!(verdict(b_report), v1::ShadowVerdict::Disagree);
    assert_eq!(
        b_report.differences,
        vec![v1::ShadowDifference {
            kind: v1::ShadowDifferenceKind::Variable as i32,
            architecture: v1::Architecture::X8664 as i32,
            variable: env::BRANCH.into(),
            this_system: "main".into(),
            original: "master".into(),
            this_system_set: true,
            original_set: true,
        }]
    );
    // In GitHub's push order.
    let order: Vec<&str> = report
        .webhooks
        .iter()
        .map(|w| w.delivery_id.as_str())
        .collect();
    assert_eq!(order, ["d-a", "d-b", "d-c"]);

    assert_eq!(report.parameters.len(), 1);
    let p = &report.parameters[0];
    assert_eq!(p.name, PARAM);
    assert_eq!(p.this_system_commit, c.commit);
    assert_eq!(p.original_commit, b.commit);
    assert!(!p.agree);
    assert!(p.original_regressed);
    assert_eq!(p.regressed_from_commit, c.commit);
    assert_eq!((p.this_system_writes, p.original_writes), (2, 3));
    assert_eq!(report.events_read, events.len() as u64);
}

#[test]
fn a_request_without_the_originals_build_waits_and_an_unrequested_build_finds_its_skip() {
    let a = Push::new('a', 1 << 32);
    let b = Push::new('b', 2 << 32);
    let skipped = b.envelope(
        "skipped",
        Payload::BuildSkipped(v1::BuildSkipped {
            repository: REPO.into(),
            commit: b.commit.clone(),
            reason: v1::SkipReason::NonDefaultBranch as i32,
            detail: "branch gh-pages".into(),
            shadow: true,
            ..Default::default()
        }),
    );
    // The original built B anyway, through nobody's request (a chain of its own).
    let unrequested = Chain::starting("report-1").envelope_at(
        "started".into(),
        datetime!(2026-12-01 08:00 UTC),
        Payload::BuildStarted(v1::BuildStarted {
            build: Some(v1::BuildRef {
                build_id: "infrastructure-ci-Runner2:b".into(),
                repository: REPO.into(),
                commit: b.commit.clone(),
                architecture: v1::Architecture::X8664 as i32,
                ..Default::default()
            }),
            environment: push_variables(&b.commit, "x86_64"),
            requested: None,
            ..Default::default()
        }),
    );
    let stray = Chain::starting("report-2").envelope_at(
        "started".into(),
        datetime!(2026-12-01 08:00 UTC),
        Payload::BuildStarted(v1::BuildStarted {
            build: Some(v1::BuildRef {
                build_id: "infrastructure-ci-ArmRunner:z".into(),
                repository: "PRX/other".into(),
                commit: sha('f'),
                architecture: v1::Architecture::Aarch64 as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let report = report(&[a.requested(), skipped, unrequested, stray]);
    let [wa, wb] = report.webhooks.as_slice() else {
        panic!("two webhooks: {:?}", report.webhooks);
    };
    assert_eq!(verdict(wa), v1::ShadowVerdict::Waiting);
    assert_eq!(
        wa.differences[0].kind,
        v1::ShadowDifferenceKind::OnlyThisSystemBuilds as i32
    );
    assert_eq!(verdict(wb), v1::ShadowVerdict::Disagree);
    assert_eq!(wb.this_system_skip, "non_default_branch: branch gh-pages");
    assert_eq!(wb.original_builds, [v1::Architecture::X8664 as i32]);
    assert_eq!(
        wb.differences[0].kind,
        v1::ShadowDifferenceKind::OnlyOriginalBuilds as i32
    );
    assert_eq!(
        report.unmatched_original_builds,
        [format!("PRX/other@{} (aarch64)", sha('f'))]
    );
}

#[test]
fn live_events_are_not_shadow_decisions() {
    let a = Push::new('a', 1 << 32);
    let mut live = a.requested();
    if let Some(Payload::BuildRequested(r)) = &mut live.payload {
        r.shadow = false;
    }
    let report = report(&[live]);
    assert!(report.webhooks.is_empty());
    assert!(report.parameters.is_empty());
}

#[test]
fn the_original_updater_replayed() {
    let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let writes = original_writes(&vars(&[
        (env::CI_PUBLISH, "true"),
        ("APP", "github/prx/app:1"),
        ("ZIP", "GitHub/PRX/app/1/ZIP.zip"),
        (
            env::SPIRE_ECR_PKG_PARAMETERS,
            "APP=/prx/stag/Spire/App/pkg/docker-image-tag,/elsewhere/x, /prx/stag/Spire/Sp;BAD=a=b;EMPTY=/prx/stag/Spire/E",
        ),
        (
            env::SPIRE_S3_PKG_PARAMETERS,
            "ZIP=/prx/stag/Spire/Fn/pkg/s3-object-key",
        ),
    ]));
    assert_eq!(
        writes,
        [
            (
                "/prx/stag/Spire/App/pkg/docker-image-tag".to_owned(),
                "github/prx/app:1".to_owned()
            ),
            (
                "/prx/stag/Spire/Fn/pkg/s3-object-key".to_owned(),
                "GitHub/PRX/app/1/ZIP.zip".to_owned()
            ),
        ]
    );
    // Without PRX_CI_PUBLISH=true the original wrote nothing.
    assert!(
        original_writes(&vars(&[
            (env::CI_PUBLISH, "false"),
            ("APP", "x"),
            (
                env::SPIRE_ECR_PKG_PARAMETERS,
                "APP=/prx/stag/Spire/App/pkg/docker-image-tag"
            ),
        ]))
        .is_empty()
    );
}
