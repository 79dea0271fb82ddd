#!/usr/bin/env bash
# Fleet benchmark (issue 18): N real agents on one 3-member etcd cluster on loopback, or on one
# embedded catalog directory. See bench/fleet.py for what is measured.
# Usage: bench/fleet.sh [--agents 100|500|1000] [--catalog etcd|local] [--rounds N] [--idle S]
#
# Limits: each agent holds ~10 descriptors and a few threads, and runs a `sleep` job and a
# health check; 1000 agents need `ulimit -n` well above the default 1024 for this script (it
# raises the soft limit to the hard one) and kernel.pid_max above ~6000 (32768 here). The
# embedded catalog needs no inotify instance per agent (its wake-ups are unix datagram
# sockets), so no kernel setting is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
agents=100
catalog=etcd
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --agents) agents="${args[i + 1]:-}" ;;
    --agents=*) agents="${args[i]#*=}" ;;
    --catalog) catalog="${args[i + 1]:-}" ;;
    --catalog=*) catalog="${args[i]#*=}" ;;
  esac
done
ulimit -n "$(ulimit -Hn)"
echo "limits: nofile $(ulimit -n), pid_max $(sysctl -n kernel.pid_max), cores $(nproc)" >&2
cargo build --release --locked -p autopilot
bin="${CARGO_TARGET_DIR:-target}/release/autopilot"
pidfile=$(mktemp /tmp/ap-fleet-pids.XXXXXX)
# The Python harness stops everything it started and empties the PID file; should it die
# first, the trap stops what it recorded, by PID.
cleanup() {
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$pidfile"
  if [ -s "$pidfile" ]; then sleep 2; fi
  while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$pidfile"
  rm -f "$pidfile"
}
trap cleanup EXIT INT TERM
python3 bench/fleet.py "$bin" --pidfile "$pidfile" "$@"
