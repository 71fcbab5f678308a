#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "[test]"
.venv/bin/python -m pip install --disable-pip-version-check -q -e examples/claudemesh-gateway-example >> .venv/install.log 2>&1 || { tail -20 .venv/install.log >&2; exit 1; }  # the third-party example plugin
exec .venv/bin/pytest -q "$@"
