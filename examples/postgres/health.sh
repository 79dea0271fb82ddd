#!/bin/sh
# Healthy: the server accepts queries (a primary, or a hot standby).
set -u
. ./lib.sh
[ "$(q 'select 1')" = 1 ]
