#!/usr/bin/env bash
# Builds the release binary and runs the Consul API fan-out benchmark recorded in docs/benchmarks.md:
# WATCHERS concurrent blocking queries (?index=) on /v1/health/service/X of `autopilot consul-api`
# over an embedded catalog; one change; the time until every watcher has its answer (p50/p99/max).
# BIN=path skips the build (e.g. a debug binary).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release -p autopilot
  BIN="${CARGO_TARGET_DIR:-target}/release/autopilot"
fi
python3 bench/consul_fanout.py "$BIN"
