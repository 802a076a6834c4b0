//! The names of the build environment's `PRX_*` variables (reference §1.2, §2.2, §3): what the
//! dispatcher sets on every build, and what a build's post-build helper exports back.
//! Existing app repositories read and write exactly these names.

/// `owner/repo` of the repository built.
pub const REPO: &str = "PRX_REPO";
/// The full commit SHA built.
pub const COMMIT: &str = "PRX_COMMIT";
/// The branch built (the head branch of a pull request).
pub const BRANCH: &str = "PRX_BRANCH";
/// `true` when the build may publish (a push to a publishing branch).
pub const CI_PUBLISH: &str = "PRX_CI_PUBLISH";
/// `true` in a prerelease build: artifacts are pushed, parameters never written.
pub const CI_PRERELEASE: &str = "PRX_CI_PRERELEASE";
/// The pull request number.
pub const GITHUB_PR: &str = "PRX_GITHUB_PR";
pub const GITHUB_PR_TITLE: &str = "PRX_GITHUB_PR_TITLE";
pub const GITHUB_PR_BASE_BRANCH: &str = "PRX_GITHUB_PR_BASE_BRANCH";
pub const GITHUB_PR_AUTHOR: &str = "PRX_GITHUB_PR_AUTHOR";
/// The pull request action (`opened`, `synchronize`, ...).
pub const GITHUB_ACTION: &str = "PRX_GITHUB_ACTION";
/// A push's `before` and `after` commits.
pub const GITHUB_BEFORE: &str = "PRX_GITHUB_BEFORE";
pub const GITHUB_AFTER: &str = "PRX_GITHUB_AFTER";
/// `x86_64` or `aarch64`.
pub const TARGET_ARCHITECTURE: &str = "PRX_TARGET_ARCHITECTURE";

/// Exported by the post-build helper: the `parameter=image` mappings of pushed images.
pub const SPIRE_ECR_PKG_PARAMETERS: &str = "PRX_SPIRE_ECR_PKG_PARAMETERS";
/// Exported by the post-build helper: the `parameter=key` mappings of uploaded archives.
pub const SPIRE_S3_PKG_PARAMETERS: &str = "PRX_SPIRE_S3_PKG_PARAMETERS";
/// The AWS account the build pushes images to.
pub const AWS_ACCOUNT_ID: &str = "PRX_AWS_ACCOUNT_ID";
/// The bucket the build uploads archives to.
pub const APPLICATION_CODE_BUCKET: &str = "PRX_APPLICATION_CODE_BUCKET";
/// The dispatcher's id of the request that started the build (the backend's idempotency key):
/// a dispatcher that crashed between starting a build and recording it finds the build by it
/// ([`crate::codebuild::backend::BuildBackend::find`]). Set on every build through the request's
/// environment, so it is the dispatcher's variable (see [`DISPATCHER_VARIABLES`]).
pub const CI_REQUEST_ID: &str = "PRX_CI_REQUEST_ID";
/// `true` on the local runner's builds (a buildspec can tell it is not on CodeBuild).
pub const CI_LOCAL: &str = "PRX_CI_LOCAL";

/// Variables the dispatcher decides (reference §2.2). A build may read them but never speaks for
/// them: a value it exports under one of these names contradicts the dispatcher unless equal.
/// (Any other variable in the request's environment is the dispatcher's too.)
pub const DISPATCHER_VARIABLES: [&str; 13] = [
    REPO,
    COMMIT,
    BRANCH,
    TARGET_ARCHITECTURE,
    CI_PUBLISH,
    GITHUB_PR,
    GITHUB_PR_TITLE,
    GITHUB_PR_BASE_BRANCH,
    GITHUB_PR_AUTHOR,
    GITHUB_ACTION,
    GITHUB_BEFORE,
    GITHUB_AFTER,
    CI_REQUEST_ID,
];
