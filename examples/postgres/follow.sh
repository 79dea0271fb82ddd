#!/bin/sh
# The primary changed. A standby re-points primary_conninfo once the new
# primary has finished promoting; a node that is itself still a primary stops
# (its restart rewinds it onto the new timeline). Exits non-zero when it did
# not get there (the agent retries it).
set -u
. ./lib.sh
current_leader
L=$LADDR
[ -z "$L" ] && exit 0
[ "$L" = "$ME" ] && exit 0
# A server that is not running follows from start.sh when it starts.
running || exit 0
case "$(q 'select pg_is_in_recovery()')" in
    t) ;;
    f)
        log "$L leads but this node is a primary: stopping to rejoin as a standby"
        stop_server
        exit
        ;;
    *)
        log "cannot tell this node's role: the server does not answer"
        exit 1
        ;;
esac
n=0
while [ "$(qr "$L" 'select pg_is_in_recovery()')" != f ]; do
    n=$((n + 1))
    if [ $n -ge 200 ]; then
        log "$L has not become a primary: not following it yet"
        exit 1
    fi
    sleep 0.05
done
conninfo "$L"
[ "$(q "select pg_reload_conf()")" = t ] || exit 1
rm -f "$PRIV/ineligible"
log "streaming from $L"
