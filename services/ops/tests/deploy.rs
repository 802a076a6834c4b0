//! The deployment files: the CloudFormation template passes cfn-lint, the Dockerfile passes
//! hadolint and ships exactly the workspace's service binaries, docker-compose.yml describes the
//! NATS cluster, every service (on that image) and the AWS emulator with files that exist.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use figment::providers::Format as _;
use prx_ci_shared::testing::{tool_path, workspace_root};
use serde_yaml_ng::Value;

#[test]
fn the_cloudformation_template_passes_cfn_lint() {
    let template = workspace_root().join("deploy/aws/ci.yml");
    let output = Command::new(tool_path("cfn-lint"))
        .arg(&template)
        .output()
        .expect("cannot run cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&template).unwrap();
    for needle in [
        "Image: aws/codebuild/amazonlinux2-x86_64-standard:5.0",
        "Image: aws/codebuild/amazonlinux-aarch64-standard:3.0",
        "Type: ARM_CONTAINER",
        "TimeoutInMinutes: 16",
        "Type: NO_ARTIFACTS",
        "PrivilegedMode: true",
        "Name: PRX_AWS_ACCOUNT_ID",
        "Name: PRX_APPLICATION_CODE_BUCKET",
        "CodeBuild Build State Change",
        "CodeBuild Build Phase Change",
        "deadLetterTargetArn",
        "Service: events.amazonaws.com",
        "/prx/stag/Spire/",
    ] {
        assert!(text.contains(needle), "ci.yml lacks {needle:?}");
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

/// The workspace's binaries that are not in the image, and why.
const NOT_IN_IMAGE: &[(&str, &str)] = &[(
    "prx-ci-chaos",
    "the chaos run's driver (tests/chaos): starts nats-server and the services as processes",
)];

/// What `cargo metadata` says of the workspace: every `[[bin]]` (and default binary) of its
/// members, its `rust-version`, version and license.
struct Workspace {
    binaries: BTreeSet<String>,
    rust_version: String,
    version: String,
    license: String,
}

fn workspace() -> Workspace {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cannot run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let binaries = packages
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    // Every member inherits these from [workspace.package]; the CLI's stand for all.
    let cli = packages.iter().find(|p| p["name"] == "prx-ci").unwrap();
    Workspace {
        binaries,
        rust_version: cli["rust_version"].as_str().unwrap().to_owned(),
        version: cli["version"].as_str().unwrap().to_owned(),
        license: cli["license"].as_str().unwrap().to_owned(),
    }
}

/// A Dockerfile stage: its `FROM` and its instructions as (keyword, arguments).
struct Stage {
    from: String,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> {
        let keyword = keyword.to_owned();
        self.instructions
            .iter()
            .filter(move |(k, _)| *k == keyword)
            .map(|(_, rest)| rest.as_str())
    }

    fn one(&self, keyword: &str) -> &str {
        let found: Vec<_> = self.all(keyword).collect();
        assert_eq!(
            found.len(),
            1,
            "one {keyword} in the stage from {}",
            self.from
        );
        found[0]
    }
}

/// The Dockerfile's global `ARG`s (before the first `FROM`) and its stages: continuation lines
/// joined, comments and blank lines dropped.
fn dockerfile() -> (Vec<String>, Vec<Stage>) {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    let mut global = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (keyword, rest) in instructions {
        match (keyword.as_str(), stages.last_mut()) {
            ("FROM", _) => stages.push(Stage {
                from: rest,
                instructions: Vec::new(),
            }),
            ("ARG", None) => global.push(rest),
            (_, None) => panic!("{keyword} before the first FROM"),
            (_, Some(stage)) => stage.instructions.push((keyword, rest)),
        }
    }
    (global, stages)
}

/// An exec-form command (`["prog", "arg"]`).
fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not exec form: {e}"))
}

/// The default of `ARG name=default` among `args`.
fn arg_default<'a>(args: impl IntoIterator<Item = &'a str>, name: &str) -> String {
    args.into_iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no ARG {name}=<default>"))
        .trim_matches('"')
        .to_owned()
}

/// The binaries the image contains: what the builder stage builds, strips into /out and the
/// final stage copies (checked to be one list).
fn image_binaries(stages: &[Stage]) -> BTreeSet<String> {
    let builder = stages
        .iter()
        .find(|s| s.from.ends_with(" AS builder"))
        .expect("a builder stage");
    let run = builder.one("RUN");
    let words: Vec<&str> = run.split_whitespace().collect();
    let built: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    let stripped: BTreeSet<String> = run
        .split_once("for bin in ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .expect("the builder's `for bin in ...;` loop")
        .0
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(built, stripped, "the binaries built are the ones stripped");
    assert!(run.contains("strip --strip-debug -o \"/out/$bin\" \"target/release/$bin\""));
    let last = stages.last().unwrap();
    assert_eq!(
        last.one("COPY"),
        "--from=builder /out/ /usr/local/bin/",
        "the final stage copies exactly the stripped binaries"
    );
    built
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let output = Command::new(tool_path("hadolint"))
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(workspace_root().join("Dockerfile"))
        .output()
        .expect("cannot run hadolint");
    assert!(
        output.status.success(),
        "hadolint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_image_contains_every_service_binary_and_runs_only_workspace_binaries() {
    let workspace = workspace();
    let (global, stages) = dockerfile();
    let image = image_binaries(&stages);
    let mut expected = workspace.binaries.clone();
    for (binary, _why) in NOT_IN_IMAGE {
        assert!(
            expected.remove(*binary),
            "{binary} is still a workspace binary"
        );
    }
    assert_eq!(
        image, expected,
        "the image holds every workspace binary but NOT_IN_IMAGE"
    );
    for service in [
        "ingress",
        "dispatcher",
        "build-watcher",
        "publisher",
        "notifier",
        "ops",
    ] {
        assert!(image.contains(&format!("prx-ci-{service}")), "{service}");
    }

    let last = stages.last().unwrap();
    assert_eq!(last.from, "gcr.io/distroless/cc-debian13:nonroot");
    assert_eq!(
        last.all("ENTRYPOINT").count(),
        0,
        "the command picks the binary"
    );
    let command = exec_form(last.one("CMD"));
    assert!(image.contains(&command[0]), "CMD runs {}", command[0]);
    let (options, probe) = last
        .one("HEALTHCHECK")
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD");
    assert!(
        options.contains("--timeout=5s"),
        "longer than the probe's 3 s"
    );
    let probe = exec_form(probe);
    assert_eq!(probe, ["prx-ci", "healthz"]);
    assert!(image.contains(&probe[0]));
    assert_eq!(last.one("USER"), "65532:65532", "non-root");
    // No build tools: nothing runs in the final stage (distroless has no shell anyway).
    for (keyword, rest) in &last.instructions {
        assert!(
            ["ARG", "LABEL", "COPY", "USER", "HEALTHCHECK", "CMD"].contains(&keyword.as_str()),
            "final stage: {keyword} {rest}"
        );
    }

    // The builder is the workspace's Rust; the version label defaults to the workspace's.
    assert_eq!(
        arg_default(global.iter().map(String::as_str), "RUST_VERSION"),
        workspace.rust_version
    );
    assert_eq!(stages[0].from, "rust:${RUST_VERSION}-trixie AS builder");
    assert_eq!(arg_default(last.all("ARG"), "VERSION"), workspace.version);
    let labels = last.one("LABEL");
    for (label, value) in [
        ("title", "\"prx-ci\""),
        ("licenses", &format!("{:?}", workspace.license)),
        ("version", "\"${VERSION}\""),
        ("revision", "\"${REVISION}\""),
        ("created", "\"${CREATED}\""),
        ("source", "\"${SOURCE}\""),
    ] {
        let label = format!("org.opencontainers.image.{label}={value}");
        assert!(labels.contains(&label), "LABEL {label}");
    }
}

#[test]
fn docker_compose_runs_the_cluster_every_service_and_the_emulator() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml_ng::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().expect("services");

    for node in ["n1", "n2", "n3"] {
        let service = &services[node];
        assert!(service["image"].as_str().unwrap().starts_with("nats:"));
        let mounts = strings(&service["volumes"]);
        let conf = format!("./deploy/nats/cluster/{node}.conf");
        assert!(
            mounts.iter().any(|m| m.starts_with(&conf)),
            "{node} mounts {conf}"
        );
        assert!(root.join(&conf).exists());
    }
    assert!(services["moto"]["image"].as_str().unwrap().contains("moto"));

    // The services' config points at the cluster with three replicas and at the emulator, and
    // names the address of each service's /healthz.
    let config_file = root.join("deploy/compose/prx-ci.toml");
    let config = std::fs::read_to_string(&config_file).unwrap();
    assert!(config.contains("replicas = 3"));
    for port in [4222, 4223, 4224] {
        assert!(config.contains(&format!("nats://127.0.0.1:{port}")));
    }
    assert!(config.contains("endpoint_url = \"http://127.0.0.1:5000\""));
    let config = figment::Figment::from(figment::providers::Toml::file(&config_file));

    let (_, stages) = dockerfile();
    let image = image_binaries(&stages);
    for svc in [
        "ingress",
        "dispatcher",
        "build-watcher",
        "publisher",
        "notifier",
        "ops",
    ] {
        let service = &services[svc];
        // The image compose builds from the Dockerfile, running one of its binaries.
        assert_eq!(service["build"].as_str(), Some("."), "{svc}");
        assert_eq!(service["image"].as_str(), Some("prx-ci:local"), "{svc}");
        let command = strings(&service["command"]);
        let binary = format!("prx-ci-{svc}");
        assert_eq!(command[0], binary, "{svc}");
        assert!(image.contains(&binary), "the image contains {binary}");
        assert_eq!(command[1], "--config");
        let env = &service["environment"];
        assert_eq!(env["PRX_CI_CONFIG"].as_str(), Some(command[2].as_str()));
        let mount = format!("./deploy/compose/prx-ci.toml:{}:ro", command[2]);
        assert!(
            strings(&service["volumes"]).contains(&mount),
            "{svc}: {mount}"
        );

        assert_eq!(service["network_mode"].as_str(), Some("host"));
        let deps = service["depends_on"].as_mapping().expect("depends_on");
        for dep in ["n1", "n2", "n3", "moto"] {
            assert!(deps.contains_key(dep), "{svc} waits for {dep}");
        }
        // The image's HEALTHCHECK probes where the config says the service serves /healthz.
        let key = match svc {
            "ingress" => "ingress.listen".to_owned(),
            _ => format!("{}.ops_listen", svc.replace('-', "_")),
        };
        let address: String = config.extract_inner(&key).unwrap();
        assert_eq!(
            env["PRX_CI_HEALTHZ_URL"].as_str(),
            Some(format!("http://{address}/healthz").as_str()),
            "{svc}"
        );
    }
}

#[test]
fn cluster_nodes_listen_apart_and_route_to_each_other() {
    let dir = workspace_root().join("deploy/nats/cluster");
    let mut listens = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let text = std::fs::read_to_string(dir.join(format!("{node}.conf"))).unwrap();
        assert!(text.contains(&format!("server_name: {node}")));
        assert!(text.contains("name: prx-ci"));
        assert!(text.contains("jetstream {"));
        for route in [6222, 6223, 6224] {
            assert!(text.contains(&format!("nats-route://127.0.0.1:{route}")));
        }
        for line in text.lines().map(str::trim) {
            if let Some(addr) = line.strip_prefix("listen: ") {
                listens.push(addr.to_owned());
            }
        }
    }
    listens.sort();
    listens.dedup();
    assert_eq!(listens.len(), 6, "client and route ports are distinct");
    assert!(Path::new(&dir.join("README.md")).exists());
}

/// Every `Action` string under `value` (through CloudFormation tags such as `!If`), with
/// whether it sits under an `!If` (a condition that can switch it off).
fn actions(value: &Value, conditional: bool, out: &mut Vec<(String, bool)>) {
    match value {
        Value::Mapping(map) => {
            for (key, v) in map {
                if key.as_str() == Some("Action") {
                    out.extend(strings(v).into_iter().map(|a| (a, conditional)));
                } else {
                    actions(v, conditional, out);
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| actions(v, conditional, out)),
        Value::Tagged(tagged) => {
            let is_if = tagged.tag == "If";
            actions(&tagged.value, conditional || is_if, out);
        }
        _ => {}
    }
}

fn tagged<'a>(value: &'a Value, tag: &str) -> &'a Value {
    match value {
        Value::Tagged(t) if t.tag == tag => &t.value,
        other => panic!("expected !{tag}, found {other:?}"),
    }
}

#[test]
fn fork_builds_run_in_projects_whose_role_can_publish_nothing() {
    let text = std::fs::read_to_string(workspace_root().join("deploy/aws/ci.yml")).unwrap();
    let template: Value = serde_yaml_ng::from_str(&text).unwrap();
    let resources = &template["Resources"];

    let mut granted = Vec::new();
    let role = &resources["UntrustedCodeBuildServiceRole"]["Properties"];
    actions(&role["Policies"], false, &mut granted);
    assert!(role["ManagedPolicyArns"].is_null(), "no managed policies");
    let mut assumed = Vec::new();
    actions(&role["AssumeRolePolicyDocument"], false, &mut assumed);
    assert_eq!(assumed, [("sts:AssumeRole".to_owned(), false)]);
    for (action, conditional) in &granted {
        let allowed = action.starts_with("logs:")
            // Only the parameters an operator lists (UntrustedParameterPaths, default none).
            || (action == "ssm:GetParameters" && *conditional);
        assert!(allowed, "the untrusted role may {action}");
    }
    assert!(
        granted.iter().any(|(a, _)| a == "logs:PutLogEvents"),
        "builds still log"
    );
    let parameters = &template["Parameters"];
    assert_eq!(parameters["UntrustedParameterPaths"]["Default"], "");
    assert_eq!(parameters["UntrustedPrivilegedMode"]["Default"], "false");

    for (project, trusted) in [
        ("UntrustedX86Project", "X86Project"),
        ("UntrustedArmProject", "ArmProject"),
    ] {
        let properties = &resources[project]["Properties"];
        assert_eq!(
            tagged(&properties["ServiceRole"], "GetAtt"),
            "UntrustedCodeBuildServiceRole.Arn",
            "{project}"
        );
        assert_eq!(
            tagged(&properties["Environment"]["PrivilegedMode"], "Ref"),
            "UntrustedPrivilegedMode",
            "{project}"
        );
        let variables: Vec<&str> = properties["Environment"]["EnvironmentVariables"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap())
            .collect();
        assert_eq!(variables, ["PRX_AWS_ACCOUNT_ID"], "{project}: no bucket");
        // Same machine as its trusted twin, so fork builds behave like the real ones.
        for field in ["Type", "Image", "ComputeType"] {
            assert_eq!(
                properties["Environment"][field],
                resources[trusted]["Properties"]["Environment"][field]
            );
        }
        // The build-watcher hears of its builds and the dispatcher may start them.
        let rule =
            &resources["BuildEventsRule"]["Properties"]["EventPattern"]["detail"]["project-name"];
        assert!(
            rule.as_sequence()
                .unwrap()
                .iter()
                .any(|v| tagged(v, "Ref") == project),
            "{project} in the event rule"
        );
        assert!(text.contains(&format!("!GetAtt {project}.Arn")));
    }
}
