#!/bin/sh
# Starts redis-server: as a replica of the current master if the election has
# one, else as a master. Runs as the redis job, so it execs the server.
set -u
. ./lib.sh
DATA=${REDIS_DATA:-/data}
mkdir -p "$DATA"
leader() { autopilot leader redis 2>/dev/null | awk '{print $2}'; }
L=$(leader)
# A seat still held by this node's previous life (killed before it could
# resign): wait for it to expire rather than start as a master on old data.
n=0
while [ "$L" = "$ME" ] && [ $n -lt 150 ]; do
    sleep 0.1; n=$((n + 1)); L=$(leader)
done
set -- --port "$PORT" --bind "${REDIS_BIND:-0.0.0.0}" --protected-mode no \
    --dir "$DATA" --save "" --appendonly no --replica-read-only yes \
    --repl-diskless-sync-delay 0
if [ -n "$L" ] && [ "$L" != "$ME" ]; then
    log "starting as a replica of $L"
    exec redis-server "$@" --replicaof "${L%:*}" "${L##*:}"
fi
log "no master elected: starting as a master"
exec redis-server "$@"
