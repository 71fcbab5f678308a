#!/usr/bin/env bash
# Set up (idempotent) and run the gateway on the example config against the embedded dev broker.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/claudemesh-gateway run -c config.example.toml "$@"
