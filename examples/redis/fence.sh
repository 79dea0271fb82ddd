#!/bin/sh
# Lost the seat while possibly still a master: hold every write until this
# node follows the new master (follow.sh unpauses), so a deposed master never
# acknowledges a write the new one will not have. Fails closed: when the role
# cannot be read (INFO failed or timed out) it pauses anyway, and it exits
# non-zero when it could not pause, so the agent retries it with back-off.
set -u
. ./lib.sh
fence() {
    # Elected again since (a retry after the seat came back): nothing to fence.
    is_leader && return 0
    role=$(info 127.0.0.1 "$PORT" role)
    case $role in
        slave) return 0 ;; # a replica takes no writes
        master) why="demoted" ;;
        *) why="cannot tell the role (INFO failed or timed out)" ;;
    esac
    if pause; then
        log "$why: writes paused until following the new master"
        return 0
    fi
    log "$why: could not pause writes (will be retried)"
    return 1
}
locked fence
