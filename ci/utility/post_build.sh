#!/usr/bin/env bash
# shellcheck shell=bash
#
# prx-ci post-build helper: publishes a build's labelled Docker images to ECR and labelled ZIP
# archives to S3, and exports one variable per label for the publisher (via the buildspec's
# env.exported-variables). Drop-in replacement for PRX/Infrastructure ci/utility/post_build.sh.
#
# Usage, in buildspec.yml (post_build phase), after downloading this file:
#
#     . ./post_build.sh
#
# Full documentation: docs/post-build-helper.md in the prx-ci repository.
#
# Properties the original lacked:
# - No shell option leaks: the caller's `set` options (errexit, nounset, allexport, noclobber,
#   noglob, errtrace, functrace, pipefail) and IFS are the same after sourcing as before; only the
#   label variables (and PRX_S3_ARCHIVE_BUILD_PATH when defaulted) are added, and the helper's
#   functions are removed again.
# - On failure it returns non-zero (never `exit`s the sourcing shell) after naming the failing step.
# - Label values are validated (they become variable names) before anything is pushed.
# - Several ECR-labelled images in one build get distinct tags (see docs).
# - One label value on several images (e.g. inherited LABEL lines): as the original, the last
#   image listed wins the tag and the variable, but with a warning naming every image involved;
#   PRX_CI_STRICT_LABELS=true makes it an error instead.
#
# Compatible with bash 4.2 (Amazon Linux 2 build images) and bash in POSIX (sh) mode: no `local -`,
# namerefs, process substitution or ${x@Q}.

if [ -z "${BASH_VERSION:-}" ]; then
  echo "post_build.sh: ERROR: this helper needs bash; set 'env: shell: bash' in buildspec.yml" >&2
  # Sourced: `return`; executed by a non-bash shell: `exit` ends only that process.
  # shellcheck disable=SC2317 # reached when the file is executed rather than sourced
  return 1 2>/dev/null || exit 1
fi

__prx_ci_pb_error() {
  printf 'post_build.sh: ERROR: %s\n' "$*" >&2
}

__prx_ci_pb_warn() {
  printf 'post_build.sh: WARNING: %s\n' "$*" >&2
}

# Sets a global, exported variable in the sourcing shell. `declare -g` reaches the global even when
# a local of the same name is in scope, so a label such as `label` cannot be captured by a local.
__prx_ci_pb_export() {
  if ! declare -gx "$1=$2" 2>/dev/null; then
    __prx_ci_pb_error "cannot set variable $1 (is it read-only in this shell?)"
    return 1
  fi
  echo "> Exported $1=$2"
}

# Lists the distinct images carrying label key $1 and reads each one's label value.
# Results go to the caller's `found_ids` and `found_labels` arrays (dynamic scoping).
__prx_ci_pb_find_labelled() {
  local key=$1 listing id label seen=' '
  found_ids=()
  found_labels=()
  if ! listing=$(docker images --filter "label=$key" --format '{{.ID}}'); then
    # Locally a docker command without a reachable daemon means there is nothing to publish.
    # (`local_mode` is the caller's local: dynamic scoping.)
    if [ "${local_mode:-false}" = true ]; then
      echo "< Docker daemon not reachable: no images labelled $key to publish"
      return 0
    fi
    __prx_ci_pb_error "listing Docker images labelled $key failed (docker images)"
    return 1
  fi
  while IFS= read -r id; do
    [ -n "$id" ] || continue
    # `docker images` prints one row per repository:tag, so one image can appear several times.
    case $seen in *" $id "*) continue ;; esac
    seen="$seen$id "
    if ! label=$(docker inspect --format "{{ index .Config.Labels \"$key\" }}" "$id"); then
      __prx_ci_pb_error "reading label $key of image $id failed (docker inspect)"
      return 1
    fi
    found_ids+=("$id")
    found_labels+=("$label")
  done <<<"$listing"
}

