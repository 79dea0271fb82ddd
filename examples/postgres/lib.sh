# Shared by the scripts: settings, running as the postgres user, and SQL.
PORT=${PG_PORT:-5432}
DATA=${PGDATA:-/var/lib/postgresql/autopilot}
RUN=${PG_RUN:-/tmp}
# The node's private run directory (0700): the server's socket and the
# client password file. Never inside PGDATA: pg_rewind and pg_basebackup
# would meet the socket and its lock file there (and pg_rewind fails).
PRIV="$RUN/autopilot-pg-$PORT"
SOCK="$PRIV"
# The superuser's password (also used for replication): first line of a
# file readable by its owner only. Clients read it from a 0600 passfile in
# the private run dir (written by start.sh), never from argv or the
# environment.
PWFILE=${PG_PASSWORD_FILE:-/etc/autopilot/postgres-password}
PGPASSFILE="$PRIV/pgpass"
export PGPASSFILE
ME="${CONTAINERPILOT_POSTGRES_IP:-127.0.0.1}:$PORT"
# The pinned major version: start.sh refuses any other server or data dir.
MAJOR=${PG_MAJOR:-15}
BIN=${PG_BIN:-/usr/lib/postgresql/$MAJOR/bin}
PATH="$BIN:$PATH"
export PATH
log() { echo "$*" >&2; }
# as_pg CMD...: PostgreSQL refuses to run as root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}
# q SQL: one value from the local server.
q() { as_pg psql -h "$SOCK" -p "$PORT" -U postgres -d postgres -Atqc "$1" 2>/dev/null; }
# qr HOST:PORT SQL: one value from another node.
qr() {
    PGCONNECT_TIMEOUT=1 psql -h "${1%:*}" -p "${1##*:}" -U postgres -d postgres -Atqc "$2" 2>/dev/null
}
# leader: sets L to the primary's HOST:PORT, empty when nobody leads (exit 1).
# An unreachable catalog (exit 3) is not "no primary": retry for a while,
# then fail (the job restarts) rather than initdb or start as a primary.
leader() {
    t=0
    while :; do
        out=$(autopilot leader postgres --timeout 2s 2>/dev/null); rc=$?
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
# passfile: checks the password file (refused if group or world can read
# it) and writes the clients' passfile from it.
passfile() {
    if [ ! -f "$PWFILE" ] || [ ! -r "$PWFILE" ]; then
        log "no readable password file $PWFILE (set PG_PASSWORD_FILE): not starting"
        return 1
    fi
    if [ -n "$(find "$PWFILE" -perm /077)" ]; then
        log "the password file $PWFILE is readable by group or others (mode $(stat -c %a "$PWFILE")): refused; chmod 600 it"
        return 1
    fi
    pw=$(head -n 1 "$PWFILE")
    if [ -z "$pw" ]; then
        log "the password file $PWFILE is empty: not starting"
        return 1
    fi
    (
        umask 077
        # The passfile's own escapes: backslash and colon.
        printf '*:*:*:postgres:%s\n' "$(printf %s "$pw" | sed 's/[\\:]/\\&/g')" > "$PGPASSFILE.tmp"
    ) || return 1
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGPASSFILE.tmp"; fi
    mv "$PGPASSFILE.tmp" "$PGPASSFILE"
}
# current_leader: sets LID and LADDR (HOST:PORT) to the leader as the agent
# records it now (its leader file is rewritten on every change, while a
# hook's environment is fixed when it starts); both empty when nobody leads.
current_leader() {
    LID=${AUTOPILOT_LEADER_POSTGRES_ID:-}
    LADDR=
    [ -n "$LID" ] && LADDR="${AUTOPILOT_LEADER_POSTGRES_ADDRESS:-}:${AUTOPILOT_LEADER_POSTGRES_PORT:-}"
    f=${AUTOPILOT_LEADER_POSTGRES_FILE:-}
    [ -n "$f" ] && [ -r "$f" ] || return 0
    LID=$(sed -n 's/^ *"id": *"\([^"]*\)",*$/\1/p' "$f")
    a=$(sed -n 's/^ *"address": *"\([^"]*\)",*$/\1/p' "$f")
    p=$(sed -n 's/^ *"port": *\([0-9]*\),*$/\1/p' "$f")
    LADDR=
    [ -n "$a" ] && [ -n "$p" ] && LADDR="$a:$p"
    return 0
}
# running: whether this node's server is up (pg_ctl status exits 3 when not).
running() { as_pg pg_ctl -D "$DATA" status >/dev/null 2>&1; }
# stop_server: fast shutdown (refuses new writes at once, still sends the
# last WAL to the standbys), then immediate, then SIGKILL of the postmaster;
# fails only if the server is still running after all of them.
stop_server() {
    running || return 0
    as_pg pg_ctl -D "$DATA" stop -m fast -t 5 -w >/dev/null 2>&1 ||
        as_pg pg_ctl -D "$DATA" stop -m immediate -t 5 -w >/dev/null 2>&1
    if running; then
        pid=$(head -1 "$DATA/postmaster.pid" 2>/dev/null)
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
        sleep 0.5
    fi
    if running; then
        log "!!! cannot stop the server"
        return 1
    fi
    return 0
}
# name_of HOST:PORT: a member's name, as its application_name and as the
# name of its replication slot on the primary.
name_of() { echo "ap_$1" | tr -c 'a-zA-Z0-9\n' '_' | tr 'A-Z' 'a-z'; }
APP=$(name_of "$ME")
# ensure_slot HOST:PORT: this standby's slot on that primary (created if missing).
ensure_slot() {
    qr "$1" "select count(pg_create_physical_replication_slot('$APP', true)) where not exists (select from pg_replication_slots where slot_name = '$APP')" >/dev/null
}
# conninfo HOST:PORT [noslot]: where this standby streams from (reloadable;
# see start.sh), through its own replication slot unless "noslot".
conninfo() {
    {
        printf "primary_conninfo = 'host=%s port=%s user=postgres application_name=%s passfile=%s'\n" \
            "${1%:*}" "${1##*:}" "$APP" "$PGPASSFILE"
        if [ "${2:-}" != noslot ]; then
            ensure_slot "$1"
            printf "primary_slot_name = '%s'\n" "$APP"
        fi
    } > "$DATA/autopilot.conf.tmp"
    mv "$DATA/autopilot.conf.tmp" "$DATA/autopilot.conf"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/autopilot.conf"
    return 0
}
# SYNC_KEY holds, in synchronous mode, "LEADER [STANDBY...]": the primary's
# name and the standbys that may hold its last acknowledged commits (any
# one of them does). A standby not listed never promotes.
SYNC_KEY=postgres/sync
sync_mode() { [ "${PG_SYNCHRONOUS:-off}" = on ]; }
# set_sync NAMES...: this primary's synchronous_standby_names (ANY 1 of NAMES,
# empty: none), in an included file, reloaded.
set_sync() {
    if [ $# -eq 0 ]; then
        v=
    else
        v="ANY 1 ($(printf '"%s",' "$@" | sed 's/,$//'))"
    fi
    printf "synchronous_standby_names = '%s'\n" "$v" > "$DATA/autopilot-sync.conf.tmp"
    mv "$DATA/autopilot-sync.conf.tmp" "$DATA/autopilot-sync.conf"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/autopilot-sync.conf"
    [ "$(q "select pg_reload_conf()")" = t ]
}
