#!/bin/sh
# Elected. A standby first catches up from the most advanced reachable
# standby (cascading replication), so the promoted node has every WAL record
# any survivor received; then it promotes. Every step here is on the
# failover's critical path, so queries are few and combined. Exits non-zero
# when it did not promote (the agent retries it while this node leads).
set -u
. ./lib.sh
# "true|16/B374D848|streaming": in recovery, receive (or replay) LSN, receiver status.
state() {
    q "select pg_is_in_recovery() || '|' || coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), '0/0') || '|' || coalesce((select status from pg_stat_wal_receiver), '')"
}
# An LSN ("16/B374D848") as a number, for comparisons in the shell.
lsn() { hi=${1%/*}; lo=${1#*/}; echo $(((0x$hi << 32) + 0x$lo)); }
s=$(state)
case "${s%%|*}" in
    true) ;;
    false) exit 0 ;; # already a primary
    *)
        log "cannot tell this node's role: the server does not answer"
        exit 1
        ;;
esac
# In a graceful handover the old primary is still shutting down (fence.sh):
# a fast shutdown sends its last WAL to the standbys and then ends the
# stream, so wait (1 s at most: a frozen or lost primary never ends it) for
# the stream to end before comparing.
n=0
while [ $n -lt 20 ] && [ "${s##*|}" = streaming ]; do
    sleep 0.05; n=$((n + 1)); s=$(state)
done
# A standby that has not streamed since it started (restored from the
# archive with no primary alive) first replays the whole archive: its newest
# segment is the last word on what was committed. Done once replay has
# entered that segment and stopped moving; never promoted short of it.
if [ -z "$(q 'select pg_last_wal_receive_lsn()')" ]; then
    info=$(pgbr info) || {
        log "cannot read the archive: not promoting"
        exit 1
    }
    newest=$(echo "$info" | awk '/wal archive min\/max/ { n = $NF } END { sub(/.*\//, "", n); print n }')
    if [ -n "$newest" ]; then
        # 16 MiB segments: TTTTTTTT LLLLLLLL 000000SS.
        first=$(((0x$(echo "$newest" | cut -c9-16) << 32) + (0x$(echo "$newest" | cut -c17-24) << 24)))
        log "replaying the archive up to its newest segment $newest before promotion"
        n=0
        prev=
        same=0
        while [ $same -lt 5 ]; do
            cur=$(lsn "$(q 'select pg_last_wal_replay_lsn()')")
            if [ "$cur" -ge "$first" ] && [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
            prev=$cur
            n=$((n + 1))
            if [ $n -ge "${PG_ARCHIVE_REPLAY_WAIT:-3000}" ]; then
                log "the archive's newest segment $newest was not replayed in time: not promoting"
                exit 1
            fi
            sleep 0.2
        done
    fi
    s=$(state)
fi
mine=$(echo "$s" | cut -d'|' -f2)
best=$(lsn "$mine")
best_lsn=$mine
best_peer=
reached=
peers=$(autopilot template render peers.tmpl --once --timeout 2s) || {
    log "cannot read the standbys from the catalog: not promoting"
    exit 1
}
for peer in $peers; do
    [ "$peer" = "$ME" ] && continue
    # A live peer answers in milliseconds; a frozen one (machine loss) must
    # not hold the promotion for the default query bound.
    l=$(Q_TIMEOUT=1 qr "$peer" "select coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())")
    [ -n "$l" ] || continue
    reached="$reached $(name_of "$peer")"
    if [ "$(lsn "$l")" -gt "$best" ]; then
        best=$(lsn "$l"); best_lsn=$l; best_peer=$peer
    fi
done
if sync_mode; then
    # Synchronous mode: only a listed synchronous standby promotes, and only
    # once it has reached every other listed one (ANY 1: any of them may
    # hold the last acknowledged commits; catching up from the most advanced
    # gets them all).
    key=$(autopilot kv get "$SYNC_KEY" --timeout 2s 2>/dev/null)
    case $? in
        0) ;;
        1) key= ;; # never ran in synchronous mode: nothing was promised
        *)
            log "cannot read $SYNC_KEY: not promoting"
            exit 1
            ;;
    esac
    old=${key%% *}
    list=
    case $key in *" "*) list=${key#* } ;; esac
    if [ -n "$key" ] && [ "$old" != "$APP" ]; then
        case " $list " in
            *" $APP "*) ;;
            *)
                log "not a synchronous standby of $old (those: ${list:-none}): not promoting; handing the seat on"
                : | put ineligible
                exit 1
                ;;
        esac
        for n in $list; do
            [ "$n" = "$APP" ] && continue
            case " $reached " in
                *" $n "*) ;;
                *)
                    log "synchronous standby $n is unreachable and may hold commits this node lacks: not promoting"
                    exit 1
                    ;;
            esac
        done
    fi
    others=$(for n in $list; do [ "$n" = "$APP" ] || echo "$n"; done | tr '\n' ' ')
fi
if [ -n "$best_peer" ]; then
    log "catching up from $best_peer (to $best_lsn) before promotion"
    conninfo "$best_peer" noslot
    q "select pg_reload_conf()" >/dev/null
    n=0
    while [ "$(q "select pg_last_wal_replay_lsn() >= '$best_lsn'::pg_lsn")" != t ]; do
        n=$((n + 1))
        if [ $n -ge 100 ]; then
            # Promoting now would drop what $best_peer has: retried instead.
            log "could not catch up from $best_peer to $best_lsn: not promoting"
            exit 1
        fi
        sleep 0.05
    done
fi
rm -f "$DATA/autopilot.conf"
if sync_mode; then
    # In force from the first write: the key names this node first, then the
    # setting requires one of the listed standbys for every commit.
    # shellcheck disable=SC2086
    autopilot kv put "$SYNC_KEY" "$APP $others" --timeout 2s >/dev/null && set_sync $others || {
        log "cannot record the synchronous standbys: not promoting"
        exit 1
    }
fi
# Not waiting inside pg_promote (it polls every 100 ms): clients retry anyway.
q "select pg_promote(false)" >/dev/null
n=0
while [ "$(q 'select pg_is_in_recovery()')" != f ]; do
    n=$((n + 1))
    if [ $n -ge 600 ]; then
        log "still in recovery 12 s after pg_promote: not promoted"
        exit 1
    fi
    sleep 0.02
done
# Records the new timeline in the control file, so a returning old primary's
# pg_rewind sees the fork.
Q_TIMEOUT=300 q "checkpoint" >/dev/null
log "promoted"
# Slots for the standbys before they re-point (members.sh keeps them after).
for peer in $peers; do
    [ "$peer" = "$ME" ] && continue
    s=$(name_of "$peer")
    q "select count(pg_create_physical_replication_slot('$s', true)) where not exists (select from pg_replication_slots where slot_name = '$s')" >/dev/null
done
exit 0
