#!/bin/sh
# The postgres job. Brings the data directory to a state that fits the
# election, then execs the server:
#   - no data (the guarded bootstrap chose this node): initdb, or clone the
#     primary with pg_basebackup if one was elected meanwhile;
#   - another node leads and this one was a primary: pg_rewind onto the new
#     timeline, or re-clone if that fails;
#   - another node leads: stream from it.
set -u
. ./lib.sh
mkdir -p "$DATA" "$PRIV"
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA" "$PRIV"; fi
chmod 700 "$DATA" "$PRIV"

leader
# A seat still held by this node's previous life: wait for it to expire
# rather than start as a primary beside the one about to be elected.
n=0
while [ "$L" = "$ME" ] && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); leader; done

clone() {
    log "cloning $1 with pg_basebackup"
    find "$DATA" -mindepth 1 -delete
    as_pg pg_basebackup -h "${1%:*}" -p "${1##*:}" -U postgres -D "$DATA" -X stream --checkpoint=fast || exit 1
    as_pg touch "$DATA/standby.signal"
}

if [ ! -e "$DATA/PG_VERSION" ]; then
    if [ -n "$L" ] && [ "$L" != "$ME" ]; then
        clone "$L"
    else
        log "bootstrap: initdb"
        as_pg initdb -D "$DATA" -U postgres --auth=trust >/dev/null || exit 1
        # Lab defaults: trust on the nodes' own networks. Use scram and a
        # password file for anything else.
        cat >> "$DATA/pg_hba.conf" <<HBA
host all all samenet trust
host replication all samenet trust
HBA
        # In the file, not on the command line: pg_rewind's crash recovery
        # and every clone (pg_basebackup copies it) see the same settings.
        cat >> "$DATA/postgresql.conf" <<CONF
# autopilot blueprint
wal_level = replica
hot_standby = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 512MB
wal_log_hints = on
shared_buffers = 32MB
recovery_target_timeline = latest
include_if_exists = 'autopilot.conf'
CONF
    fi
fi

if [ -n "$L" ] && [ "$L" != "$ME" ]; then
    if [ ! -e "$DATA/standby.signal" ]; then
        log "was a primary; rewinding onto $L"
        # A just-promoted primary records its new timeline in its control
        # file only at a checkpoint; before it, pg_rewind sees one timeline
        # and wrongly reports that no rewind is needed.
        qr "$L" "checkpoint" >/dev/null
        if ! as_pg pg_rewind -D "$DATA" --source-server="host=${L%:*} port=${L##*:} user=postgres dbname=postgres" >&2; then
            clone "$L"
        fi
        as_pg touch "$DATA/standby.signal"
    fi
    conninfo "$L"
fi

set -- postgres -D "$DATA" -p "$PORT" -c unix_socket_directories="$SOCK" -c listen_addresses="${PG_BIND:-*}"
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
fi
exec "$@"
