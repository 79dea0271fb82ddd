#!/usr/bin/env bash
# Failover of the PostgreSQL and Redis blueprints against Patroni and Redis
# Sentinel, on one machine and one etcd (docs/benchmarks.md).
#   bench/failover.sh [--trials N] [--only pg|redis] [--settings default|equal|both] [--autopilot-only]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v patroni >/dev/null || need+=(patroni)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/pg_rewind >/dev/null 2>&1 || need+=(postgresql)
command -v etcd >/dev/null || need+=(etcd-server)
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || need+=(python3-psycopg2)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
cargo build --release -p autopilot
# Debian's python3: Patroni's own, with psycopg2.
exec /usr/bin/python3 bench/failover.py "${CARGO_TARGET_DIR:-target}/release/autopilot" "$@"
