#!/usr/bin/env bash
# Builds the release binary and runs the embedded-catalog benchmarks recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autopilot
python3 bench/catalog.py target/release/autopilot
