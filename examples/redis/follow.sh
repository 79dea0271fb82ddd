#!/bin/sh
# The master changed: replicate the new one, once it has finished promoting
# (pointing at a node still catching up could make a replication loop).
set -u
. ./lib.sh
L="${AUTOPILOT_LEADER_REDIS_ADDRESS:-}:${AUTOPILOT_LEADER_REDIS_PORT:-}"
[ "$L" = ":" ] && exit 0
[ "$L" = "$ME" ] && exit 0 # promote.sh handles our own election
n=0
while [ "$(info "${L%:*}" "${L##*:}" role)" != master ] && [ $n -lt 200 ]; do
    sleep 0.05; n=$((n + 1))
done
cli REPLICAOF "${L%:*}" "${L##*:}" >/dev/null
cli CLIENT UNPAUSE >/dev/null
log "following $L"
