#!/bin/sh
# Unpacks a verified base backup into the empty data dir, as a standby.
set -eu
. ./lib.sh
tar -xf "$AUTOPILOT_SNAPSHOT_FILE" -C "$AUTOPILOT_DATA_DIR"
touch "$AUTOPILOT_DATA_DIR/standby.signal"
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$AUTOPILOT_DATA_DIR"; fi
chmod 700 "$AUTOPILOT_DATA_DIR"
