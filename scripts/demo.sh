#!/usr/bin/env bash
# Installs rlm and runs the demo: a needle in a ~1M-line context, answered end to end.
# With no OPENAI_API_KEY it uses the built-in offline model. It sets up Docker (the
# default sandbox) when it can, and falls back to the restricted backend when it can't.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
if ! bash scripts/setup-docker.sh; then
  echo "demo: Docker could not be set up here; the demo will use the restricted backend" >&2
fi
exec .venv/bin/rlm demo "$@"
