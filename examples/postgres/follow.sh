#!/bin/sh
# The primary changed. A standby re-points primary_conninfo once the new
# primary has finished promoting; a node that is itself still a primary stops
# (its restart rewinds it onto the new timeline).
set -u
. ./lib.sh
L="${AUTOPILOT_LEADER_POSTGRES_ADDRESS:-}:${AUTOPILOT_LEADER_POSTGRES_PORT:-}"
[ "$L" = ":" ] && exit 0
[ "$L" = "$ME" ] && exit 0
if [ "$(q 'select pg_is_in_recovery()')" = f ]; then
    log "$L leads but this node is a primary: stopping to rejoin as a standby"
    as_pg pg_ctl -D "$DATA" stop -m fast -w >/dev/null
    exit 0
fi
n=0
while [ "$(qr "$L" 'select pg_is_in_recovery()')" != f ] && [ $n -lt 200 ]; do
    sleep 0.05; n=$((n + 1))
done
conninfo "$L"
q "select pg_reload_conf()" >/dev/null
log "streaming from $L"
