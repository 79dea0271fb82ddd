"""Failover against the incumbents, on one machine and one etcd (docs/benchmarks.md).

PostgreSQL: autopilot's blueprint (examples/postgres) against Patroni.
Redis: autopilot's blueprint (examples/redis) against Redis Sentinel.
Each system runs three nodes at its default settings and at equal settings (everyone's failure
detection at 5 s: autopilot's default lease TTL, Patroni ttl 5, Sentinel down-after 5000 ms),
in the same run. For each:
- crash failover: kill -9 of the primary's agent and server (process death, the machine is up)
  -> first successful write on another node;
- machine loss: SIGSTOP of the primary's whole node (agent, server and their children; for
  Sentinel the master and the sentinel beside it) -> first write on another node; then SIGCONT;
- switchover write gap: `autopilot switchover` (or maintenance on the leader if this build has
  no switchover), `patronictl switchover`, `SENTINEL FAILOVER`;
- replica bootstrap: a fourth node with an empty data dir, start -> streaming / in sync;
- RSS of one agent process.

Usage: python3 bench/failover.py AUTOPILOT_BIN [--trials N] [--only pg|redis] [--settings default|equal|both]
Run it through bench/failover.sh, which installs Patroni and Sentinel and builds autopilot.
"""
import argparse, json, os, random, select, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import free_port, start_etcd  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TTL = 5  # seconds: the lease TTL every system gets


def pg_bin():
    """The newest installed PostgreSQL's bin directory."""
    return sorted(d for d in (os.path.join("/usr/lib/postgresql", v, "bin")
                              for v in os.listdir("/usr/lib/postgresql")) if os.path.isdir(d))[-1]

PROCS = []


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(name, xs):
    if not xs:
        return f"{name}: no samples"
    return f"{name}: p50 {pct(xs, 50):.2f} s, p99 {pct(xs, 99):.2f} s, min {min(xs):.2f} s, max {max(xs):.2f} s (n={len(xs)})"


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def spawn(argv, log, cwd=None, env=None, user=None):
    if user and os.getuid() == 0:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + argv
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    PROCS.append(p)
    return p


def kill_group(p, sig=signal.SIGTERM):
    """Signals the process's group if it leads one (what `spawn` starts), else the process."""
    try:
        if os.getpgid(p.pid) == p.pid:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    except ProcessLookupError:
        pass


def wait_until(f, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if f():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


# ---- clients -----------------------------------------------------------------

def _pg_wait(conn, deadline):
    """Drives an asynchronous psycopg2 connection until it is ready, or raises at `deadline`:
    a frozen server (machine loss) must not hold the client for ever."""
    import psycopg2.extensions as ext
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("postgres did not answer in time")
        fd = conn.fileno()
        r, w = ([fd], []) if state == ext.POLL_READ else ([], [fd])
        if not any(select.select(r, w, [], left)[:2]):
            raise TimeoutError("postgres did not answer in time")


def pg(port, sql, timeout=1):
    """One statement on 127.0.0.1:port within `timeout` seconds; returns the first value, or raises."""
    import psycopg2
    deadline = time.monotonic() + timeout
    c = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         connect_timeout=max(1, int(timeout)), password="bench", async_=1)
    try:
        _pg_wait(c, deadline)
        cur = c.cursor()
        cur.execute(sql)
        _pg_wait(c, deadline)
        return cur.fetchone()[0] if cur.description else None
    finally:
        c.close()


# Redis passwords by port: a blueprint with `requirepass` gets AUTH before each command.
REDIS_AUTH = {}


def _reply(s, buf):
    """Reads one RESP reply (simple or bulk) from socket s; returns (text or None, rest of buffer)."""
    while b"\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    line, rest = buf.split(b"\r\n", 1)
    if line.startswith(b"$"):
        n = int(line[1:])
        if n < 0:
            return None, rest
        while len(rest) < n + 2:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("closed")
            rest += chunk
        return rest[:n].decode(), rest[n + 2:]
    return line.decode(), rest


