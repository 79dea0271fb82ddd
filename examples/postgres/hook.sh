#!/bin/sh
# hook.sh STEP: runs STEP.sh (promote, follow or fence) once. A failure whose
# goal still applies exits non-zero, and the agent retries the run with
# back-off (the job's `restarts`), logging each failure: no silent give-up.
# Once the goal no longer applies (the seat moved since), it exits 0.
set -u
. ./lib.sh
step=$1
sh "./$step.sh" && exit 0
rc=$?
current_leader
case $step in
    promote) [ "$LADDR" = "$ME" ] ;;
    follow) [ -n "$LADDR" ] && [ "$LADDR" != "$ME" ] ;;
    *) [ "$LADDR" != "$ME" ] ;;
esac || {
    log "$step: no longer applies (leader now: ${LID:-none}); not retrying"
    exit 0
}
log "!!! $step failed (exit $rc); the agent retries it with back-off"
exit "$rc"
