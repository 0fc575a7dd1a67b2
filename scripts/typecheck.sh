#!/usr/bin/env bash
# mypy --strict over the host side (rlm/) and the sandbox runner (sandbox/, which is
# installed as rlm_sandbox: mypy sees it under that name through a temporary link).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
paths="$(mktemp -d)"
trap 'rm -rf "$paths"' EXIT
ln -s "$root/sandbox" "$paths/rlm_sandbox"
MYPYPATH="$paths" .venv/bin/mypy --cache-dir "${TMPDIR:-/tmp}/rlm-mypy-cache" -p rlm -p rlm_sandbox "$@"
