#!/bin/sh
# Restores a snapshot (an RDB) into an empty data dir. With AOF on, redis loads
# only the AOF and ignores dump.rdb, so the snapshot becomes the AOF's base
# file, with a manifest naming it.
set -eu
d="$AUTOPILOT_DATA_DIR/appendonlydir"
mkdir -p "$d"
cp "$AUTOPILOT_SNAPSHOT_FILE" "$d/appendonly.aof.1.base.rdb"
printf 'file appendonly.aof.1.base.rdb seq 1 type b\n' > "$d/appendonly.aof.manifest.tmp"
mv "$d/appendonly.aof.manifest.tmp" "$d/appendonly.aof.manifest"
