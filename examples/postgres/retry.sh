#!/bin/sh
# retry.sh STEP: runs STEP.sh (promote, follow or fence) until it reaches its
# goal, backing off 0.2 s doubling to 5 s, and logs every failure; no silent
# give-up. Once the goal no longer applies (the seat moved since), it stops
# with success. The retry lives here because the agent's `restarts` re-run a
# hook after a success too, and "unlimited" is refused with `when.each`.
set -u
. ./lib.sh
step=$1
d=200
n=0
while :; do
    sh "./$step.sh" && exit 0
    rc=$?
    n=$((n + 1))
    current_leader
    case $step in
        promote) [ "$LADDR" = "$ME" ] ;;
        follow) [ -n "$LADDR" ] && [ "$LADDR" != "$ME" ] ;;
        *) [ "$LADDR" != "$ME" ] ;;
    esac || {
        log "$step: no longer applies (leader now: ${LID:-none}); not retrying"
        exit 0
    }
    log "!!! $step failed (exit $rc, attempt $n); retrying in ${d} ms"
    sleep "$((d / 1000)).$(printf %03d $((d % 1000)))"
    d=$((d * 2))
    [ $d -gt 5000 ] && d=5000
done
