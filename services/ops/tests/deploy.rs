//! The deployment files: every CloudFormation template passes cfn-lint, every ECS task
//! definition sets exactly configuration its binary reads (each binary's `--check-config`),
//! the NATS node configs (local and AWS) are rendered from one template, the AWS roles are least
//! privilege, the Dockerfile passes hadolint and ships exactly the workspace's service binaries,
//! and docker-compose.yml describes the NATS cluster, every service (on that image) and the AWS
//! emulator with files that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use figment::providers::Format as _;
use prx_ci_shared::testing::{tool_path, workspace_root};
use serde_yaml_ng::Value;

/// Every CloudFormation template under `deploy/aws/`, found by listing the directory (a new
/// template is covered without touching this file).
fn templates() -> Vec<PathBuf> {
    let dir = workspace_root().join("deploy/aws");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yml" || e == "yaml" || e == "json")
        })
        .collect();
    found.sort();
    found
}

fn read_template(name: &str) -> (String, Value) {
    let text = std::fs::read_to_string(workspace_root().join("deploy/aws").join(name)).unwrap();
    let value = serde_yaml_ng::from_str(&text).unwrap();
    (text, value)
}

#[test]
fn every_cloudformation_template_passes_cfn_lint() {
    let templates = templates();
    let names: Vec<String> = templates
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["ci.yml", "nats.yml", "services.yml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let output = Command::new(tool_path("cfn-lint"))
        .args(&templates)
        .output()
        .expect("cannot run cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (text, _) = read_template("ci.yml");
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
    ] {
        assert!(text.contains(needle), "ci.yml lacks {needle:?}");
    }
    let (text, _) = read_template("services.yml");
    assert!(
        text.contains("Default: /prx/stag/Spire/"),
        "the publisher's prefix"
    );
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
const NOT_IN_IMAGE: &[(&str, &str)] = &[
    (
        "prx-ci-chaos",
        "the chaos run's driver (tests/chaos): starts nats-server and the services as processes",
    ),
    (
        "prx-ci-bench-table",
        "renders docs/benchmarks.md from the recorded bench runs (tests/bench), a developer tool",
    ),
];

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

// ---- The NATS node configs: one template, rendered for the local cluster and for AWS ----

/// Set to `1` to write the rendered node configs (`deploy/nats/cluster/n*.conf` and the config
/// embedded in `deploy/aws/nats.yml`) instead of comparing them.
const RENDER_ENV: &str = "PRX_CI_RENDER_DEPLOY";

/// The heredoc in `nats.yml`'s user data that holds the rendered config.
const NATS_CONF_MARKER: &str = "PRX_CI_NATS_CONF";

/// Indentation of the user data script inside `nats.yml`.
const USER_DATA_INDENT: &str = "            ";

/// `template` with every `{{key}}` replaced by `values[key]`; a line that is only a
/// placeholder whose value is empty is dropped. An unknown or unused key is a bug.
fn render(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut used = BTreeSet::new();
    let mut out = String::new();
    for line in template.lines() {
        let mut line = line.to_owned();
        while let Some(start) = line.find("{{") {
            let end = start + line[start..].find("}}").expect("closing }}");
            let key = &line[start + 2..end];
            let value = values
                .get(key)
                .unwrap_or_else(|| panic!("no value for {{{{{key}}}}}"));
            used.insert(key.to_owned());
            if value.is_empty() && line.trim() == format!("{{{{{key}}}}}") {
                line.clear();
                line.push('\u{0}');
                break;
            }
            line.replace_range(start..end + 2, value);
        }
        if line != "\u{0}" {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let unused: Vec<_> = values.keys().filter(|k| !used.contains(**k)).collect();
    assert!(unused.is_empty(), "values never used: {unused:?}");
    out
}

fn route_lines(hosts: &[String]) -> String {
    hosts
        .iter()
        .map(|h| format!("    nats-route://{h}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The config of local node `i` (0-based): loopback, ports 4222+i, 6222+i, 8222+i.
fn local_node(template: &str, i: u16) -> String {
    let node = format!("n{}", i + 1);
    let routes: Vec<String> = (0..3).map(|j| format!("127.0.0.1:{}", 6222 + j)).collect();
    let values = BTreeMap::from([
        ("node", node.clone()),
        (
            "placement",
            format!(
                "one machine; loopback ports: clients {}, routes {}, monitoring {}",
                4222 + i,
                6222 + i,
                8222 + i
            ),
        ),
        ("client_listen", format!("127.0.0.1:{}", 4222 + i)),
        ("http_listen", format!("127.0.0.1:{}", 8222 + i)),
        ("authorization", String::new()),
        ("store_dir", format!("/data/jetstream/{node}")),
        ("cluster_listen", format!("127.0.0.1:{}", 6222 + i)),
        ("routes", route_lines(&routes)),
    ]);
    render(template, &values)
}

/// The config of an AWS node: `@NODE@` is replaced at boot by the instance's `NatsNode` tag,
/// `${NodeNInterface...}` by CloudFormation (`!Sub`), `$PRX_CI_NATS_*` by nats-server from the
/// environment (the credentials secret).
fn aws_node(template: &str) -> String {
    let routes: Vec<String> = (1..=3)
        .map(|n| format!("${{Node{n}Interface.PrimaryPrivateIpAddress}}:6222"))
        .collect();
    let values = BTreeMap::from([
        ("node", "@NODE@".to_owned()),
        (
            "placement",
            "an EC2 instance of deploy/aws/nats.yml; clients 4222, routes 6222, monitoring 8222"
                .to_owned(),
        ),
        ("client_listen", "0.0.0.0:4222".to_owned()),
        ("http_listen", "0.0.0.0:8222".to_owned()),
        (
            "authorization",
            "# Clients authenticate (the NatsCredentials secret, in the environment).\n\
             authorization {\n  user: $PRX_CI_NATS_USER\n  password: $PRX_CI_NATS_PASSWORD\n}"
                .to_owned(),
        ),
        ("store_dir", "/data/jetstream/@NODE@".to_owned()),
        ("cluster_listen", "0.0.0.0:6222".to_owned()),
        ("routes", route_lines(&routes)),
    ]);
    render(template, &values)
}

/// `nats.yml` with the heredoc body replaced by `conf`, and the body it had.
fn embed_nats_conf(nats_yml: &str, conf: &str) -> (String, String) {
    let open = format!("<<'{NATS_CONF_MARKER}'\n");
    let start = nats_yml
        .find(&open)
        .expect("the config heredoc in nats.yml")
        + open.len();
    let close = format!("{USER_DATA_INDENT}{NATS_CONF_MARKER}\n");
    let end = start + nats_yml[start..].find(&close).expect("the heredoc's end");
    let old = nats_yml[start..end]
        .lines()
        .map(|l| l.strip_prefix(USER_DATA_INDENT).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let body: String = conf
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("{USER_DATA_INDENT}{l}\n")
            }
        })
        .collect();
    let new = format!("{}{body}{}", &nats_yml[..start], &nats_yml[end..]);
    (new, old)
}

#[test]
fn the_nats_node_configs_are_rendered_from_one_template() {
    let root = workspace_root();
    let dir = root.join("deploy/nats/cluster");
    let template = std::fs::read_to_string(dir.join("node.conf.template")).unwrap();
    let write = std::env::var(RENDER_ENV).is_ok_and(|v| v == "1");
    let hint = format!(
        "edit node.conf.template, then `{RENDER_ENV}=1 cargo test -p prx-ci-ops --test deploy`"
    );

    for i in 0..3u16 {
        let path = dir.join(format!("n{}.conf", i + 1));
        let rendered = local_node(&template, i);
        if write {
            std::fs::write(&path, &rendered).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            rendered,
            "{} is not the rendered template: {hint}",
            path.display()
        );
    }

    let nats_yml_path = root.join("deploy/aws/nats.yml");
    let nats_yml = std::fs::read_to_string(&nats_yml_path).unwrap();
    let rendered = aws_node(&template);
    let (updated, embedded) = embed_nats_conf(&nats_yml, &rendered);
    if write {
        std::fs::write(&nats_yml_path, &updated).unwrap();
    } else {
        assert_eq!(
            embedded, rendered,
            "nats.yml's config is not the rendered template: {hint}"
        );
    }
    // What CloudFormation substitutes is exactly the three nodes' addresses.
    let substituted: BTreeSet<&str> = rendered
        .match_indices("${")
        .map(|(i, _)| &rendered[i..i + rendered[i..].find('}').unwrap() + 1])
        .collect();
    assert_eq!(
        substituted,
        BTreeSet::from([
            "${Node1Interface.PrimaryPrivateIpAddress}",
            "${Node2Interface.PrimaryPrivateIpAddress}",
            "${Node3Interface.PrimaryPrivateIpAddress}",
        ])
    );
    // The AWS config is a valid nats-server config once the boot script and the environment
    // have filled it in.
    let conf = rendered
        .replace("@NODE@", "n2")
        .replace("${Node1Interface.PrimaryPrivateIpAddress}", "10.0.1.10")
        .replace("${Node2Interface.PrimaryPrivateIpAddress}", "10.0.2.10")
        .replace("${Node3Interface.PrimaryPrivateIpAddress}", "10.0.3.10");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("n2.conf");
    std::fs::write(&path, conf).unwrap();
    let output = Command::new(tool_path("nats-server"))
        .arg("-c")
        .arg(&path)
        .arg("-t")
        .env("PRX_CI_NATS_USER", "prx-ci")
        .env("PRX_CI_NATS_PASSWORD", "dummy-password")
        .output()
        .expect("cannot run nats-server");
    assert!(
        output.status.success(),
        "nats-server -t rejects the AWS config:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- ECS task definitions against the binaries' own configuration loading ----

/// The six service binaries.
const SERVICE_BINARIES: [&str; 6] = [
    "prx-ci-ingress",
    "prx-ci-dispatcher",
    "prx-ci-build-watcher",
    "prx-ci-publisher",
    "prx-ci-notifier",
    "prx-ci-ops",
];

/// Resolves CloudFormation intrinsics to plausible strings: a parameter to its example (below),
/// else to its last allowed value, else its default (when it has a non-empty one), pseudo
/// parameters to fixed values, anything else to a string named after the expression (distinct
/// expressions, distinct strings). `!If` takes its first branch
/// (so optional settings are checked too); `None` is `AWS::NoValue`.
/// Values of parameters whose form the services check (a dummy string would not be one).
const PARAMETER_EXAMPLES: [(&str, &str); 1] = [("LiveRepositories", "PRX/app,PRX/other")];

struct Resolver<'a> {
    parameters: &'a Value,
}

impl Resolver<'_> {
    fn reference(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::NoValue" => return None,
            "AWS::Region" => "us-east-1".to_owned(),
            "AWS::AccountId" => "123456789012".to_owned(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::StackName" => "prx-ci".to_owned(),
            _ if PARAMETER_EXAMPLES.iter().any(|(n, _)| *n == name) => PARAMETER_EXAMPLES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
                .unwrap(),
            _ if self.parameters[name]["AllowedValues"].is_sequence() => {
                strings(&self.parameters[name]["AllowedValues"])
                    .pop()
                    .unwrap()
            }
            _ => match &self.parameters[name]["Default"] {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => format!("dummy-{name}"),
            },
        })
    }

    fn substitute(&self, text: &str, vars: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = start + rest[start..].find('}').expect("closing }");
            let name = &rest[start + 2..end];
            let value = match vars.get(name) {
                Some(v) => v.clone(),
                None if name.contains('.') => format!("dummy-{}", name.replace('.', "-")),
                None => self.reference(name).unwrap_or_default(),
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// `value` with its intrinsic functions evaluated (`None`: `AWS::NoValue`).
    fn value(&self, value: &Value) -> Option<Value> {
        let (function, argument) = match value {
            Value::Tagged(t) => (
                t.tag.to_string().trim_start_matches('!').to_owned(),
                &t.value,
            ),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().unwrap();
                match k.as_str() {
                    Some("Ref") => ("Ref".to_owned(), v),
                    Some(k) if k.starts_with("Fn::") => (k[4..].to_owned(), v),
                    _ => return self.mapping(m),
                }
            }
            Value::Mapping(m) => return self.mapping(m),
            Value::Sequence(items) => {
                return Some(Value::Sequence(
                    items.iter().filter_map(|v| self.value(v)).collect(),
                ));
            }
            other => return Some(other.clone()),
        };
        let text = |v: &Value| -> String {
            match self.value(v) {
                Some(Value::String(s)) => s,
                Some(Value::Number(n)) => n.to_string(),
                other => panic!("!{function} of {other:?}"),
            }
        };
        Some(Value::String(match function.as_str() {
            "Ref" => {
                return self
                    .reference(argument.as_str().unwrap())
                    .map(Value::String);
            }
            "If" => return self.value(&argument[1]),
            "GetAtt" => format!("dummy-{}", text(argument).replace('.', "-")),
            "ImportValue" => format!("import-{}", text(argument)),
            "Sub" => match argument {
                Value::String(s) => self.substitute(s, &BTreeMap::new()),
                Value::Sequence(items) => {
                    let vars = items[1]
                        .as_mapping()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_owned(), text(v)))
                        .collect();
                    self.substitute(items[0].as_str().unwrap(), &vars)
                }
                other => panic!("!Sub {other:?}"),
            },
            "Join" => {
                let items = self.value(&argument[1]).unwrap();
                let parts: Vec<String> = items.as_sequence().unwrap().iter().map(text).collect();
                parts.join(argument[0].as_str().unwrap())
            }
            other => panic!("the test cannot resolve !{other}"),
        }))
    }

    fn mapping(&self, m: &serde_yaml_ng::Mapping) -> Option<Value> {
        let mut out = serde_yaml_ng::Mapping::new();
        for (k, v) in m {
            if let Some(v) = self.value(v) {
                out.insert(k.clone(), v);
            }
        }
        Some(Value::Mapping(out))
    }
}

/// One ECS task definition's container, as the test runs it.
#[derive(Debug)]
struct Task {
    /// `<template>:<resource>`.
    origin: String,
    binary: String,
    /// Environment (name, value) as CloudFormation would set them.
    environment: Vec<(String, String)>,
    /// Names of the variables from Secrets Manager.
    secrets: Vec<String>,
}

impl Task {
    /// Every variable, secrets with dummy values (16+ characters, distinct).
    fn variables(&self) -> Vec<(String, String)> {
        let mut all = self.environment.clone();
        all.extend(
            self.secrets
                .iter()
                .map(|n| (n.clone(), format!("dummy-secret-{}", n.to_lowercase()))),
        );
        all
    }

    fn names(&self) -> BTreeSet<&str> {
        self.environment
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.secrets.iter().map(String::as_str))
            .collect()
    }
}

/// Every container of every ECS task definition in every template.
fn tasks() -> Vec<Task> {
    let mut tasks = Vec::new();
    for path in templates() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (_, template) = read_template(&file);
        let resolver = Resolver {
            parameters: &template["Parameters"],
        };
        let Some(resources) = template["Resources"].as_mapping() else {
            continue;
        };
        for (name, resource) in resources {
            if resource["Type"].as_str() != Some("AWS::ECS::TaskDefinition") {
                continue;
            }
            let properties = resolver.value(&resource["Properties"]).unwrap();
            for container in properties["ContainerDefinitions"].as_sequence().unwrap() {
                let pairs = |key: &str, value_key: &str| -> Vec<(String, String)> {
                    container[key]
                        .as_sequence()
                        .map(|items| {
                            items
                                .iter()
                                .map(|v| {
                                    (
                                        v["Name"].as_str().unwrap().to_owned(),
                                        v[value_key].as_str().unwrap().to_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                tasks.push(Task {
                    origin: format!("{file}:{}", name.as_str().unwrap()),
                    binary: container["Command"][0].as_str().unwrap().to_owned(),
                    environment: pairs("Environment", "Value"),
                    secrets: pairs("Secrets", "ValueFrom")
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect(),
                });
            }
        }
    }
    tasks
}

/// The directory of the service binaries (`cargo build --workspace --bins`, which
/// `scripts/test` runs before the tests).
fn binary(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_prx-ci-ops"))
        .parent()
        .unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins --locked` (scripts/test does)",
        path.display()
    );
    path
}

/// What `--check-config` printed on success: the sections and the other variables read.
#[derive(Debug)]
struct Checked {
    sections: BTreeSet<String>,
    variables: BTreeSet<String>,
}

/// Runs `binary --check-config` with exactly `variables` as its environment.
fn check_config(binary_name: &str, variables: &[(String, String)]) -> Result<Checked, String> {
    let output = Command::new(binary(binary_name))
        .arg("--check-config")
        .env_clear()
        .envs(variables.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("cannot run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("{stdout}{stderr}"));
    }
    let line = |prefix: &str| -> BTreeSet<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| {
                rest.split_whitespace()
                    .map(|s| s.trim_matches(['[', ']']).to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let checked = Checked {
        sections: line("sections:"),
        variables: line("variables:"),
    };
    assert!(
        checked.sections.contains("nats") && checked.sections.contains("telemetry"),
        "{binary_name} reports the common sections: {stdout}"
    );
    Ok(checked)
}

/// The task of `binary` in services.yml.
fn task_of(tasks: &[Task], binary: &str) -> usize {
    tasks
        .iter()
        .position(|t| t.binary == binary && t.origin.starts_with("services.yml:"))
        .unwrap_or_else(|| panic!("no task runs {binary}"))
}

#[test]
fn every_task_definition_sets_only_configuration_its_binary_reads() {
    let tasks = tasks();
    for binary in SERVICE_BINARIES {
        task_of(&tasks, binary);
    }
    for task in &tasks {
        assert!(
            SERVICE_BINARIES.contains(&task.binary.as_str()),
            "{}: runs {}",
            task.origin,
            task.binary
        );
        let checked = check_config(&task.binary, &task.variables()).unwrap_or_else(|e| {
            panic!(
                "{}: {} --check-config failed:\n{e}",
                task.origin, task.binary
            )
        });
        for name in task.names() {
            let key = name
                .strip_prefix("PRX_CI_")
                .unwrap_or_else(|| panic!("{}: {name} is not PRX_CI_ configuration", task.origin));
            match key.split_once("__") {
                // Figment ignores the variables of a section nobody loads: each must be read.
                Some((section, _)) => assert!(
                    checked.sections.contains(&section.to_lowercase()),
                    "{}: {name} sets [{}], which {} does not read (it reads {:?})",
                    task.origin,
                    section.to_lowercase(),
                    task.binary,
                    checked.sections
                ),
                None => assert!(
                    checked.variables.contains(name),
                    "{}: {} does not read {name}",
                    task.origin,
                    task.binary
                ),
            }
            let secret_like = ["TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|w| name.contains(w));
            assert!(
                !secret_like || task.secrets.iter().any(|s| s == name),
                "{}: {name} must come from Secrets, not Environment",
                task.origin
            );
        }
    }
    // What production needs although the configuration can do without.
    for (binary, needed) in [
        ("prx-ci-ingress", "PRX_CI_WEBHOOK_SECRET"),
        ("prx-ci-ops", "PRX_CI_OPS__TOKEN"),
        ("prx-ci-dispatcher", "PRX_CI_GITHUB__TOKEN"),
        ("prx-ci-notifier", "PRX_CI_GITHUB__TOKEN"),
        ("prx-ci-ops", "PRX_CI_GITHUB__TOKEN"),
        ("prx-ci-notifier", "PRX_CI_NOTIFIER__SLACK__TOKEN"),
    ] {
        let task = &tasks[task_of(&tasks, binary)];
        assert!(
            task.secrets.iter().any(|s| s == needed),
            "{binary}: {needed}"
        );
    }
    for binary in SERVICE_BINARIES {
        let task = &tasks[task_of(&tasks, binary)];
        for needed in ["PRX_CI_NATS__USER", "PRX_CI_NATS__PASSWORD"] {
            assert!(
                task.secrets.iter().any(|s| s == needed),
                "{binary}: {needed}"
            );
        }
        let replicas = task
            .environment
            .iter()
            .find(|(n, _)| n == "PRX_CI_NATS__REPLICAS");
        assert_eq!(
            replicas.map(|(_, v)| v.as_str()),
            Some("3"),
            "{binary}: R3 streams"
        );
    }
}

#[test]
fn check_config_fails_without_a_required_variable_or_with_an_unknown_key() {
    let tasks = tasks();
    for (binary, required, reason) in [
        (
            "prx-ci-ingress",
            "PRX_CI_WEBHOOK_SECRET",
            "no webhook secret",
        ),
        ("prx-ci-ops", "PRX_CI_OPS__TOKEN", "token is required"),
        (
            "prx-ci-publisher",
            "PRX_CI_PUBLISHER__APPLICATION_CODE_BUCKET",
            "application_code_bucket",
        ),
        (
            "prx-ci-dispatcher",
            "PRX_CI_NATS__PASSWORD",
            "user and password go together",
        ),
    ] {
        let task = &tasks[task_of(&tasks, binary)];
        let mut variables = task.variables();
        let before = variables.len();
        variables.retain(|(n, _)| n != required);
        assert_eq!(variables.len(), before - 1, "{binary} sets {required}");
        let err =
            check_config(binary, &variables).expect_err(&format!("{binary} without {required}"));
        assert!(err.contains(reason), "{binary} without {required}: {err}");
    }
    // A misspelt key of a section the binary reads is an error, not silence.
    let task = &tasks[task_of(&tasks, "prx-ci-notifier")];
    let mut variables = task.variables();
    variables.push(("PRX_CI_NOTIFIER__CHANEL".to_owned(), "#x".to_owned()));
    let err = check_config("prx-ci-notifier", &variables).expect_err("unknown key");
    assert!(err.contains("chanel"), "{err}");
}

/// The `!GetAtt`/`!Ref` target of `value`.
fn target(value: &Value) -> String {
    match value {
        Value::Tagged(t) => t.value.as_str().unwrap().to_owned(),
        other => panic!("expected !Ref or !GetAtt, found {other:?}"),
    }
}

#[test]
fn each_service_has_a_least_privilege_role_and_is_health_checked_on_its_listener() {
    let (text, template) = read_template("services.yml");
    let resources = template["Resources"].as_mapping().unwrap();
    let resource = |name: &str| &template["Resources"][name];
    let expected: [(&str, &[&str]); 6] = [
        ("Ingress", &[]),
        ("Notifier", &[]),
        ("Ops", &[]),
        (
            "Dispatcher",
            &[
                "codebuild:StartBuild",
                "codebuild:StopBuild",
                "codebuild:ListBuildsForProject",
                "codebuild:BatchGetBuilds",
            ],
        ),
        (
            "BuildWatcher",
            &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "codebuild:BatchGetBuilds",
                "logs:GetLogEvents",
            ],
        ),
        (
            "Publisher",
            &[
                "ssm:PutParameter",
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParameterHistory",
                "ecr:DescribeImages",
                "s3:GetObject",
            ],
        ),
    ];
    for (service, allowed) in expected {
        let role = &resource(&format!("{service}TaskRole"))["Properties"];
        let mut granted = Vec::new();
        actions(&role["Policies"], false, &mut granted);
        let granted: BTreeSet<&str> = granted.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            granted,
            allowed.iter().copied().collect(),
            "{service}TaskRole"
        );
        assert!(role["ManagedPolicyArns"].is_null(), "{service}TaskRole");
        let definition = &resource(&format!("{service}TaskDefinition"))["Properties"];
        assert_eq!(
            target(&definition["TaskRoleArn"]),
            format!("{service}TaskRole.Arn")
        );
    }
    // No other role of any template may start builds or write parameters.
    for path in templates() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (_, other) = read_template(&file);
        for (name, resource) in other["Resources"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            let mut granted = Vec::new();
            actions(&resource["Properties"], false, &mut granted);
            for (action, _) in granted {
                if action == "codebuild:StartBuild" || action == "codebuild:StopBuild" {
                    assert_eq!(
                        (file.as_str(), name),
                        ("services.yml", "DispatcherTaskRole")
                    );
                }
                if action == "ssm:PutParameter" {
                    assert_eq!((file.as_str(), name), ("services.yml", "PublisherTaskRole"));
                }
            }
        }
    }
    assert!(
        text.contains(":parameter${ParameterPathPrefix}*"),
        "SSM under the prefix only"
    );

    let tasks = tasks();
    for (name, service) in resources {
        if service["Type"].as_str() != Some("AWS::ECS::Service") {
            continue;
        }
        let name = name.as_str().unwrap();
        let properties = &service["Properties"];
        let breaker = &properties["DeploymentConfiguration"]["DeploymentCircuitBreaker"];
        assert_eq!(breaker["Enable"].as_bool(), Some(true), "{name}");
        assert_eq!(breaker["Rollback"].as_bool(), Some(true), "{name}");
        let key = name.strip_suffix("Service").unwrap();
        assert_eq!(target(&properties["DesiredCount"]), format!("{key}Count"));
        let count = &template["Parameters"][format!("{key}Count").as_str()];
        assert_eq!(count["Default"].as_u64(), Some(2), "{name} runs two tasks");
        // The ports the task listens on, from its own configuration.
        let definition = target(&properties["TaskDefinition"]);
        let task = tasks
            .iter()
            .find(|t| t.origin == format!("services.yml:{definition}"))
            .unwrap();
        let listening: BTreeSet<u64> = task
            .environment
            .iter()
            .filter(|(n, _)| n.ends_with("LISTEN"))
            .map(|(_, v)| v.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        // The container's own health check: the image's probe on a /healthz it serves.
        let container = &resource(&definition)["Properties"]["ContainerDefinitions"][0];
        let probe = strings(&container["HealthCheck"]["Command"]);
        assert_eq!(
            probe[..3],
            ["CMD", "prx-ci", "healthz"],
            "{name}: {probe:?}"
        );
        let probe_port: u64 = probe[3]
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix("/healthz"))
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("{name}: probe URL {:?}", probe[3]));
        assert!(
            listening.contains(&probe_port),
            "{name}: container health check on {probe_port}, listening on {listening:?}"
        );
        let balanced = properties["LoadBalancers"].as_sequence().unwrap();
        assert!(!balanced.is_empty(), "{name} is health checked");
        for entry in balanced {
            let port = entry["ContainerPort"].as_u64().unwrap();
            assert!(
                listening.contains(&port),
                "{name} listens on {port}: {listening:?}"
            );
            let group = &resource(&target(&entry["TargetGroupArn"]))["Properties"];
            if group["ProtocolVersion"].as_str() == Some("GRPC") {
                continue;
            }
            let health_port: u64 = match &group["HealthCheckPort"] {
                Value::String(p) => p.parse().unwrap(),
                _ => port,
            };
            assert!(
                listening.contains(&health_port),
                "{name}: health port {health_port}"
            );
            assert_eq!(
                group["HealthCheckPath"].as_str(),
                Some("/healthz"),
                "{name}"
            );
        }
    }
    // The webhook path is the ingress's, and the URL is an output.
    let rule = &resource("WebhookRule")["Properties"]["Conditions"][0];
    assert_eq!(
        rule["PathPatternConfig"]["Values"][0].as_str(),
        Some("/webhooks/github")
    );
    assert!(text.contains("https://${WebhookDomainName}/webhooks/github"));
    let http = &resource("WebhookHttpListener")["Properties"]["DefaultActions"][0];
    assert_eq!(http["Type"].as_str(), Some("redirect"));
    // Operators' endpoints only from OperatorCidr.
    for rule in resource("OpsLoadBalancerSecurityGroup")["Properties"]["SecurityGroupIngress"]
        .as_sequence()
        .unwrap()
    {
        assert_eq!(target(&rule["CidrIp"]), "OperatorCidr");
    }
    assert_eq!(
        resource("OpsLoadBalancer")["Properties"]["Scheme"].as_str(),
        Some("internal")
    );
}

/// The services that act take the stack's one `Mode` (no default: shadow beside the original,
/// or live), so no deployment runs some of them live and others in shadow by accident.
#[test]
fn the_acting_services_take_the_stacks_one_mode() {
    let (_, template) = read_template("services.yml");
    let mode = &template["Parameters"]["Mode"];
    assert!(mode["Default"].is_null(), "Mode is a choice, not a default");
    assert_eq!(strings(&mode["AllowedValues"]), ["live", "shadow"]);
    let tasks = tasks();
    for (binary, variable) in [
        ("prx-ci-dispatcher", "PRX_CI_DISPATCHER__MODE"),
        ("prx-ci-build-watcher", "PRX_CI_BUILD_WATCHER__MODE"),
        ("prx-ci-publisher", "PRX_CI_PUBLISHER__MODE"),
        ("prx-ci-notifier", "PRX_CI_NOTIFIER__MODE"),
    ] {
        let task = tasks.iter().find(|t| t.binary == binary).unwrap();
        let set: Vec<&str> = task
            .environment
            .iter()
            .filter(|(n, _)| n == variable)
            .map(|(_, v)| v.as_str())
            .collect();
        // The resolver gives `Mode` its last allowed value.
        assert_eq!(set, ["shadow"], "{binary}: {variable} from Mode");
    }
}
