#!/bin/sh
# Healthy: the server accepts queries (a primary, or a hot standby), and this
# node has not just refused to promote (promote.sh: not a synchronous
# standby); failing health then hands the seat to another node.
set -u
. ./lib.sh
if [ -e "$PRIV/ineligible" ]; then
    age=$(($(date +%s) - $(stat -c %Y "$PRIV/ineligible" 2>/dev/null || echo 0)))
    if [ "$age" -lt 30 ]; then
        echo "not eligible to lead (not a synchronous standby)" >&2
        exit 1
    fi
    rm -f "$PRIV/ineligible"
fi
[ "$(q 'select 1')" = 1 ]
