# Shared by run.sh and test.sh: create .venv once and install the package (and extras) into it.
# pip's output goes to .venv/install.log and is shown only when the install fails.
set -euo pipefail
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".${1:-}" > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  echo "error: installing claudemesh-gateway into .venv failed (log above, also in .venv/install.log)" >&2
  exit 1
fi
