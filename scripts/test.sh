#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Usage: bash scripts/test.sh [pytest args]
#
# When the PostgreSQL server binaries are installed (initdb, pg_ctl, postgres), a throwaway server
# is started for the PostgreSQL half of the suite (loopback only, in a temp dir, stopped on exit);
# without them that half is skipped and the run says so. Set CLAUDEMESH_TEST_PG_DSN to use a
# server of your own instead (tests create and drop their own schemas in it), or
# CLAUDEMESH_TEST_PG=0 to skip the PostgreSQL half on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "[test]"

if [ -z "${CLAUDEMESH_TEST_PG_DSN:-}" ] && [ "${CLAUDEMESH_TEST_PG:-1}" != 0 ]; then
  rc=0
  pg_env=$(bash scripts/pg-test-server.sh start) || rc=$?
  if [ "$rc" = 0 ]; then
    eval "$pg_env"
    trap 'bash scripts/pg-test-server.sh stop "$PG_TEST_DIR"' EXIT
  elif [ "$rc" = 3 ]; then
    echo "NOTICE: no PostgreSQL server binaries here: the PostgreSQL half of the suite will be SKIPPED" >&2
  else
    echo "error: the throwaway PostgreSQL for the tests did not start (see above)" >&2
    exit 1
  fi
fi

.venv/bin/python -m pip install --disable-pip-version-check -q -e examples/claudemesh-gateway-example >> .venv/install.log 2>&1 || { tail -20 .venv/install.log >&2; exit 1; }  # the third-party example plugin
.venv/bin/pytest -q "$@"
