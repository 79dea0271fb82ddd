#!/bin/sh
# Healthy: a master; or a replica that has completed a sync with some master
# since this redis-server started. A replica whose master just died stays
# healthy (it holds the data and must be able to win the election); a new
# replica is not announced until its first sync is done.
# Also, every check: a master that does not hold the seat gets its write pause
# renewed (a pause must never lapse on a deposed master), and the replication
# offset is published as this member's position when it changed.
set -u
. ./lib.sh
I=$(REDISCLI_AUTH=$PW timeout 1 redis-cli -p "$PORT" INFO 2>/dev/null | tr -d '\r')
[ "$(field "$I" loading)" = 0 ] || exit 1
state=${AUTOPILOT_JOB_STATE_DIR:-}
if [ -z "$state" ]; then private_dir || exit 1; state=$PRIV; fi
off=$(field "$I" master_repl_offset)
# Keyed by the agent's PID too: a restarted agent's member record starts without it.
pos="${AUTOPILOT_PID:-} $off"
if [ -n "$off" ] && [ "$pos" != "$(cat "$state/position" 2>/dev/null)" ]; then
    echo "$pos" > "$state/position"
    # Logged once per failure streak, not on every changed offset.
    if out=$(timeout 1 autopilot cluster position "$off" 2>&1); then
        rm -f "$state/position-failed"
    elif [ ! -e "$state/position-failed" ]; then
        touch "$state/position-failed"
        log "position not published (autopilot cluster position $off: $(echo "$out" | head -n 1))"
    fi
fi
# repause: a master without the seat keeps its writes held. Decided under the
# fence lock, against the seat as known now.
repause() {
    is_leader && return 0
    [ "$(info 127.0.0.1 "$PORT" role)" = master ] || return 0
    pause || { log "deposed master: cannot renew the write pause"; return 1; }
}
if [ "$(field "$I" role)" = master ]; then
    locked repause || exit 1
    exit 0
fi
[ "$(field "$I" master_sync_in_progress)" = 1 ] && exit 1
mark="$state/synced-$(field "$I" run_id)"
if [ "$(field "$I" master_link_status)" = up ]; then
    [ -e "$mark" ] || touch "$mark"
    exit 0
fi
[ -e "$mark" ]