# Fails unless $3 (the value of label $1 on image $2) can be a shell variable name.
__prx_ci_pb_check_label() {
  local key=$1 id=$2 label=$3
  # Explicit character lists: bracket ranges depend on the locale's collation in bash 4.
  local first=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_
  local rest="${first}0123456789"
  case $label in
    '' | [!$first]* | *[!$rest]*)
      __prx_ci_pb_error "label $key=\"$label\" on image $id is not a valid shell variable name" \
        "(use letters, digits and underscores, not starting with a digit): its value names the" \
        "variable this helper exports"
      return 1
      ;;
    # Names whose replacement would break the build shell or the CI contract.
    PATH | HOME | IFS | PWD | OLDPWD | SHELL | SHELLOPTS | BASHOPTS | ENV | CDPATH | TMPDIR | \
      PS4 | UID | EUID | PPID | BASH | BASH_* | CODEBUILD_* | AWS_* | PRX_REPO | PRX_COMMIT | \
      PRX_BRANCH | PRX_CI_PUBLISH | PRX_CI_PRERELEASE | PRX_CI_LOCAL | PRX_CI_STRICT_LABELS | \
      PRX_CI_REQUEST_ID | PRX_AWS_ACCOUNT_ID | \
      PRX_APPLICATION_CODE_BUCKET | PRX_S3_ARCHIVE_BUILD_PATH | PRX_TARGET_ARCHITECTURE | \
      PRX_SPIRE_* | PRX_GITHUB_* | PRX_BUILD_X86_64 | PRX_BUILD_AARCH64 | PRX_PRIMARY_X86_64 | \
      PRX_PRIMARY_AARCH64)
      __prx_ci_pb_error "label $key=\"$label\" on image $id names a variable the build shell or" \
        "CI itself uses; choose another value (it names the variable this helper exports)"
      return 1
      ;;
  esac
}

