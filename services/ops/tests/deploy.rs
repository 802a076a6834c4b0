//! The deployment files: the CloudFormation template passes cfn-lint, docker-compose.yml
//! describes the NATS cluster, every service and the AWS emulator with files that exist.

use std::path::Path;
use std::process::Command;

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

#[test]
fn docker_compose_runs_the_cluster_every_service_and_the_emulator() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml_ng::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().expect("services");
    let in_repo = |container_path: &str| -> bool {
        container_path
            .strip_prefix("/src/")
            .is_some_and(|p| root.join(p).exists())
    };

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

    let built = strings(&services["build"]["command"]).join(" ");
    for svc in [
        "ingress",
        "dispatcher",
        "build-watcher",
        "publisher",
        "notifier",
        "ops",
    ] {
        let service = &services[svc];
        let command = strings(&service["command"]);
        let binary = format!("prx-ci-{svc}");
        assert_eq!(command[0], format!("/target/release/{binary}"), "{svc}");
        assert!(
            built.contains(&format!("--bin={binary}")),
            "{binary} is built"
        );
        assert_eq!(command[1], "--config");
        assert!(in_repo(&command[2]), "{svc}: {} exists", command[2]);
        assert_eq!(service["network_mode"].as_str(), Some("host"));
        let deps = service["depends_on"].as_mapping().expect("depends_on");
        for dep in ["build", "n1", "n2", "n3", "moto"] {
            assert!(deps.contains_key(dep), "{svc} waits for {dep}");
        }
        assert!(
            in_repo(service["environment"]["PRX_CI_CONFIG"].as_str().unwrap()),
            "{svc} config"
        );
    }
    // The services' config points at the cluster with three replicas and at the emulator.
    let config = std::fs::read_to_string(root.join("deploy/compose/prx-ci.toml")).unwrap();
    assert!(config.contains("replicas = 3"));
    for port in [4222, 4223, 4224] {
        assert!(config.contains(&format!("nats://127.0.0.1:{port}")));
    }
    assert!(config.contains("endpoint_url = \"http://127.0.0.1:5000\""));
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
