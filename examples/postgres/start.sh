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
private_dir || exit 1
mkdir -p "$DATA"
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA"; fi
chmod 700 "$DATA"
passfile || exit 1
# A pinned major version: a server or a data directory of another one is
# refused (a major upgrade is a deliberate pg_upgrade, never a side effect).
v=$("$BIN/postgres" --version 2>/dev/null | sed -n 's/.* \([0-9][0-9]*\)\.[0-9].*/\1/p')
if [ "$v" != "$MAJOR" ]; then
    log "the server at $BIN/postgres is PostgreSQL ${v:-(none)}, not the pinned $MAJOR (PG_MAJOR): not starting"
    exit 1
fi
if [ -e "$DATA/PG_VERSION" ] && [ "$(cat "$DATA/PG_VERSION")" != "$MAJOR" ]; then
    log "the data directory $DATA is PostgreSQL $(cat "$DATA/PG_VERSION"), not the pinned $MAJOR (PG_MAJOR): not starting"
    exit 1
fi

leader
# A seat still held by this node's previous life: wait for it to expire
# rather than start as a primary beside the one about to be elected.
n=0
while [ "$L" = "$ME" ] && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); leader; done

# set_aside WHY: never delete the only copy of a node's data. The old data
# directory is renamed (kept until a person removes it) and an empty one
# takes its place; if it cannot be renamed, nothing is touched and the job
# fails (it is retried with back-off).
set_aside() {
    kept="$DATA.failed-$(date -u +%Y%m%dT%H%M%SZ)"
    if ! mv "$DATA" "$kept"; then
        log "!!! $1, and the data directory $DATA cannot be moved aside to $kept: not starting (nothing deleted)"
        exit 1
    fi
    log "!!! $1: the old data directory is KEPT at $kept (remove it once it is no longer needed)"
    mkdir -p "$DATA"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA"; fi
    chmod 700 "$DATA"
}

# clone HOST:PORT: a fresh standby copy of the primary (into the empty $DATA).
clone() {
    # Leftovers without PG_VERSION (an interrupted copy) are kept too.
    [ -z "$(ls -A "$DATA")" ] || set_aside "the data directory $DATA is not empty before a clone"
    log "cloning $1 with pg_basebackup"
    as_pg pg_basebackup -h "${1%:*}" -p "${1##*:}" -U postgres -D "$DATA" -X stream --checkpoint=fast || exit 1
    as_pg touch "$DATA/standby.signal"
}

# The archive's repository: every node writes to it (as postgres). It must
# exist already: never created here, since a shared mount that is missing
# (not mounted) would become an empty local directory, read as "no backups",
# and a node with no data and no primary would then initdb over the lost
# cluster. (With pgBackRest's S3 settings there is no local directory.)
write_pgbr_conf || exit 1
case ${PGBACKREST_REPO1_TYPE:-posix} in
    posix | cifs)
        if [ ! -d "$REPO" ]; then
            log "the archive repository $REPO does not exist (not mounted?): not starting (create it once, on the shared mount, when bootstrapping)"
            exit 1
        fi
        if [ "$(id -u)" = 0 ] && [ "$(stat -c %U "$REPO")" != postgres ]; then chown postgres:postgres "$REPO"; fi
        ;;
esac

if [ ! -e "$DATA/PG_VERSION" ]; then
    if [ -n "$L" ] && [ "$L" != "$ME" ]; then
        clone "$L"
    elif ! has=$(backups); then
        # Never "start empty" on an archive that cannot be read.
        exit 1
    elif [ "$has" = yes ]; then
        # The archive is the truth: a node with no data and no primary
        # restores the newest base backup and replays the archived WAL
        # (promote.sh waits for the end of the archive); never initdb.
        [ -z "$(ls -A "$DATA")" ] || set_aside "the data directory $DATA is not empty before a restore"
        log "no primary and no data: restoring the newest base backup from the archive $REPO"
        archive_restore || exit 1
    else
        log "bootstrap: initdb"
        # Password authentication (scram-sha-256) on every connection,
        # local socket, TCP and replication alike.
        head -n 1 "$PWFILE" | put initdb-pw || exit 1
        as_pg initdb -D "$DATA" -U postgres --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
            --pwfile="$PRIV/initdb-pw" >/dev/null
        rc=$?
        rm -f "$PRIV/initdb-pw"
        [ $rc = 0 ] || exit 1
        cat >> "$DATA/pg_hba.conf" <<HBA
host all all all scram-sha-256
host replication all all scram-sha-256
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
# Slots keep WAL for absent standbys, up to this much (then the archive).
max_slot_wal_keep_size = ${PG_MAX_SLOT_WAL_KEEP_SIZE:-4GB}
include_if_exists = 'autopilot.conf'
include_if_exists = 'autopilot-sync.conf'
include_if_exists = 'autopilot-archive.conf'
CONF
    fi
fi

# This node's archiving settings (its own paths; a copy from another node,
# in a clone or a restored backup, is replaced). pgBackRest checksums every
# segment it pushes and verifies it on archive-get.
cat > "$DATA/autopilot-archive.conf" <<CONF
archive_mode = on
archive_command = '$PGBR archive-push %p'
restore_command = '$PGBR archive-get %f "%p"'
archive_timeout = ${PG_ARCHIVE_TIMEOUT:-60}
CONF
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA/autopilot-archive.conf"; fi

if [ -n "$L" ] && [ "$L" != "$ME" ]; then
    if [ ! -e "$DATA/standby.signal" ]; then
        log "was a primary; rewinding onto $L"
        # A just-promoted primary records its new timeline in its control
        # file only at a checkpoint; before it, pg_rewind sees one timeline
        # and wrongly reports that no rewind is needed.
        Q_TIMEOUT=300 qr "$L" "checkpoint" >/dev/null
        if ! as_pg pg_rewind -D "$DATA" --source-server="host=${L%:*} port=${L##*:} user=postgres dbname=postgres" >&2; then
            set_aside "pg_rewind onto $L failed"
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
