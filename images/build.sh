#!/usr/bin/env bash
# Build the sandbox image from a given base image.
#
#   images/build.sh [IMAGE] [BASE_IMAGE]     defaults: rlm-sandbox:latest python:3.12-slim
#
# The image is labelled with a hash of the runner's sources (rlm.sandbox.runner) so the
# host can tell when it is out of date; rlm/image.py computes the same hash.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(dirname "$here")/sandbox"
image="${1:-rlm-sandbox:latest}"
base="${2:-python:3.12-slim}"

[ -f "$src/runner.py" ] || { echo "build.sh: runner sources not found in $src" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
mkdir "$ctx/rlm_sandbox"
mapfile -t files < <(cd "$src" && ls -- *.py | LC_ALL=C sort)
for f in "${files[@]}"; do cp "$src/$f" "$ctx/rlm_sandbox/$f"; done
runner_hash="$(for f in "${files[@]}"; do printf '%s\n' "$f"; cat "$src/$f"; done \
    | sha256sum | cut -c1-64)"

echo "[build] $image from $base (runner $runner_hash)" >&2
# RUN steps need no network; --network none also spares the engine's default bridge.
docker build --quiet --network none --build-arg "BASE_IMAGE=$base" \
    --label "rlm.sandbox.runner=$runner_hash" -t "$image" "$ctx" >/dev/null