# Each label value names one exported variable, so one artifact per label is published. When
# several images carry the same value, the last one in the original's processing order (the ECR
# images in `docker images` order, then the S3 images in `docker images` order) wins, as in the
# original, where each image was pushed in turn under the shared tag and export. Only the winner is
# published: the tag and the variable end the same, without pushing images only to overwrite them.
# A warning names every image involved; with PRX_CI_STRICT_LABELS=true it is an error instead.
# Reads and rewrites the caller's ecr_ids/ecr_labels/s3_ids/s3_labels (dynamic scoping).
__prx_ci_pb_pick_winners() {
  local -a all_ids=() all_keys=() all_labels=() keep=()
  local i j n label images winner
  for i in "${!ecr_ids[@]}"; do
    all_ids+=("${ecr_ids[$i]}")
    all_keys+=("$ecr_key")
    all_labels+=("${ecr_labels[$i]}")
  done
  for i in "${!s3_ids[@]}"; do
    all_ids+=("${s3_ids[$i]}")
    all_keys+=("$s3_key")
    all_labels+=("${s3_labels[$i]}")
  done
  n=${#all_ids[@]}
  for ((i = 0; i < n; i++)); do
    keep[i]=1
    for ((j = i + 1; j < n; j++)); do
      if [ "${all_labels[j]}" = "${all_labels[i]}" ]; then
        keep[i]=0
        break
      fi
    done
  done
  for ((i = 0; i < n; i++)); do
    [ "${keep[i]}" = 1 ] || continue
    label=${all_labels[i]}
    images=""
    for ((j = 0; j < i; j++)); do
      if [ "${all_labels[j]}" = "$label" ]; then
        images="$images${all_ids[j]} (${all_keys[j]}), "
      fi
    done
    [ -n "$images" ] || continue
    winner="${all_ids[i]} (${all_keys[i]})"
    images="$images$winner"
    if [ "${PRX_CI_STRICT_LABELS:-}" = true ]; then
      __prx_ci_pb_error "label value $label is used by more than one image: $images." \
        "Each label names one exported variable, so give each image its own value" \
        "(PRX_CI_STRICT_LABELS=true makes this an error; without it the last image listed wins)"
      return 1
    fi
    __prx_ci_pb_warn "label value $label is used by more than one image: $images." \
      "The last one listed, $winner, wins (docker lists the newest image first, so it is the" \
      "oldest): only it is published and $label names its artifact (as with the original" \
      "helper, where the last image took the shared tag)." \
      "Give each image its own value, or remove the label from the others (an inherited" \
      "LABEL line?); set PRX_CI_STRICT_LABELS=true to make this an error"
  done
  ecr_ids=()
  ecr_labels=()
  s3_ids=()
  s3_labels=()
  for ((i = 0; i < n; i++)); do
    [ "${keep[i]}" = 1 ] || continue
    if [ "${all_keys[i]}" = "$ecr_key" ]; then
      ecr_ids+=("${all_ids[i]}")
      ecr_labels+=("${all_labels[i]}")
    else
      s3_ids+=("${all_ids[i]}")
      s3_labels+=("${all_labels[i]}")
    fi
  done
}

# ECR: repository github/<owner>/<repo> (lower-cased), created when missing. A failing create is
# tolerated when the repository exists afterwards (another build created it concurrently).
__prx_ci_pb_ensure_repository() {
  local repository=$1 region=$2 output
  if aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
    echo "> ECR repository $repository already exists"
    return 0
  fi
  echo "> Creating ECR repository $repository"
  if output=$(aws ecr create-repository --region "$region" --repository-name "$repository" 2>&1); then
    echo "> Created ECR repository $repository"
  elif aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
    echo "> ECR repository $repository was created concurrently by another build"
  else
    __prx_ci_pb_error "creating ECR repository $repository failed (aws ecr create-repository): $output"
    return 1
  fi
}

__prx_ci_pb_login() {
  local registry=$1 region=$2 password
  echo "> Logging into ECR $registry"
  if ! password=$(aws ecr get-login-password --region "$region"); then
    __prx_ci_pb_error "getting an ECR login password failed (aws ecr get-login-password)"
    return 1
  fi
  # printf is a builtin: the password never appears on a command line.
  if ! printf '%s' "$password" | docker login --username AWS --password-stdin "$registry"; then
    __prx_ci_pb_error "logging into ECR registry $registry failed (docker login)"
    return 1
  fi
  echo "> Logged in to ECR"
}

# Pushes the caller's ecr_ids/ecr_labels (dynamic scoping). $1 = release or prerelease,
# $2 = true in local mode.
__prx_ci_pb_push_to_ecr() {
  local prefix=$1 local_mode=$2
  echo ">>> Looking for publishable Docker images"
  if [ "${#ecr_ids[@]}" -eq 0 ]; then
    echo "< No Docker images found. Set the $ecr_key LABEL in a Dockerfile to publish its image."
    return 0
  fi
  if [ -z "${PRX_TARGET_ARCHITECTURE:-}" ]; then
    __prx_ci_pb_error "PRX_TARGET_ARCHITECTURE is required to tag Docker images (x86_64 or aarch64; set by the CI build handler)"
    return 1
  fi
  local region=${AWS_DEFAULT_REGION:-${AWS_REGION:-}}
  if [ "$local_mode" != true ] && [ -z "$region" ]; then
    __prx_ci_pb_error "AWS_DEFAULT_REGION is required to push to ECR (set by CodeBuild)"
    return 1
  fi

  local repository="github/${PRX_REPO}"
  repository=${repository,,}
  local registry="${PRX_AWS_ACCOUNT_ID}.dkr.ecr.${region}.amazonaws.com"

  if [ "$local_mode" != true ]; then
    __prx_ci_pb_ensure_repository "$repository" "$region" || return 1
    __prx_ci_pb_login "$registry" "$region" || return 1
  fi

  local i id label tag tags uri
  for i in "${!ecr_ids[@]}"; do
    id=${ecr_ids[$i]}
    label=${ecr_labels[$i]}
    tag="${PRX_COMMIT}-${PRX_TARGET_ARCHITECTURE}"
    # One label value (duplicates were dropped by __prx_ci_pb_pick_winners) keeps the original
    # tag exactly (CD parses it); several get the label as suffix so none overwrites another.
    if [ "${#ecr_ids[@]}" -gt 1 ]; then
      tag="${tag}-${label,,}"
    fi
    tags=("$tag" "${prefix}-${tag}")
    if [ "${#tags[1]}" -gt 128 ]; then
      __prx_ci_pb_error "Docker tag ${tags[1]} for label $label is longer than 128 characters; use a shorter label value"
      return 1
    fi
    if [ "$local_mode" = true ]; then
      echo "> Local mode: not pushing image $id (label $label); CodeBuild would push $repository:${tags[0]} and $repository:${tags[1]}"
    else
      echo "> Publishing Docker image $id (label $label)"
      for tag in "${tags[@]}"; do
        uri="$registry/$repository:$tag"
        if ! docker tag "$id" "$uri"; then
          __prx_ci_pb_error "tagging image $id (label $label) as $uri failed (docker tag)"
          return 1
        fi
        echo "> Pushing $uri"
        if ! docker push "$uri"; then
          __prx_ci_pb_error "pushing image $id (label $label) to $uri failed (docker push)"
          return 1
        fi
      done
      echo "< Finished publishing Docker image $id"
    fi
    # The value is repository:tag without the registry host (CD prepends it).
    __prx_ci_pb_export "$label" "$repository:${tags[0]}" || return 1
  done
}

# Copies the archive out of image $1 into $3 and uploads it to key $4. $2 = label.
__prx_ci_pb_upload_one() {
  local id=$1 label=$2 file=$3 key=$4 path=$PRX_S3_ARCHIVE_BUILD_PATH container rc=0
  echo "> Publishing ZIP file for $label from Docker image $id"
  if ! container=$(docker create "$id"); then
    __prx_ci_pb_error "creating a container from image $id (label $label) failed (docker create)"
    return 1
  fi
  echo "> Copying ZIP file $path from container $container"
  docker cp "$container:$path" "$file" || rc=$?
  if ! docker rm "$container" >/dev/null; then
    __prx_ci_pb_warn "removing container $container failed (docker rm); continuing"
  fi
  if [ "$rc" -ne 0 ]; then
    __prx_ci_pb_error "copying $path out of image $id (label $label) failed (docker cp); set PRX_S3_ARCHIVE_BUILD_PATH to the archive's path in the image"
    return 1
  fi
  if [ ! -f "$file" ]; then
    __prx_ci_pb_error "$path in image $id (label $label) is not a regular file (docker cp)"
    return 1
  fi
  echo "> Sending ZIP file to s3://$PRX_APPLICATION_CODE_BUCKET/$key"
  if ! aws s3api put-object --bucket "$PRX_APPLICATION_CODE_BUCKET" --key "$key" --acl private --body "$file"; then
    __prx_ci_pb_error "uploading $path of image $id (label $label) to s3://$PRX_APPLICATION_CODE_BUCKET/$key failed (aws s3api put-object)"
    return 1
  fi
  echo "< Finished publishing ZIP file"
}

# Uploads the caller's s3_ids/s3_labels (dynamic scoping). $1 = true in local mode.
__prx_ci_pb_push_to_s3() {
  local local_mode=$1
  echo ">>> Looking for publishable ZIP files"
  if [ "${#s3_ids[@]}" -eq 0 ]; then
    echo "< No Docker images found. Set the $s3_key LABEL in a Dockerfile to publish a ZIP file."
    return 0
  fi
  if [ "$local_mode" != true ] && [ -z "${PRX_APPLICATION_CODE_BUCKET:-}" ]; then
    __prx_ci_pb_error "PRX_APPLICATION_CODE_BUCKET is required to publish ZIP files (set on the CI build project)"
    return 1
  fi
  if [ -z "${PRX_S3_ARCHIVE_BUILD_PATH:-}" ]; then
    __prx_ci_pb_export PRX_S3_ARCHIVE_BUILD_PATH /.prxci/build.zip || return 1
  fi

  local workdir="" i id label key rc=0
  if [ "$local_mode" != true ]; then
    if ! workdir=$(mktemp -d "${TMPDIR:-/tmp}/prx-ci-post-build.XXXXXX"); then
      __prx_ci_pb_error "creating a temporary directory failed (mktemp)"
      return 1
    fi
  fi
  for i in "${!s3_ids[@]}"; do
    id=${s3_ids[$i]}
    label=${s3_labels[$i]}
    # Owner/repo case is preserved here (unlike the ECR repository name).
    key="GitHub/${PRX_REPO}/${PRX_COMMIT}/${label}.zip"
    if [ "$local_mode" = true ]; then
      echo "> Local mode: not uploading $PRX_S3_ARCHIVE_BUILD_PATH of image $id (label $label); CodeBuild would upload it to key $key"
    else
      __prx_ci_pb_upload_one "$id" "$label" "$workdir/$label.zip" "$key" || {
        rc=1
        break
      }
    fi
    __prx_ci_pb_export "$label" "$key" || {
      rc=1
      break
    }
  done
  if [ -n "$workdir" ]; then
    rm -rf -- "$workdir"
  fi
  return "$rc"
}

__prx_ci_pb_run() {
  echo ">>>>> Running post_build script (prx-ci)"

  case ${CODEBUILD_BUILD_SUCCEEDING:-} in
    '')
      __prx_ci_pb_error "CODEBUILD_BUILD_SUCCEEDING is not set: source this helper in the post_build phase of a CodeBuild build (or the prx-ci local runner)"
      return 1
      ;;
    0)
      echo "< A previous CodeBuild phase did not succeed"
      return 0
      ;;
    1) ;;
    *)
      __prx_ci_pb_error "CODEBUILD_BUILD_SUCCEEDING must be 0 or 1, not '$CODEBUILD_BUILD_SUCCEEDING'"
      return 1
      ;;
  esac

  local name missing=""
  for name in PRX_AWS_ACCOUNT_ID PRX_REPO PRX_COMMIT; do
    if [ -z "${!name:-}" ]; then
      missing="$missing $name"
    fi
  done
  if [ -n "$missing" ]; then
    __prx_ci_pb_error "required variable(s) not set:$missing (PRX_AWS_ACCOUNT_ID comes from the CI build project, PRX_REPO and PRX_COMMIT from the CI build handler)"
    return 1
  fi

  local prefix
  if [ "${PRX_CI_PUBLISH:-}" = true ]; then
    echo "> Publishing code"
    prefix=release
  elif [ "${PRX_CI_PRERELEASE:-}" = true ]; then
    echo "> Pushing pre-release code"
    prefix=prerelease
  else
    echo "< Code publishing is not enabled for this build"
    return 0
  fi

  local local_mode=false
  if [ "${PRX_CI_LOCAL:-}" = true ] && [ -z "${AWS_ENDPOINT_URL:-}" ] &&
    [ -z "${AWS_ACCESS_KEY_ID:-}" ] && [ -z "${AWS_PROFILE:-}" ]; then
    local_mode=true
    echo "> Local build (PRX_CI_LOCAL=true) without AWS settings: skipping ECR and S3; exporting the values a CodeBuild build would export"
    if ! command -v docker >/dev/null 2>&1; then
      echo "< docker is not available: no labelled images to publish"
      return 0
    fi
  fi

  # Find and validate every label before pushing anything, so a bad label fails the build
  # without a partial publish. The callees read these locals (dynamic scoping).
  local ecr_key=org.prx.spire.publish.ecr s3_key=org.prx.spire.publish.s3
  local -a found_ids=() found_labels=() ecr_ids=() ecr_labels=() s3_ids=() s3_labels=()
  __prx_ci_pb_find_labelled "$ecr_key" || return 1
  ecr_ids=("${found_ids[@]}")
  ecr_labels=("${found_labels[@]}")
  __prx_ci_pb_find_labelled "$s3_key" || return 1
  s3_ids=("${found_ids[@]}")
  s3_labels=("${found_labels[@]}")

  local i
  for i in "${!ecr_ids[@]}"; do
    __prx_ci_pb_check_label "$ecr_key" "${ecr_ids[$i]}" "${ecr_labels[$i]}" || return 1
  done
  for i in "${!s3_ids[@]}"; do
    __prx_ci_pb_check_label "$s3_key" "${s3_ids[$i]}" "${s3_labels[$i]}" || return 1
  done
  __prx_ci_pb_pick_winners || return 1

  __prx_ci_pb_push_to_ecr "$prefix" "$local_mode" || return 1
  __prx_ci_pb_push_to_s3 "$local_mode" || return 1
  echo "<<<<< post_build script finished"
}

