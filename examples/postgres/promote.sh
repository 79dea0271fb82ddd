#!/bin/sh
# Elected. A standby first catches up from the most advanced reachable
# standby (cascading replication), so the promoted node has every WAL record
# any survivor received; then it promotes.
set -u
. ./lib.sh
[ "$(q 'select pg_is_in_recovery()')" = t ] || exit 0
lsn_of() { echo "coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"; }
best=$(q "select $(lsn_of)")
best_peer=
# In a graceful handover the old primary is still shutting down (fence.sh):
# a fast shutdown sends its last WAL to the standbys and then ends the
# stream, so wait (3 s at most) for the stream to end before comparing.
n=0
while [ $n -lt 60 ] && [ "$(q "select status from pg_stat_wal_receiver")" = streaming ]; do
    sleep 0.05; n=$((n + 1))
done
best=$(q "select $(lsn_of)")
for peer in $(autopilot template render peers.tmpl --once --timeout 2s); do
    [ "$peer" = "$ME" ] && continue
    lsn=$(qr "$peer" "select $(lsn_of)")
    [ -n "$lsn" ] || continue
    if [ "$(q "select '$lsn'::pg_lsn > '${best:-0/0}'::pg_lsn")" = t ]; then
        best=$lsn; best_peer=$peer
    fi
done
if [ -n "$best_peer" ]; then
    log "catching up from $best_peer (to $best) before promotion"
    conninfo "$best_peer"
    q "select pg_reload_conf()" >/dev/null
    n=0
    while [ $n -lt 100 ] && [ "$(q "select pg_last_wal_replay_lsn() >= '$best'::pg_lsn")" != t ]; do
        sleep 0.05; n=$((n + 1))
    done
fi
rm -f "$DATA/autopilot.conf"
q "select pg_promote(true, 30)" >/dev/null
# Records the new timeline in the control file, so a returning old primary's
# pg_rewind sees the fork.
q "checkpoint" >/dev/null
log "promoted: $(q 'select not pg_is_in_recovery()')"
