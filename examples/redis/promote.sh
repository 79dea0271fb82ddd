#!/bin/sh
# Elected. If this node is a replica, first catch up from the most advanced
# reachable replica (a write acknowledged by WAIT 1 may be on it alone), then
# become the master.
set -u
. ./lib.sh
if [ "$(info 127.0.0.1 "$PORT" role)" = master ]; then
    cli CLIENT UNPAUSE >/dev/null
    exit 0
fi
best=$(info 127.0.0.1 "$PORT" master_repl_offset)
best_peer=
# In a graceful handover the old master is alive (fence.sh paused its writes):
# it is a candidate too, and usually the most advanced one.
upstream="$(info 127.0.0.1 "$PORT" master_host):$(info 127.0.0.1 "$PORT" master_port)"
for peer in $upstream $(autopilot template render peers.tmpl --once --timeout 2s); do
    [ "$peer" = "$ME" ] && continue
    off=$(info "${peer%:*}" "${peer##*:}" master_repl_offset)
    if [ -n "$off" ] && [ "$off" -gt "${best:-0}" ]; then
        best=$off; best_peer=$peer
    fi
done
if [ -n "$best_peer" ]; then
    log "catching up from $best_peer (offset $best) before promotion"
    cli REPLICAOF "${best_peer%:*}" "${best_peer##*:}" >/dev/null
    n=0
    while [ $n -lt 50 ]; do
        if [ "$(info 127.0.0.1 "$PORT" master_link_status)" = up ] &&
           [ "$(info 127.0.0.1 "$PORT" master_repl_offset)" -ge "$best" ]; then
            break
        fi
        sleep 0.05; n=$((n + 1))
    done
fi
cli REPLICAOF NO ONE >/dev/null
cli CLIENT UNPAUSE >/dev/null
log "promoted to master"
