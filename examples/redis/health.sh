#!/bin/sh
# Healthy: a master; or a replica that has completed a sync with some master
# since this redis-server started. A replica whose master just died stays
# healthy (it holds the data and must be able to win the election); a new
# replica is not announced until its first sync is done.
set -u
. ./lib.sh
I=$(timeout 1 redis-cli -p "$PORT" INFO 2>/dev/null | tr -d '\r') || exit 1
field() { echo "$I" | sed -n "s/^$1://p"; }
[ "$(field loading)" = 0 ] || exit 1
[ "$(field role)" = master ] && exit 0
[ "$(field master_sync_in_progress)" = 1 ] && exit 1
mark="${AUTOPILOT_JOB_STATE_DIR:-/tmp}/synced-$(field run_id)"
if [ "$(field master_link_status)" = up ]; then
    [ -e "$mark" ] || touch "$mark"
    exit 0
fi
[ -e "$mark" ]
