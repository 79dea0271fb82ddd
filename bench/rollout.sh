#!/usr/bin/env bash
# Fleet rollouts (docs/benchmarks.md): a version through 100 real agents in 4 units, deploy to
# the first unit's start, artifact fetch+verify+unpack against cp and tar -x, and etcd's load
# from an idle fleet. Options go to bench/rollout.py (--instances, --probation, --units, --mb, --seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autopilot
exec python3 bench/rollout.py "${CARGO_TARGET_DIR:-target}/release/autopilot" "$@"
