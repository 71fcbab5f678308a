#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "[test]"
exec .venv/bin/pytest -q "$@"
