#!/usr/bin/env bash
# Builds the release binary and runs the DNS benchmark recorded in docs/benchmarks.md:
# etcd, AGENTS agents registering instances, `autopilot dns` (and agent 0's `dns` block)
# driven by dnsperf at QPS queries/s for SECS seconds; p50/p99/max from dnsperf's per-query log.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dnsperf >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsperf; }
cargo build --release -p autopilot
python3 bench/dns.py "${CARGO_TARGET_DIR:-target}/release/autopilot"
