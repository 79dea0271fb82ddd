#!/bin/sh
# The master changed: replicate the new one, once it has finished promoting
# (pointing at a node still catching up could make a replication loop).
# Exits non-zero when this node does not replicate the new master, so the
# agent retries it with back-off; exits 0 when the goal no longer applies (no
# leader, this node leads, or a newer leader is known: its own run follows).
set -u
. ./lib.sh
L="${AUTOPILOT_LEADER_REDIS_ADDRESS:-}:${AUTOPILOT_LEADER_REDIS_PORT:-}"
want=${AUTOPILOT_LEADER_REDIS_ID:-}
[ "$L" = ":" ] && exit 0
[ "$want" = "$MYID" ] && exit 0 # promote.sh handles our own election
[ "$L" = "$ME" ] && exit 0
current() { [ "$(leader_id)" = "$want" ]; }
# Bounded: REDIS_FOLLOW_WAIT seconds (default 10) for the new master to promote.
limit=$(( ${REDIS_FOLLOW_WAIT:-10} * 20 ))
n=0
while [ "$(info "${L%:*}" "${L##*:}" role)" != master ]; do
    current || { log "follow: $want no longer leads; not following it"; exit 0; }
    if [ $n -ge $limit ]; then
        log "follow: $L is not a master after ${REDIS_FOLLOW_WAIT:-10}s (will be retried)"
        exit 1
    fi
    sleep 0.05; n=$((n + 1))
done
follow() {
    current || { log "follow: $want no longer leads; not following it"; return 0; }
    r=$(cli REPLICAOF "${L%:*}" "${L##*:}" | tr -d '\r')
    case $r in
        OK*) ;;
        *) log "follow: REPLICAOF $L failed: ${r:-no answer} (will be retried)"; return 1 ;;
    esac
    # A replica takes no writes: lift the deposed master's pause.
    unpause || { log "follow: CLIENT UNPAUSE failed (will be retried)"; return 1; }
    case $r in *"Already connected"*) ;; *) log "following $L" ;; esac
}
locked follow
