#!/bin/sh
# Lost the seat while possibly still a master: hold every write until this
# node follows the new master (follow.sh unpauses), so a deposed master never
# acknowledges a write the new one will not have.
set -u
. ./lib.sh
if [ "$(info 127.0.0.1 "$PORT" role)" = master ]; then
    cli CLIENT PAUSE 600000 WRITE >/dev/null
    log "demoted: writes paused until following the new master"
fi
