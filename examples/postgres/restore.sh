#!/bin/sh
# Restores before the first start (the data dir is empty): the newest base
# backup in the pgBackRest archive (at least as new as the snapshot, which
# only names one), as a standby that replays the archived WAL and then
# streams from the primary.
set -eu
. ./lib.sh
[ "$AUTOPILOT_DATA_DIR" = "$DATA" ] || {
    log "the snapshot's dataDir $AUTOPILOT_DATA_DIR is not PGDATA $DATA"
    exit 1
}
private_dir
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA"; fi
chmod 700 "$DATA"
write_pgbr_conf
archive_restore
log "restored $(cat "$AUTOPILOT_SNAPSHOT_FILE")"
