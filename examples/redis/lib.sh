# Shared by the hooks: this node's identity, redis-cli with the password, the
# seat check, reading INFO fields, and the write pause.
PORT=${REDIS_PORT:-6379}
ME="${CONTAINERPILOT_REDIS_IP:-127.0.0.1}:$PORT"
# This node's candidate ID in election "redis" (<job>-<hostname>, as the agent names it).
MYID="redis-${AUTOPILOT_HOSTNAME:-$(uname -n)}"
PWFILE=${REDIS_PASSWORD_FILE:-/etc/autopilot/redis.password}
# A deposed master's write pause (ms). health.sh renews it every check, so it
# only lapses if the agent stopped checking.
PAUSE_MS=${REDIS_PAUSE_MS:-600000}
# The node's private run directory (0700, ours): the fence lock. Root's
# default parent is /run (only root can create there); others get /tmp, where
# private_dir checks what it finds.
if [ "$(id -u)" = 0 ]; then RUN=${REDIS_RUN:-/run}; else RUN=${REDIS_RUN:-/tmp}; fi
PRIV="$RUN/autopilot-redis-$PORT"
LOCK="$PRIV/fence.lock"
log() { echo "$*" >&2; }
# private_dir: creates $PRIV (mkdir -m 0700: fails if anything is there
# already) or accepts an existing one only if it is a real directory (not a
# symlink), mode 0700 and ours. Anything else is refused: in a shared
# directory such as /tmp another user could have made it (and hold the lock
# in it, so fence.sh could never pause a deposed master), or a link.
private_dir() {
    [ -e "$PRIV" ] || [ -L "$PRIV" ] || mkdir -m 0700 "$PRIV" 2>/dev/null
    if [ -L "$PRIV" ] || [ ! -d "$PRIV" ]; then
        log "the private run directory $PRIV is not a directory (or is a symlink): refused (remove it, or set REDIS_RUN)"
        return 1
    fi
    got=$(stat -c '%u %a' "$PRIV") || return 1
    if [ "$got" != "$(id -u) 700" ]; then
        log "the private run directory $PRIV has owner uid and mode $got, not $(id -u) 700: refused (remove it, or set REDIS_RUN)"
        return 1
    fi
}
# The password, in a shell variable that is never exported: it reaches
# redis-cli through REDISCLI_AUTH for one command at a time (never argv,
# never the agent's environment).
PW=$(sed -n 1p "$PWFILE" 2>/dev/null)
# rcli HOST PORT ARGS...: redis-cli on any node.
rcli() {
    h=$1 p=$2; shift 2
    REDISCLI_AUTH=$PW redis-cli -h "$h" -p "$p" "$@"
}
# cli ARGS...: this node, bounded to 2 s (a stopped server must not hang a hook).
cli() { REDISCLI_AUTH=$PW timeout 2 redis-cli -p "$PORT" "$@"; }
# repl HOST PORT: INFO replication (empty if unreachable), for field.
repl() { REDISCLI_AUTH=$PW timeout 1 redis-cli -h "$1" -p "$2" INFO replication 2>/dev/null | tr -d '\r'; }
# field TEXT NAME: one field of INFO output.
field() { echo "$1" | sed -n "s/^$2://p"; }
# info HOST PORT FIELD: one field of INFO replication (empty if unreachable).
info() { field "$(repl "$1" "$2")" "$3"; }
# leader_id: the seat holder as this agent knows it now (the leader file is
# rewritten before each leaderChanged/elected, and emptied on demotion; the
# environment is only as fresh as this process).
leader_id() {
    f=${AUTOPILOT_LEADER_REDIS_FILE:-}
    if [ -n "$f" ] && [ -r "$f" ]; then
        sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' "$f"
    else
        echo "${AUTOPILOT_LEADER_REDIS_ID:-}"
    fi
}
is_leader() { [ "$(leader_id)" = "$MYID" ]; }
# pause: hold every write on this node; fails unless redis answered OK.
pause() { [ "$(cli CLIENT PAUSE "$PAUSE_MS" WRITE 2>/dev/null | tr -d '\r')" = OK ]; }
unpause() { [ "$(cli CLIENT UNPAUSE 2>/dev/null | tr -d '\r')" = OK ]; }
# locked CMD...: runs CMD under the node's fence lock, so a pause decided on a
# stale view of the seat can never land after promote.sh's unpause.
# (Not a subshell: CMD may set variables. The lock goes with fd 9.)
locked() {
    private_dir || return 1
    {
        flock -w 5 9 || { log "cannot take the fence lock $LOCK"; return 1; }
        "$@"
    } 9>>"$LOCK"
}
