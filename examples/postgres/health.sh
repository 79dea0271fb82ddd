#!/bin/sh
# Healthy: the server accepts queries (a primary, or a hot standby), and this
# node has not just refused to promote (promote.sh: not a synchronous
# standby); failing health then hands the seat to another node.
set -u
. ./lib.sh
if [ -e "$PRIV/ineligible" ]; then
    age=$(($(date +%s) - $(stat -c %Y "$PRIV/ineligible" 2>/dev/null || echo 0)))
    if [ "$age" -lt 30 ]; then
        echo "not eligible to lead (not a synchronous standby)" >&2
        exit 1
    fi
    rm -f "$PRIV/ineligible"
fi
# The replication position (a standby's replay LSN, a primary's flush LSN)
# doubles as the liveness query.
pos=$(q "select case when pg_is_in_recovery() then coalesce(pg_last_wal_replay_lsn(), '0/0') else pg_current_wal_flush_lsn() end")
[ -n "$pos" ] || exit 1
# Published as this member's position, only when it changed. The cache is
# keyed by the agent's PID too: a restarted agent's member record starts
# without a position, so an idle server must publish it again. A failure to
# publish is logged (once until it works again) and never fails the check.
key="${AUTOPILOT_PID:-} $pos"
if [ "$key" != "$(cat "$PRIV/position" 2>/dev/null)" ]; then
    if out=$(timeout 1 autopilot cluster position "$pos" 2>&1); then
        echo "$key" | put position
        rm -f "$PRIV/position-failed"
    elif [ ! -e "$PRIV/position-failed" ]; then
        log "cannot publish the position $pos (autopilot cluster position): $(echo "$out" | head -1)"
        : | put position-failed
    fi
fi
exit 0
