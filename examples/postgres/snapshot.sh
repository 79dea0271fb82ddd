#!/bin/sh
# The leader's base backup, into the pgBackRest archive (full, checksummed,
# with the WAL it needs archived); the snapshot itself only names it. Old
# backups expire beyond PG_ARCHIVE_RETAIN full ones (3).
set -eu
. ./lib.sh
# Taken on the leader: the first one right after the election, while
# promote.sh may still be promoting this node; a backup needs the primary.
n=0
until [ "$(q 'select pg_is_in_recovery()')" = f ]; do
    n=$((n + 1))
    if [ $n -ge 600 ]; then
        log "not a primary after 60 s: no base backup"
        exit 1
    fi
    sleep 0.1
done
# Idempotent; fails on an archive of another database system.
pgbr stanza-create >&2
pgbr backup --type=full >&2
label=$(pgbr info | awk '$2 == "backup:" { l = $3 } END { print l }')
[ -n "$label" ]
printf 'pgbackrest stanza=%s backup=%s\n' "$STANZA" "$label" > "$AUTOPILOT_SNAPSHOT_FILE"
log "base backup $label taken"
