#!/bin/sh
# retry.sh HOOK: runs the hook until it exits 0, with exponential back-off
# (REDIS_RETRY_INITIAL_MS, default 200, doubling up to REDIS_RETRY_MAX_MS,
# default 5000), logging each failure. The agent's `restarts` cannot do this
# for an `each` handler: it re-runs successful runs too, and "unlimited" is
# refused there. Each hook exits 0 once its goal is reached or no longer
# applies (the seat moved on), so no retry outlives its purpose.
set -u
hook=$1
delay=${REDIS_RETRY_INITIAL_MS:-200}
max=${REDIS_RETRY_MAX_MS:-5000}
n=1
while :; do
    sh "$hook" && exit 0
    rc=$?
    echo "$hook failed (exit $rc, attempt $n): retrying in ${delay}ms" >&2
    sleep "$((delay / 1000)).$(printf %03d $((delay % 1000)))"
    n=$((n + 1))
    delay=$((delay * 2))
    [ "$delay" -gt "$max" ] && delay=$max
done
