#!/bin/sh
# Lost the seat while primary: stop now, so no write lands on a deposed
# primary. The job restarts; start.sh rejoins as a standby of the new one.
set -u
. ./lib.sh
if [ "$(q 'select pg_is_in_recovery()')" = f ]; then
    log "demoted while primary: stopping"
    as_pg pg_ctl -D "$DATA" stop -m immediate -w >/dev/null
fi
