# Shared by the scripts: settings, running as the postgres user, and SQL.
PORT=${PG_PORT:-5432}
DATA=${PGDATA:-/var/lib/postgresql/autopilot}
RUN=${PG_RUN:-/tmp}
# The node's private run directory (0700): the server's socket and the
# client password file. Never inside PGDATA: pg_rewind and pg_basebackup
# would meet the socket and its lock file there (and pg_rewind fails).
PRIV="$RUN/autopilot-pg-$PORT"
SOCK="$PRIV"
ME="${CONTAINERPILOT_POSTGRES_IP:-127.0.0.1}:$PORT"
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
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
# conninfo HOST:PORT: where this standby streams from (reloadable; see start.sh).
conninfo() {
    printf "primary_conninfo = 'host=%s port=%s user=postgres application_name=%s'\n" \
        "${1%:*}" "${1##*:}" "$(echo "$ME" | tr ':.' '__')" > "$DATA/autopilot.conf.tmp"
    mv "$DATA/autopilot.conf.tmp" "$DATA/autopilot.conf"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA/autopilot.conf"
    return 0
}
