#!/bin/sh
# Lost the seat while primary: stop now, so no write lands on a deposed
# primary. The job restarts; start.sh rejoins as a standby of the new one.
set -u
. ./lib.sh
if [ "$(q 'select pg_is_in_recovery()')" = f ]; then
    log "demoted while primary: stopping"
    # A fast shutdown refuses new writes at once and still sends the last
    # WAL to the standbys, so the next primary misses nothing.
    as_pg pg_ctl -D "$DATA" stop -m fast -t 5 -w >/dev/null ||
        as_pg pg_ctl -D "$DATA" stop -m immediate -w >/dev/null
fi
