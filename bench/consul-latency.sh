#!/usr/bin/env bash
# Change -> handler latency through the Consul backend (docs/benchmarks.md, "The Consul backend").
# Builds the release binary unless BIN names one (e.g. BIN=target/debug/autopilot); N changes (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release -p autopilot
  BIN=target/release/autopilot
fi
python3 bench/consul_latency.py "$BIN" "${N:-100}"
