#!/usr/bin/env bash
# Backend removal in the nginx blueprint (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { echo "install nginx-light (./scripts/test does)" >&2; exit 1; }
cargo build --release -p autopilot
exec python3 bench/nginx.py target/release/autopilot "$@"
