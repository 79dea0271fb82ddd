#!/bin/sh
# Lost the seat: unless this node is certainly a standby (it writes
# nothing), stop the server now, so no write lands on a deposed primary. Fails
# closed: a server that does not answer (so its role is unknown) is stopped
# too. The job restarts; start.sh rejoins as a standby of the new primary.
set -u
. ./lib.sh
# A server that does not answer within 3 s is stopped.
r=$(Q_TIMEOUT=3 q 'select pg_is_in_recovery()')
[ "$r" = t ] && exit 0
log "demoted (primary: ${r:-cannot tell}): stopping the server"
stop_server
