#!/usr/bin/env bash
# Election failover and handover on etcd (docs/benchmarks.md), then snapshot throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autopilot
python3 bench/election.py target/release/autopilot
cargo bench -p autopilot-snapshot
