#!/bin/sh
# Takes a snapshot: an RDB of this node's data, streamed over a replication
# connection (authenticated), into $AUTOPILOT_SNAPSHOT_FILE.
set -u
. ./lib.sh
rcli 127.0.0.1 "$PORT" --rdb "$AUTOPILOT_SNAPSHOT_FILE" >/dev/null
