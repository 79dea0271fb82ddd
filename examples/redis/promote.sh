#!/bin/sh
# Elected. If this node is a replica, first catch up from the most advanced
# reachable replica (a write acknowledged by WAIT 1 may be on it alone), then
# become the master. Exits non-zero when this node did not become a writable
# master, so the agent retries it with back-off; exits 0 at once if this node
# no longer holds the seat (a retry after a lost seat).
set -u
. ./lib.sh
if ! is_leader; then
    log "promote: this node no longer holds the seat (leader: $(leader_id)); nothing to do"
    exit 0
fi
promoted() {
    # Under the fence lock: a deposed-master pause decided before the seat
    # came to this node has landed by now, and the next one sees the seat.
    is_leader || { log "promote: the seat was lost before writes were enabled"; return 0; }
    unpause || { log "promote: CLIENT UNPAUSE failed (will be retried)"; return 1; }
    log "promoted to master (term ${AUTOPILOT_LEADER_REDIS_TERM:-?})"
}
R=$(repl 127.0.0.1 "$PORT")
role=$(field "$R" role)
case $role in
    master) locked promoted; exit $? ;;
    slave) ;;
    *) log "promote: cannot read this node's role (INFO failed or timed out; will be retried)"; exit 1 ;;
esac
best=$(field "$R" master_repl_offset)
best_peer=
# In a graceful handover the old master is alive (fence.sh paused its writes):
# it is a candidate too, and usually the most advanced one.
upstream="$(field "$R" master_host):$(field "$R" master_port)"
for peer in $upstream $(autopilot template render peers.tmpl --once --timeout 2s); do
    [ "$peer" = "$ME" ] || [ "$peer" = ":" ] && continue
    off=$(info "${peer%:*}" "${peer##*:}" master_repl_offset)
    if [ -z "$off" ]; then
        log "promote: peer $peer unreachable; its writes cannot be recovered"
    elif [ "$off" -gt "${best:-0}" ]; then
        best=$off; best_peer=$peer
    fi
done
if [ -n "$best_peer" ]; then
    log "catching up from $best_peer (offset $best) before promotion"
    r=$(cli REPLICAOF "${best_peer%:*}" "${best_peer##*:}" | tr -d '\r')
    case $r in OK*) ;; *) log "promote: REPLICAOF $best_peer failed: $r (will be retried)"; exit 1 ;; esac
    # Bounded: REDIS_CATCHUP_TIMEOUT seconds (default 10).
    limit=$(( ${REDIS_CATCHUP_TIMEOUT:-10} * 20 ))
    n=0
    while :; do
        R=$(repl 127.0.0.1 "$PORT")
        mine=$(field "$R" master_repl_offset)
        if [ "$(field "$R" master_link_status)" = up ] && [ "${mine:-0}" -ge "$best" ]; then
            break
        fi
        if [ $n -ge $limit ]; then
            # The choice (README, "Promotion"): a peer that is still reachable
            # and still ahead holds writes we would lose, so do not promote:
            # fail, and be retried. One that died took those writes with it.
            if [ -n "$(info "${best_peer%:*}" "${best_peer##*:}" master_repl_offset)" ]; then
                log "promote: gave up catching up from $best_peer after ${REDIS_CATCHUP_TIMEOUT:-10}s (offset ${mine:-?} < $best); not promoting while it has writes this node lacks (will be retried)"
                exit 1
            fi
            log "promote: gave up catching up from $best_peer after ${REDIS_CATCHUP_TIMEOUT:-10}s (offset ${mine:-?} < $best); it is unreachable now, promoting without its last writes"
            break
        fi
        is_leader || { log "promote: the seat was lost while catching up"; exit 0; }
        sleep 0.05; n=$((n + 1))
    done
fi
is_leader || { log "promote: the seat was lost before promotion"; exit 0; }
r=$(cli REPLICAOF NO ONE | tr -d '\r')
case $r in OK*) ;; *) log "promote: REPLICAOF NO ONE failed: $r (will be retried)"; exit 1 ;; esac
locked promoted