def resp(port, *args, timeout=1.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        cmds = ([("AUTH", REDIS_AUTH[port])] if port in REDIS_AUTH else []) + [args]
        s.sendall("".join(f"*{len(c)}\r\n" + "".join(f"${len(str(a))}\r\n{a}\r\n" for a in c)
                          for c in cmds).encode())
        buf, out = b"", None
        for _ in cmds:
            out, buf = _reply(s, buf)
        return out
    finally:
        s.close()


def redis_info(port, field):
    text = resp(port, "INFO", "replication")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


class Writer:
    """Writes continuously to whichever node accepts, recording (time, node) of each success."""

    def __init__(self, ports, write):
        self.ports, self.write = ports, write
        self.ok = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        i, cur = 0, 0
        while not self.stop.is_set():
            for k in range(len(self.ports)):
                port = self.ports[(cur + k) % len(self.ports)]
                try:
                    if self.write(port, i):
                        self.ok.append((time.monotonic(), port))
                        cur = (cur + k) % len(self.ports)
                        break
                except Exception:
                    pass
            i += 1
            time.sleep(0.002)

    def close(self):
        self.stop.set()
        self.t.join(timeout=10)

    def first_after(self, t0, not_port):
        for t, p in self.ok:
            if t > t0 and p != not_port:
                return t
        return None

    def last_before(self, t0, port):
        last = None
        for t, p in self.ok:
            if t <= t0 and p == port:
                last = t
        return last

    def gap(self, t0, old):
        """Longest pause in successful writes from t0 until the first write on another node."""
        new = self.first_after(t0, old)
        if new is None:
            return None
        times = [t for t, _ in self.ok if t <= new]
        prev = max([t for t in times if t <= t0], default=t0)
        best = 0.0
        for t in times:
            if t > t0:
                best = max(best, t - prev)
                prev = t
        return best


def crash_time(w, t0, old_port):
    first = w.first_after(t0, old_port)
    return None if first is None else first - t0


def trial(label, ports, write, leader, port_of, arm, measure, timeout=60):
    """One trial: write continuously, wait a random moment (so the action falls anywhere in
    each system's renewal cycle), then run the action `arm(primary)` prepared and measure
    the writes once another node accepts one. Returns (old primary, measurement or None)."""
    w = Writer(ports, write)
    time.sleep(0.5 + random.random() * 2)
    old = leader()
    old_port = port_of(old)
    act = arm(old)
    t0 = time.monotonic()
    if os.environ.get("BENCH_DEBUG"):
        print(f"  {label} on {old} at {time.strftime('%H:%M:%S', time.gmtime())}", flush=True)
    act()
    wait_until(lambda: w.first_after(t0, old_port) is not None, timeout)
    result = measure(w, t0, old_port)
    w.close()
    print(f"  {label}: {'none' if result is None else f'{result:.3f} s'}", flush=True)
    return old, result


def kill_both(*pids):
    def act():
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    return act


def tree(*roots):
    """The pids of `roots` and of all their descendants (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo += children.get(pid, [])
    return out


class Freeze:
    """Machine loss, simulated: SIGSTOP of every process of a node (SIGCONT by `thaw`)."""

    def __init__(self, *roots):
        self.roots, self.pids = roots, []

    def act(self):
        # Stop the roots first (nothing new gets forked), then everything below them.
        for _ in range(3):
            for pid in tree(*self.roots):
                if pid not in self.pids:
                    try:
                        os.kill(pid, signal.SIGSTOP)
                        self.pids.append(pid)
                    except ProcessLookupError:
                        pass

    def thaw(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.pids = []


FROZEN = []  # nodes stopped right now: thawed on the way out whatever happens


def freeze(*roots):
    f = Freeze(*roots)
    FROZEN.append(f)
    return f.act


def thaw_all():
    while FROZEN:
        FROZEN.pop().thaw()


def pg_write(port, i):
    return pg(port, f"insert into bench values ({i}) returning 1", timeout=1) == 1


def redis_write(port, i):
    return resp(port, "SET", f"k{i}", "v", timeout=0.5) == "+OK"


# ---- autopilot blueprints ------------------------------------------------------

def blueprint_wants(example, var):
    """Whether a blueprint reads `var` (e.g. a password file), so the bench must provide it."""
    d = os.path.join(ROOT, "examples", example)
    for name in os.listdir(d):
        try:
            with open(os.path.join(d, name)) as f:
                if var in f.read():
                    return True
        except (OSError, UnicodeDecodeError):
            pass
    return False


def has_switchover(bin_path):
    return subprocess.run([bin_path, "switchover", "--help"], capture_output=True).returncode == 0


class ApCluster:
    def __init__(self, bin_path, work, etcd_port, kind, ttl):
        self.bin, self.work, self.kind, self.ttl = bin_path, work, kind, ttl
        self.url = f"etcd://127.0.0.1:{etcd_port}/bench-{kind}-{os.path.basename(work)}"
        self.nodes = {}  # name -> dict(port, proc)
        self.election = "postgres" if kind == "pg" else "redis"
        # Authentication on by default in newer blueprints: give them a password file.
        var = "PG_PASSWORD_FILE" if kind == "pg" else "REDIS_PASSWORD_FILE"
        self.password_file = None
        if blueprint_wants(self.election, var):
            self.password_file = (var, f"{work}/{kind}.password")
            with open(self.password_file[1], "w") as f:
                f.write("bench\n")
            os.chmod(self.password_file[1], 0o600)  # the blueprints refuse a readable one

    def env(self, name, port):
        e = dict(os.environ)
        e["PATH"] = os.path.dirname(os.path.abspath(self.bin)) + ":" + e.get("PATH", "")
        e.update({
            "AUTOPILOT_CATALOG": self.url, "AUTOPILOT_INTERFACE": "static:127.0.0.1",
            "AUTOPILOT_HOSTNAME": name, "AUTOPILOT_STATE_DIR": f"{self.work}/state-{name}",
            "SNAPSHOT_STORE": f"file://{self.work}/store",
        })
        if self.password_file:
            e[self.password_file[0]] = self.password_file[1]
        if self.kind == "pg":
            e.update({"PG_RUN": self.work, "PG_PORT": str(port), "PGDATA": f"{self.work}/data-{name}",
                      "PG_BIND": "127.0.0.1", "PG_LEASE_TTL": f"{self.ttl}s"})
            if blueprint_wants("postgres", "PG_ARCHIVE_REPO"):
                # The shared archive exists before any node starts (the blueprint never creates it).
                repo = f"{self.work}/archive"
                os.makedirs(repo, exist_ok=True)
                e["PG_ARCHIVE_REPO"] = repo
        else:
            e.update({"REDIS_RUN": self.work, "REDIS_PORT": str(port), "REDIS_DATA": f"{self.work}/data-{name}",
                      "REDIS_BIND": "127.0.0.1", "REDIS_LEASE_TTL": f"{self.ttl}s", "SNAPSHOT_INTERVAL": "10s"})
        return e

    def socket(self, port):
        return f"{self.work}/autopilot-{'postgres' if self.kind == 'pg' else 'redis'}-{port}.sock"

    def start(self, name, port=None):
        port = port or self.nodes.get(name, {}).get("port") or free_port()
        if self.password_file and self.kind == "redis":
            REDIS_AUTH[port] = "bench"
        ex = "postgres" if self.kind == "pg" else "redis"
        p = spawn([self.bin, "-config", f"{ex}.json5"], f"{self.work}/{name}.log",
                  cwd=os.path.join(ROOT, "examples", ex), env=self.env(name, port))
        self.nodes[name] = {"port": port, "proc": p}
        return port

    def ctl(self, name, *args):
        port = self.nodes[name]["port"]
        env = dict(os.environ, AUTOPILOT_SOCKET=self.socket(port), AUTOPILOT_CATALOG=self.url)
        subprocess.run([self.bin, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    def server_pid(self, name):
        port = self.nodes[name]["port"]
        out = subprocess.run([self.bin, "status", "--json"], capture_output=True, text=True,
                             env=dict(os.environ, AUTOPILOT_SOCKET=self.socket(port)))
        for j in json.loads(out.stdout)["jobs"]:
            if j["name"] in ("postgres", "redis"):
                return j["pid"]
        return None

    def leader(self):
        out = subprocess.run([self.bin, "leader", "--catalog", self.url, self.election],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return None
        port = int(out.stdout.split()[1].rsplit(":", 1)[1])
        return next((n for n, v in self.nodes.items() if v["port"] == port), None)

    def agent_rss(self):
        return [rss_mb(v["proc"].pid) for v in self.nodes.values() if v["proc"].poll() is None]


def pg_settled(ports, primary_port):
    if pg(primary_port, "select pg_is_in_recovery()"):
        return False
    n = pg(primary_port, "select count(*) from pg_stat_replication where state = 'streaming'")
    return n >= len(ports) - 1


def redis_settled(ports, master_port):
    if redis_info(master_port, "role") != "master":
        return False
    return int(redis_info(master_port, "connected_slaves") or 0) >= len(ports) - 1 and all(
        redis_info(p, "master_link_status") == "up" for p in ports if p != master_port)


CURRENT = []  # the result of the run in progress, so a run that fails still reports what it measured


def result(crash, machine, graceful, boot, rss, switch=""):
    """The figures of one run; the lists are the ones the run fills as it goes."""
    r = {"crash": crash, "machine": machine, "switchover": graceful, "boot": boot, "rss": rss,
         "switch": switch}
    CURRENT[:] = [r]
    return r


def bench_autopilot(kind, bin_path, etcd_port, trials, work, ttl):
    c = ApCluster(bin_path, work, etcd_port, kind, ttl)
    names = ["n1", "n2", "n3"]
    for n in names:
        c.start(n)
    ports = [c.nodes[n]["port"] for n in names]
    settled = pg_settled if kind == "pg" else redis_settled

    def wait_settled(timeout=120):
        def ok():
            l = c.leader()
            return l is not None and settled(ports, c.nodes[l]["port"])
        if not wait_until(ok, timeout, 0.2):
            raise SystemExit(f"autopilot {kind}: cluster did not settle; logs in {work}")

    wait_settled()
    if kind == "pg":
        pg(c.nodes[c.leader()]["port"], "create table bench (v int)")
    write = pg_write if kind == "pg" else redis_write
    crash, machine, graceful = [], [], []
    result(crash, machine, graceful, None, float("nan"))
    port_of = lambda n: c.nodes[n]["port"]  # noqa: E731
    for t in range(trials):
        wait_settled()
        old, r = trial(f"autopilot {kind} crash {t + 1}/{trials}", ports, write, c.leader, port_of,
                       lambda n: kill_both(c.nodes[n]["proc"].pid, c.server_pid(n)), crash_time)
        crash += [r] if r is not None else []
        c.nodes[old]["proc"].wait()
        c.start(old)
    for t in range(trials):
        wait_settled()
        old, r = trial(f"autopilot {kind} machine loss {t + 1}/{trials}", ports, write, c.leader, port_of,
                       lambda n: freeze(c.nodes[n]["proc"].pid, c.server_pid(n)), crash_time)
        machine += [r] if r is not None else []
        thaw_all()
    switchover = has_switchover(bin_path)
    how = "autopilot switchover" if switchover else "maintenance on the leader"
    for t in range(trials):
        wait_settled()
        if switchover:
            act = lambda n: lambda: c.ctl(n, "switchover", c.election)  # noqa: E731
        else:
            act = lambda n: lambda: c.ctl(n, "maintenance", "enable")  # noqa: E731
        old, r = trial(f"autopilot {kind} switchover {t + 1}/{trials}", ports, write, c.leader, port_of,
                       act, Writer.gap, timeout=30)
        graceful += [r] if r is not None else []
        if not switchover:
            c.ctl(old, "maintenance", "disable")
    wait_settled()
    # A fourth node with an empty data dir: start -> streaming/in sync from the primary.
    t0 = time.monotonic()
    p4 = c.start("n4")
    lp = c.nodes[c.leader()]["port"]
    if kind == "pg":
        ok = wait_until(lambda: pg(p4, "select status from pg_stat_wal_receiver") == "streaming", 120)
    else:
        ok = wait_until(lambda: redis_info(p4, "master_link_status") == "up"
                        and int(redis_info(lp, "connected_slaves")) >= 3, 120)
    boot = time.monotonic() - t0 if ok else None
    rss = c.agent_rss()
    for v in c.nodes.values():
        kill_group(v["proc"])
    for v in c.nodes.values():
        try:
            v["proc"].wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_group(v["proc"], signal.SIGKILL)
    return result(crash, machine, graceful, boot, statistics.mean(rss) if rss else float("nan"), how)


# ---- Patroni -------------------------------------------------------------------

PATRONI_YML = """scope: bench
name: {name}
restapi: {{listen: "127.0.0.1:{api}", connect_address: "127.0.0.1:{api}"}}
etcd3: {{hosts: "127.0.0.1:{etcd}"}}
bootstrap:
  dcs:
{timing}    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters: {{wal_log_hints: "on", max_wal_senders: 10, wal_keep_size: 512MB, shared_buffers: 32MB}}
  initdb: [{{encoding: UTF8}}]
postgresql:
  listen: "127.0.0.1:{port}"
  connect_address: "127.0.0.1:{port}"
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {work}/pgpass-{name}
  authentication:
    superuser: {{username: postgres, password: bench}}
    replication: {{username: replicator, password: bench}}
    rewind: {{username: postgres, password: bench}}
  parameters: {{unix_socket_directories: "{work}"}}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
"""

# Patroni's settings: its defaults (ttl 30, loop_wait 10, retry_timeout 10), and "equal":
# the leader key's TTL at autopilot's default lease TTL.
PATRONI = {
    "default": ("ttl 30, loop_wait 10, retry_timeout 10 (defaults)", ""),
    "equal": ("ttl 5, loop_wait 1, retry_timeout 2", "    ttl: 5\n    loop_wait: 1\n    retry_timeout: 2\n"),
}


def bench_patroni(etcd_port, trials, work, setting):
    os.chmod(work, 0o777)
    nodes = {}
    scope_dir = os.path.basename(work)

    def start(name):
        if name not in nodes:
            nodes[name] = {"port": free_port(), "api": free_port()}
        n = nodes[name]
        cfg = f"{work}/patroni-{name}.yml"
        with open(cfg, "w") as f:
            f.write(PATRONI_YML.format(name=name, api=n["api"], etcd=etcd_port, timing=PATRONI[setting][1],
                                       port=n["port"], data=f"{work}/pdata-{name}", bin=pg_bin(),
                                       work=work).replace("scope: bench", f"scope: {scope_dir}"))
        os.chmod(cfg, 0o644)
        n["proc"] = spawn(["patroni", cfg], f"{work}/patroni-{name}.log", user="postgres")
        return n["port"]

    def leader():
        import urllib.request
        for name, n in nodes.items():
            try:
                r = urllib.request.urlopen(f"http://127.0.0.1:{n['api']}/primary", timeout=1)
                if r.status == 200:
                    return name
            except Exception:
                pass
        return None

    names = ["p1", "p2", "p3"]
    for n in names:
        start(n)
    ports = [nodes[n]["port"] for n in names]

    def wait_settled(timeout=360):
        def ok():
            l = leader()
            return l is not None and pg_settled(ports, nodes[l]["port"])
        if not wait_until(ok, timeout, 0.2):
            raise SystemExit(f"patroni: cluster did not settle; logs in {work}")

    wait_settled()
    pg(nodes[leader()]["port"], "create table bench (v int)")
    crash, machine, graceful = [], [], []
    result(crash, machine, graceful, None, float("nan"))
    port_of = lambda n: nodes[n]["port"]  # noqa: E731

    def postmaster(n):
        with open(f"{work}/pdata-{n}/postmaster.pid") as f:
            return int(f.readline())

    def switchover(n):
        flag = "--leader" if _patronictl_has_leader() else "--master"
        return lambda: subprocess.run(["patronictl", "-c", f"{work}/patroni-{n}.yml", "switchover", "--force",
                                       flag, n], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    for t in range(trials):
        wait_settled()
        old, r = trial(f"patroni {setting} crash {t + 1}/{trials}", ports, pg_write, leader, port_of,
                       lambda n: kill_both(nodes[n]["proc"].pid, postmaster(n)), crash_time, timeout=120)
        crash += [r] if r is not None else []
        nodes[old]["proc"].wait()
        start(old)
    for t in range(trials):
        wait_settled()
        # Patroni runs postgres in its own session: the node is both process trees.
        old, r = trial(f"patroni {setting} machine loss {t + 1}/{trials}", ports, pg_write, leader, port_of,
                       lambda n: freeze(nodes[n]["proc"].pid, postmaster(n)), crash_time, timeout=120)
        machine += [r] if r is not None else []
        thaw_all()
    for t in range(trials):
        wait_settled()
        _, r = trial(f"patroni {setting} switchover {t + 1}/{trials}", ports, pg_write, leader, port_of,
                     switchover, Writer.gap)
        graceful += [r] if r is not None else []
    wait_settled()
    t0 = time.monotonic()
    p4 = start("p4")
    ok = wait_until(lambda: pg(p4, "select status from pg_stat_wal_receiver") == "streaming", 180)
    boot = time.monotonic() - t0 if ok else None
    rss = [rss_mb(n["proc"].pid) for n in nodes.values() if n["proc"].poll() is None]
    for n in nodes.values():
        kill_group(n["proc"])
    for n in nodes.values():
        try:
            n["proc"].wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(n["proc"], signal.SIGKILL)
    # Patroni's postgres outlives a killed Patroni only if it was orphaned; stop any.
    for name in nodes:
        pid_file = f"{work}/pdata-{name}/postmaster.pid"
        if os.path.exists(pid_file):
            try:
                os.kill(int(open(pid_file).readline()), signal.SIGQUIT)
            except (OSError, ValueError):
                pass
    return result(crash, machine, graceful, boot, statistics.mean(rss) if rss else float("nan"),
                  "patronictl switchover")


def _patronictl_has_leader():
    out = subprocess.run(["patronictl", "switchover", "--help"], capture_output=True, text=True).stdout
    return "--leader" in out


# ---- Redis Sentinel --------------------------------------------------------------

# Sentinel's settings: its defaults, "equal" (down-after at autopilot's default lease TTL) and
# "fast" (down-after 1 s, the figure issue 12 measures itself against).
SENTINEL = {
    "default": ("down-after 30000 ms, failover-timeout 180000 ms, parallel-syncs 1 (defaults)", ""),
    "equal": ("down-after 5000 ms, failover-timeout 10000 ms, parallel-syncs 2",
              "sentinel down-after-milliseconds bench 5000\nsentinel failover-timeout bench 10000\n"
              "sentinel parallel-syncs bench 2\n"),
    "fast": ("down-after 1000 ms, failover-timeout 10000 ms, parallel-syncs 2",
             "sentinel down-after-milliseconds bench 1000\nsentinel failover-timeout bench 10000\n"
             "sentinel parallel-syncs bench 2\n"),
}


def sentinel_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout.split()


def bench_sentinel(trials, work, setting):
    rs, ss = {}, []

    def start_redis(name, replicaof=None):
        if name not in rs:
            rs[name] = {"port": free_port()}
        port = rs[name]["port"]
        os.makedirs(f"{work}/r-{name}", exist_ok=True)
        conf = f"{work}/r-{name}.conf"
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {work}/r-{name}\nsave \"\"\n"
                        f"appendonly no\nreplica-announce-ip 127.0.0.1\nrepl-diskless-sync-delay 0\n")
                if replicaof:
                    f.write(f"replicaof 127.0.0.1 {replicaof}\n")
        rs[name]["proc"] = spawn(["redis-server", conf], f"{work}/r-{name}.log")
        return port

    m = start_redis("r1")
    start_redis("r2", m)
    start_redis("r3", m)
    names = ("r1", "r2", "r3")
    ports = [rs[n]["port"] for n in names]
    for i in range(3):
        sp = free_port()
        conf = f"{work}/s{i}.conf"
        with open(conf, "w") as f:
            f.write(f"port {sp}\nbind 127.0.0.1\nprotected-mode no\ndir {work}\n"
                    f"sentinel announce-ip 127.0.0.1\n"
                    f"sentinel monitor bench 127.0.0.1 {m} 2\n" + SENTINEL[setting][1])
        ss.append({"port": sp, "proc": spawn(["redis-sentinel", conf], f"{work}/s{i}.log")})

    def master():
        out = sentinel_cli(ss[0]["port"], "SENTINEL", "get-master-addr-by-name", "bench")
        if len(out) < 2:
            return None
        return next((n for n, v in rs.items() if v["port"] == int(out[1])), None)

    def wait_settled(timeout=240):
        def ok():
            mm = master()
            if mm is None or not redis_settled(ports, rs[mm]["port"]):
                return False
            # Every sentinel agrees, sees both replicas and the two other sentinels.
            for s in ss:
                out = sentinel_cli(s["port"], "SENTINEL", "get-master-addr-by-name", "bench")
                if len(out) < 2 or int(out[1]) != rs[mm]["port"]:
                    return False
                m = sentinel_cli(s["port"], "SENTINEL", "master", "bench")
                fields = dict(zip(m[::2], m[1::2]))
                if fields.get("num-slaves") != "2" or fields.get("num-other-sentinels") != "2":
                    return False
                if "s_down" in fields.get("flags", "") or "o_down" in fields.get("flags", ""):
                    return False
            return True
        if not wait_until(ok, timeout, 0.2):
            raise SystemExit(f"sentinel: did not settle; logs in {work}")

    wait_settled()
    crash, machine, graceful = [], [], []
    result(crash, machine, graceful, None, float("nan"))
    port_of = lambda n: rs[n]["port"]  # noqa: E731
    failover = lambda n: lambda: subprocess.run(  # noqa: E731
        ["redis-cli", "-p", str(ss[0]["port"]), "SENTINEL", "FAILOVER", "bench"], stdout=subprocess.DEVNULL)
    for t in range(trials):
        wait_settled()
        time.sleep(1)
        old, r = trial(f"sentinel {setting} crash {t + 1}/{trials}", ports, redis_write, master, port_of,
                       lambda n: kill_both(rs[n]["proc"].pid), crash_time, timeout=120)
        crash += [r] if r is not None else []
        rs[old]["proc"].wait()
        start_redis(old)  # Sentinel turns the returning old master into a replica
    for t in range(trials):
        wait_settled()
        time.sleep(1)
        # The master's machine: its redis-server and the sentinel beside it (same index). The
        # first sentinel is the bench's reader, so the master's machine never holds it.
        def machine_of(n):
            i = names.index(n)
            side = ss[i if i != 0 else 1]["proc"].pid
            return freeze(rs[n]["proc"].pid, side)
        old, r = trial(f"sentinel {setting} machine loss {t + 1}/{trials}", ports, redis_write, master, port_of,
                       machine_of, crash_time, timeout=120)
        machine += [r] if r is not None else []
        thaw_all()
    for t in range(trials):
        wait_settled()
        time.sleep(1)
        _, r = trial(f"sentinel {setting} switchover {t + 1}/{trials}", ports, redis_write, master, port_of,
                     failover, Writer.gap)
        graceful += [r] if r is not None else []
    wait_settled()
    mp = rs[master()]["port"]
    t0 = time.monotonic()
    p4 = start_redis("r4", mp)
    ok = wait_until(lambda: redis_info(p4, "master_link_status") == "up", 120)
    boot = time.monotonic() - t0 if ok else None
    rss = [rss_mb(s["proc"].pid) for s in ss]
    for v in list(rs.values()) + ss:
        kill_group(v["proc"], signal.SIGKILL)
    return result(crash, machine, graceful, boot, statistics.mean(rss), "SENTINEL FAILOVER")


# ---- report ----------------------------------------------------------------------

def cell(xs):
    if not xs:
        return "no samples"
    return f"{pct(xs, 50):.2f} / {pct(xs, 99):.2f} s (max {max(xs):.2f}, n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--only", choices=["pg", "redis"])
    ap.add_argument("--settings", choices=["default", "equal", "both"], default="both",
                    help="the incumbents' settings to run (autopilot always runs at its default, TTL 5 s)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    ap.add_argument("--autopilot-only", action="store_true", help="skip Patroni and Sentinel")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    settings = ["default", "equal"] if a.settings == "both" else [a.settings]
    work = tempfile.mkdtemp(prefix="autopilot-failover-")
    os.chmod(work, 0o755)
    etcd, etcd_port = start_etcd(f"{work}/etcd")
    PROCS.append(etcd)
    ap_cfg = f"lease TTL {TTL} s (default)"
    runs = []  # (system, settings text, fn(work dir))
    if a.only in (None, "pg"):
        runs.append(("autopilot + PostgreSQL blueprint", ap_cfg,
                     lambda w: bench_autopilot("pg", a.bin, etcd_port, a.trials, w, TTL)))
        if not a.autopilot_only:
            for s in settings:
                runs.append((f"Patroni ({s})", PATRONI[s][0],
                             lambda w, s=s: bench_patroni(etcd_port, a.trials, w, s)))
    if a.only in (None, "redis"):
        runs.append(("autopilot + Redis blueprint", ap_cfg,
                     lambda w: bench_autopilot("redis", a.bin, etcd_port, a.trials, w, TTL)))
        if not a.autopilot_only:
            for s in settings + (["fast"] if "equal" in settings else []):
                runs.append((f"Redis Sentinel ({s})", SENTINEL[s][0],
                             lambda w, s=s: bench_sentinel(a.trials, w, s)))
    results = []
    try:
        for name, cfg, fn in runs:
            w = tempfile.mkdtemp(prefix="run-", dir=work)
            os.chmod(w, 0o777)
            print(f"== {name}: {cfg}", flush=True)
            CURRENT.clear()
            try:
                results.append((name, cfg, fn(w)))
            except SystemExit as e:
                print(f"  {name} failed: {e}", flush=True)
                # What it measured before failing, marked as incomplete.
                results.append((name + " (incomplete: " + str(e).split(";")[0] + ")", cfg,
                                CURRENT[0] if CURRENT else None))
            finally:
                thaw_all()
    finally:
        thaw_all()
        # SIGTERM first: an agent stops its jobs (their own process groups) on the way out.
        for p in PROCS:
            kill_group(p)
        for p in PROCS:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                kill_group(p, signal.SIGKILL)
                p.wait()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"\n{time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit or '?'}, {a.trials} trials each, "
          f"{os.cpu_count()} CPUs, one etcd on loopback; p50 / p99\n")
    print("| system | settings | crash failover (kill -9) | machine loss (SIGSTOP of the node) "
          "| switchover write gap | replica bootstrap | agent RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, cfg, r in results:
        if r is None:
            print(f"| {name} | {cfg} | failed | | | | |")
            continue
        boot = f"{r['boot']:.2f} s" if r["boot"] else "not measured"
        print(f"| {name} | {cfg} | {cell(r['crash'])} | {cell(r['machine'])} | {cell(r['switchover'])} "
              f"({r['switch']}) | {boot} | {r['rss']:.1f} MB |")
    if a.keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
