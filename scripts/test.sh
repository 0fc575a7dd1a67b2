#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs rlm, sets up the Docker engine,
# gVisor and the sandbox image, checks lint and types (mypy --strict on rlm/ and
# sandbox/), and runs every test. Nothing may skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
bash scripts/setup-docker.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
# RLM_NO_SKIP turns any skipped test into a failure: a skip here is a missing test.
RLM_NO_SKIP=1 .venv/bin/python -m pytest -p no:cacheprovider "$@"
