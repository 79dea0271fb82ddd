#!/bin/sh
# A self-contained base backup of this (primary) node, as one tar with its WAL.
set -eu
. ./lib.sh
as_pg pg_basebackup -h "$SOCK" -p "$PORT" -U postgres -D - -Ft -X fetch --checkpoint=fast > "$AUTOPILOT_SNAPSHOT_FILE"