# Runs the helper with known shell options and restores the caller's afterwards. A function (not a
# subshell) because the exports must land in the sourcing shell; options are saved from $- and
# `shopt -qo` (no command substitution: $(...) does not inherit errexit in bash mode).
__prx_ci_pb_main() {
  local saved_flags=$- saved_pipefail=off rc=0 flag
  if shopt -qo pipefail; then saved_pipefail=on; fi
  set +e +u +a +C +f +E +T
  set -o pipefail
  local IFS=$' \t\n'

  __prx_ci_pb_run || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "<<<<< post_build script FAILED (status $rc); artifacts pushed before the failure remain" >&2
  fi

  for flag in e u a C f E T; do
    case $saved_flags in
      *"$flag"*) set "-$flag" ;;
      *) set "+$flag" ;;
    esac
  done
  if [ "$saved_pipefail" = on ]; then set -o pipefail; else set +o pipefail; fi
  return "$rc"
}

# Removes every helper function from the sourcing shell, then returns $1.
__prx_ci_pb_finish() {
  unset -f __prx_ci_pb_error __prx_ci_pb_warn __prx_ci_pb_export __prx_ci_pb_find_labelled \
    __prx_ci_pb_check_label __prx_ci_pb_pick_winners __prx_ci_pb_ensure_repository __prx_ci_pb_login \
    __prx_ci_pb_push_to_ecr __prx_ci_pb_upload_one __prx_ci_pb_push_to_s3 __prx_ci_pb_run \
    __prx_ci_pb_main __prx_ci_pb_finish
  return "$1"
}

# The status of this last command is the status of `. ./post_build.sh`. The `if` keeps a caller's
# errexit from stopping the shell before the cleanup; the caller's own errexit then applies to the
# `.` command as usual.
if __prx_ci_pb_main; then __prx_ci_pb_finish 0; else __prx_ci_pb_finish "$?"; fi
