#!/bin/sh
# Lost the seat while possibly still a master: hold every write until this
# node follows the new master (follow.sh unpauses) or leads again, so a
# deposed master never acknowledges a write the new one will not have.
# Fails closed: when the role cannot be read (INFO failed or timed out) it
# pauses anyway, and it exits non-zero when it could not pause (the agent
# retries it with back-off). While the node stays a deposed master it renews
# the pause every REDIS_FENCE_RENEW seconds (0.5), so the pause never lapses,
# even in maintenance mode, where health.sh (which renews it too) is not run.
set -u
. ./lib.sh
# fence: 0 = nothing to fence (leads, or a replica), 2 = paused, 1 = failed.
fence() {
    is_leader && return 0
    role=$(info 127.0.0.1 "$PORT" role)
    case $role in
        slave) return 0 ;;
        master) why="demoted" ;;
        *) why="cannot tell the role (INFO failed or timed out)" ;;
    esac
    if pause; then
        [ "$why" = "$last" ] || log "$why: writes paused until following the new master"
        return 2
    fi
    log "$why: could not pause writes (will be retried)"
    return 1
}
last=
while :; do
    locked fence
    case $? in
        0) exit 0 ;;
        2) last=$why ;;
        *) exit 1 ;;
    esac
    sleep "${REDIS_FENCE_RENEW:-0.5}"
done
