#!/bin/sh
# Starts redis-server: as a replica of the current master if the election has
# one, else as a master. Runs as the redis job, so it execs the server with a
# generated config (0600: it holds the password, which never goes on argv).
set -u
. ./lib.sh
DATA=${REDIS_DATA:-/data}
private_dir || exit 1
mkdir -p "$DATA"
# The password file: required, and private (requirepass and masterauth).
if [ ! -f "$PWFILE" ] || [ ! -r "$PWFILE" ]; then
    log "no readable password file $PWFILE (set REDIS_PASSWORD_FILE): not starting"
    exit 1
fi
case $(stat -L -c %a "$PWFILE") in
    *00) ;;
    *) log "password file $PWFILE is readable by group or others (mode $(stat -L -c %a "$PWFILE"); chmod 600 it): not starting"
       exit 1 ;;
esac
if [ -z "$PW" ]; then
    log "password file $PWFILE is empty: not starting"
    exit 1
fi
# leader: sets L to the master's HOST:PORT, empty when nobody leads (exit 1).
# An unreachable catalog (exit 3) is not "no master": starting as a master
# then could make two. Retry for a while, then fail (the job restarts).
leader() {
    t=0
    while :; do
        out=$(autopilot leader redis --timeout 2s 2>/dev/null); rc=$?
        case $rc in
            0) L=$(echo "$out" | awk '{print $2}'); return 0 ;;
            1) L=; return 0 ;;
        esac
        t=$((t + 1))
        if [ $t -ge "${LEADER_RETRIES:-30}" ]; then
            log "cannot read the election (autopilot leader: exit $rc): not starting"
            exit 1
        fi
        sleep 1
    done
}
leader
# A seat still held by this node's previous life (killed before it could
# resign): wait for it to expire rather than start as a master on old data.
n=0
while [ "$L" = "$ME" ] && [ $n -lt 150 ]; do
    sleep 0.1; n=$((n + 1)); leader
done
# Listen on the configured interface's address and on loopback (the hooks).
BIND=${REDIS_BIND:-${CONTAINERPILOT_REDIS_IP:-127.0.0.1}}
[ "$BIND" = 127.0.0.1 ] || BIND="$BIND 127.0.0.1"
CONF="${AUTOPILOT_JOB_STATE_DIR:-$DATA}/redis.conf"
# Config file strings are double-quoted: escape backslashes and quotes.
Q=$(printf '%s' "$PW" | sed 's/[\\"]/\\&/g')
umask 077
{
    echo "port $PORT"
    echo "bind $BIND"
    echo "protected-mode yes"
    echo "dir \"$DATA\""
    echo "requirepass \"$Q\""
    echo "masterauth \"$Q\""
    # Durability: every write is in the AOF within a second; the AOF starts
    # with an RDB preamble, so rewrites and restores stay compact.
    echo "appendonly yes"
    echo "appendfsync everysec"
    echo "aof-use-rdb-preamble yes"
    echo "save \"\""
    echo "replica-read-only yes"
    echo "repl-diskless-sync-delay 0"
    if [ -n "$L" ] && [ "$L" != "$ME" ]; then
        echo "replicaof ${L%:*} ${L##*:}"
    fi
} > "$CONF.tmp" || { log "cannot write $CONF.tmp"; exit 1; }
mv "$CONF.tmp" "$CONF" || { log "cannot write $CONF"; exit 1; }
unset PW Q
if [ -n "$L" ] && [ "$L" != "$ME" ]; then
    log "starting as a replica of $L"
else
    log "no master elected: starting as a master"
fi
exec redis-server "$CONF"
