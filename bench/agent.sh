#!/usr/bin/env bash
# Builds the release binary and runs the agent benchmarks recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autopilot
python3 bench/agent.py target/release/autopilot
