#!/usr/bin/env bash
# Builds the release binary and runs the footprint benchmarks of docs/benchmarks.md (issue 18):
# memory after 30 s and exec -> main job exec with the issue's config (5 health-checked jobs,
# a registered service, telemetry), on the embedded catalog and on a single-node etcd.
# Usage: bench/footprint.sh [--catalog local|etcd|both] [--runs N] [--settle S] [--lat N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p autopilot
bin="${CARGO_TARGET_DIR:-target}/release/autopilot"
echo "binary: $(stat -c %s "$bin") bytes ($bin)" >&2
python3 bench/footprint.py "$bin" "$@"
