#!/bin/sh
# Starts redis-server: as a replica of the current master if the election has
# one, else as a master. Runs as the redis job, so it execs the server.
set -u
. ./lib.sh
DATA=${REDIS_DATA:-/data}
mkdir -p "$DATA"
# leader: sets L to the master's HOST:PORT, empty when nobody leads (exit 1).
# An unreachable catalog (exit 3) is not "no master": starting as a master
# then could make two. Retry for a while, then fail (the job restarts).
leader() {
    t=0
    while :; do
        out=$(autopilot leader redis --timeout 2s 2>/dev/null); rc=$?
        case $rc in
            0) L=$(echo "$out" | awk '{print $2}'); return 0 ;;
            1) L=; return 0 ;;
        esac
        t=$((t + 1))
        if [ $t -ge "${LEADER_RETRIES:-30}" ]; then
            log "cannot read the election (autopilot leader: exit $rc): not starting"
            exit 1
        fi
        sleep 1
    done
}
leader
# A seat still held by this node's previous life (killed before it could
# resign): wait for it to expire rather than start as a master on old data.
n=0
while [ "$L" = "$ME" ] && [ $n -lt 150 ]; do
    sleep 0.1; n=$((n + 1)); leader
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
