#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs rlm, sets up the Docker engine,
# gVisor and the sandbox image, starts a throwaway PostgreSQL server, checks lint and
# types (mypy --strict on rlm/ and sandbox/), and runs every test. Nothing may skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
bash scripts/setup-docker.sh
bash scripts/setup-browser.sh  # chromium + chromium-driver for tests/viewer/
# The service's PostgreSQL tests: a throwaway cluster on loopback for this run (the
# package is installed from Debian's if missing), unless one is given.
if [ -z "${RLM_TEST_POSTGRES_URL:-}" ]; then
    pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/rlm-test-postgres.XXXXXX")"
    trap 'bash scripts/setup-postgres.sh stop "$pg_dir" || true; rm -rf "$pg_dir"' EXIT
    RLM_TEST_POSTGRES_URL="$(bash scripts/setup-postgres.sh start "$pg_dir")"
    export RLM_TEST_POSTGRES_URL
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
# RLM_NO_SKIP turns any skipped test into a failure: a skip here is a missing test.
RLM_NO_SKIP=1 .venv/bin/python -m pytest -p no:cacheprovider "$@"
