#!/usr/bin/env bash
# The etcd benchmarks recorded in docs/benchmarks.md: propagation, 500 agents,
# fan-out (cargo bench), then the idle agent's request rate (python).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p autopilot-catalog-etcd
cargo build --release -p autopilot
python3 bench/etcd_idle.py target/release/autopilot
