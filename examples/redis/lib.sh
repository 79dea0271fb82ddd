# Shared by the hooks: this node's port, redis-cli, and reading INFO fields.
PORT=${REDIS_PORT:-6379}
ME="${CONTAINERPILOT_REDIS_IP:-127.0.0.1}:$PORT"
cli() { redis-cli -p "$PORT" "$@"; }
# info HOST PORT FIELD: one field of INFO replication (empty if unreachable).
info() {
    timeout 1 redis-cli -h "$1" -p "$2" INFO replication 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"
}
log() { echo "$*" >&2; }
