#!/bin/sh
# On the primary, every second: a replication slot per standby in the
# catalog (slots of members gone are dropped once inactive) and, with
# PG_SYNCHRONOUS=on, synchronous_standby_names = ANY 1 (the streaming
# standbys), as Patroni's synchronous_mode. The catalog key $SYNC_KEY is
# widened before the setting and narrowed after it, so it always names every
# standby that may hold an acknowledged commit.
set -u
. ./lib.sh
[ "$(q 'select pg_is_in_recovery()')" = f ] || exit 0
current_leader
[ "$LADDR" = "$ME" ] || exit 0

peers=$(autopilot template render peers.tmpl --once --timeout 2s) || exit 1
want=
for p in $peers; do
    [ "$p" = "$ME" ] || want="$want $(name_of "$p")"
done
have=$(q "select string_agg(slot_name, ' ') from pg_replication_slots where slot_name like 'ap\_%'")
for s in $want; do
    case " $have " in *" $s "*) continue ;; esac
    q "select count(pg_create_physical_replication_slot('$s', true))" >/dev/null && log "replication slot $s created"
done
# A member missing from the catalog (restarting, unhealthy) keeps its slot
# for PG_SLOT_GRACE seconds (60) before it counts as gone.
now=$(date +%s)
for s in $have; do
    case " $want " in *" $s "*)
        rm -f "$PRIV/absent-$s"
        continue
        ;;
    esac
    [ -e "$PRIV/absent-$s" ] || echo "$now" | put "absent-$s"
    [ $((now - $(cat "$PRIV/absent-$s"))) -ge "${PG_SLOT_GRACE:-60}" ] || continue
    if [ "$(q "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots where slot_name = '$s' and not active")" = 1 ]; then
        log "replication slot $s dropped: no such member for ${PG_SLOT_GRACE:-60} s"
        rm -f "$PRIV/absent-$s"
    fi
done

sync_mode || exit 0
new=$(q "select string_agg(application_name, ' ' order by application_name) from pg_stat_replication where state = 'streaming' and application_name like 'ap\_%'")
[ -e "$DATA/autopilot-sync.conf" ] && [ "$new" = "$(cat "$PRIV/sync" 2>/dev/null)" ] && exit 0
key=$(autopilot kv get "$SYNC_KEY" --timeout 2s 2>/dev/null)
case $? in 0 | 1) ;; *) exit 1 ;; esac
# The key first names the union (old and new standbys), then the new set.
union=$(for n in ${key#* } $new; do [ "$n" = "${key%% *}" ] || echo "$n"; done | sort -u | tr '\n' ' ')
[ "${key%% *}" = "$APP" ] || union=$new
autopilot kv put "$SYNC_KEY" "$APP $union" --timeout 2s >/dev/null || exit 1
# shellcheck disable=SC2086
set_sync $new || exit 1
n=0
until [ "$(q 'show synchronous_standby_names')" = "$(sed -n "s/^synchronous_standby_names = '\(.*\)'$/\1/p" "$DATA/autopilot-sync.conf")" ]; do
    n=$((n + 1))
    [ $n -lt 100 ] || exit 1
    sleep 0.01
done
autopilot kv put "$SYNC_KEY" "$APP $new" --timeout 2s >/dev/null || exit 1
echo "$new" | put sync
log "synchronous standbys: ${new:-none}"
