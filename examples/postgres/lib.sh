# Shared by the scripts: settings, running as the postgres user, and SQL.
PORT=${PG_PORT:-5432}
DATA=${PGDATA:-/var/lib/postgresql/autopilot}
# Root's default is /run (only root can create there); others get /tmp,
# where the private dir's owner, mode and type are checked (private_dir).
if [ "$(id -u)" = 0 ]; then RUN=${PG_RUN:-/run}; else RUN=${PG_RUN:-/tmp}; fi
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
# private_dir: creates $PRIV (mkdir -m 0700: fails if anything is there
# already) or accepts an existing one only if it is a real directory (not a
# symlink), mode 0700, owned by the server's user (postgres when root runs
# the scripts, else us). Anything else is refused: in a shared directory
# such as /tmp another user could have made it, or a link to elsewhere.
private_dir() {
    if [ "$(id -u)" = 0 ]; then want=$(id -u postgres) || return 1; else want=$(id -u); fi
    if [ ! -e "$PRIV" ] && [ ! -L "$PRIV" ] && mkdir -m 0700 "$PRIV" 2>/dev/null; then
        # Ours (just made), so chown -h cannot be sent elsewhere.
        if [ "$(id -u)" = 0 ]; then chown -h postgres:postgres "$PRIV" || return 1; fi
    fi
    if [ -L "$PRIV" ] || [ ! -d "$PRIV" ]; then
        log "the private run directory $PRIV is not a directory (or is a symlink): refused (remove it, or set PG_RUN)"
        return 1
    fi
    got=$(stat -c '%u %a' "$PRIV") || return 1
    if [ "$got" != "$want 700" ]; then
        log "the private run directory $PRIV has owner uid and mode $got, not $want 700: refused (remove it, or set PG_RUN)"
        return 1
    fi
}
# put NAME: stdin into $PRIV/NAME (0600) atomically: a mktemp file (never a
# predictable name) renamed over it, written as the directory's owner, so
# root never writes through a link in a directory another user owns.
put() {
    private_dir || return 1
    # shellcheck disable=SC2016 # expanded by the inner shell
    as_pg sh -c 'umask 077 && t=$(mktemp "$1/.$2.XXXXXX") && { cat > "$t" && mv -f "$t" "$1/$2" || { rm -f "$t"; exit 1; }; }' put "$PRIV" "$1"
}
# as_pg CMD...: PostgreSQL refuses to run as root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}
# q SQL: one value from the local server.
# Bounded (Q_TIMEOUT s, 10): a hung server is an answer too ("cannot tell").
q() { as_pg timeout "${Q_TIMEOUT:-10}" psql -h "$SOCK" -p "$PORT" -U postgres -d postgres -w -Atqc "$1" 2>/dev/null; }
# qr HOST:PORT SQL: one value from another node.
qr() {
    PGCONNECT_TIMEOUT=1 timeout "${Q_TIMEOUT:-10}" psql -h "${1%:*}" -p "${1##*:}" -U postgres -d postgres -w -Atqc "$2" 2>/dev/null
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
# Continuous archiving with pgBackRest: the repository (a directory every
# node reaches: a shared mount; or pgBackRest's own S3 settings through
# PGBACKREST_* variables) holds base backups and every archived WAL segment.
STANZA=${PG_STANZA:-postgres}
REPO=${PG_ARCHIVE_REPO:-/var/backups/postgres-archive}
# Every pgBackRest call on this node (archive_command and restore_command
# too) reads this node's settings from one file (write_pgbr_conf).
PGBR_CONF="$PRIV/pgbackrest.conf"
PGBR="pgbackrest --config=$PGBR_CONF --stanza=$STANZA"
write_pgbr_conf() {
    put pgbackrest.conf <<CONF
[global]
repo1-path=$REPO
lock-path=$PRIV/pgbackrest
log-path=$PRIV
log-level-file=off
log-level-console=off
log-level-stderr=warn
start-fast=y
repo1-retention-full=${PG_ARCHIVE_RETAIN:-3}

[$STANZA]
pg1-path=$DATA
pg1-port=$PORT
pg1-socket-path=$SOCK
pg1-user=postgres
CONF
}
# pgbr ARGS...: pgBackRest as the postgres user on this node.
# shellcheck disable=SC2086
pgbr() { as_pg $PGBR "$@"; }
# backups: "yes" when the archive holds a base backup, "no" when it holds
# none; fails when the archive cannot be read (never taken for "no").
backups() {
    out=$(pgbr info 2>&1) || {
        log "cannot read the archive at $REPO: $out"
        return 1
    }
    case $out in
        *"backup: "*) echo yes ;;
        *"missing stanza path"* | *"no valid backups"*) echo no ;;
        *)
            log "cannot read the archive at $REPO: $out"
            return 1
            ;;
    esac
}
# archive_restore: the newest base backup from the archive into the empty
# data dir, as a standby that replays the archived WAL (restore_command).
archive_restore() {
    pgbr restore --type=standby >&2 || return 1
    # restore_command comes from autopilot-archive.conf (start.sh), the same
    # on every node; pgBackRest's own copy would override it.
    sed -i '/^restore_command/d; /Recovery settings generated by pgBackRest/d' "$DATA/postgresql.auto.conf"
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
    # The passfile's own escapes: backslash and colon.
    printf '*:*:*:postgres:%s\n' "$(printf %s "$pw" | sed 's/[\\:]/\\&/g')" | put pgpass
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
