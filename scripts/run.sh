#!/usr/bin/env bash
# Set up (idempotent) and run the gateway on the example config against the embedded dev broker.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec .venv/bin/claudemesh-gateway -c config.example.toml run "$@"
