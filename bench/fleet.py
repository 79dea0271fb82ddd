#!/usr/bin/env python3
"""Fleet benchmark for docs/benchmarks.md (issue 18): N real agent processes on
one catalog (a 3-member etcd cluster on loopback, or one embedded catalog
directory shared by all agents). Run via bench/fleet.sh, which raises the limits.

Each agent runs one trivial job with a port and a health check (registered as
service `app`) and watches service `ping`, whose `changed` handler prints the
agent's index and the time (`date`, raw logging, into a file shared by all).
Measured:
- all registered: time from the first agent's start until the catalog lists N
  passing instances of `app` (polled with `autopilot catalog instances`);
- change fan-out: a source agent's service `ping` is deregistered/registered
  (maintenance on/off through its control socket) -> every watcher's handler
  has exec'd (p50/p99/max over all watchers and rounds);
- idle: etcd's gRPC requests/s by method (sum of the members' /metrics) and
  CPU of etcd and of all agents (/proc/PID/stat) over a window;
- memory: the sum of the agents' RSS and PSS (/proc/PID/smaps_rollup).
The config and settings are printed beside the figures."""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
PIDS = []  # every process started here, killed by cleanup()
PIDFILE = None  # the same PIDs, for fleet.sh's trap should this script die


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else None


def record(p, pidfile):
    global PIDFILE
    PIDFILE = pidfile
    PIDS.append(p)
    with open(pidfile, "a") as f:
        f.write(f"{p.pid}\n")
    return p


def cleanup():
    for p in PIDS:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 20
    for p in PIDS:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if PIDFILE:
        # All reaped: the trap must not signal these PIDs (they may be reused).
        open(PIDFILE, "w").close()


def start_etcd_cluster(tmp, pidfile):
    """Three etcd members on loopback ports; returns their client ports once all are healthy."""
    names = ["m0", "m1", "m2"]
    cports = [free_port() for _ in names]
    pports = [free_port() for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, pports))
    for n, c, pp in zip(names, cports, pports):
        record(subprocess.Popen(
            ["etcd", "--name", n, "--data-dir", os.path.join(tmp, "etcd-" + n),
             "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
             "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", f"fleet-{os.getpid()}",
             "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), pidfile)
    deadline = time.time() + 30
    for c in cports:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{c}/health", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("etcd cluster did not become healthy")
            time.sleep(0.1)
    return cports


def etcd_received(ports):
    out = {}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            m = re.match(r'grpc_server_msg_received_total\{([^}]*)\} (\S+)', line)
            if m:
                method = re.search(r'grpc_method="([^"]+)"', m.group(1)).group(1)
                out[method] = out.get(method, 0) + float(m.group(2))
    return out


def cpu_ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def memory(pids):
    rss = pss = priv = 0
    for pid in pids:
        try:
            roll = open(f"/proc/{pid}/smaps_rollup").read()
        except OSError:
            continue
        kb = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", roll, re.M)}
        rss += kb.get("Rss", 0)
        pss += kb.get("Pss", 0)
        priv += kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"rss_MB": round(rss / 1024, 1), "pss_MB": round(pss / 1024, 1), "private_MB": round(priv / 1024, 1),
            "per_agent_pss_kB": round(pss / max(1, len(pids))), "per_agent_rss_kB": round(rss / max(1, len(pids)))}


def post(sock, path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    while s.recv(4096):
        pass
    s.close()


def passing(binary, url, service):
    r = subprocess.run([binary, "catalog", "--catalog", url, "--json", "instances", service],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return 0
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return 0
    items = data if isinstance(data, list) else data.get("instances", [])
    return sum(1 for i in items if i.get("status") == "passing")


def handler_lines(path):
    with open(path) as f:
        return [tuple(map(int, m)) for m in re.findall(r"^h(\d+) (\d+)$", f.read(), re.M)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--catalog", choices=["etcd", "local"], default="etcd")
    ap.add_argument("--rounds", type=int, default=5, help="changes fanned out to every watcher")
    ap.add_argument("--idle", type=int, default=30, help="seconds of the idle window")
    ap.add_argument("--health-interval", type=int, default=5)
    ap.add_argument("--ttl", default="10s", help="etcd lease TTL ($AUTOPILOT_ETCD_TTL)")
    ap.add_argument("--pidfile", required=True)
    args = ap.parse_args()
    n = args.agents
    binary = args.binary
    tmp = tempfile.mkdtemp(prefix="ap-fleet-")
    res = {"agents": n, "catalog": args.catalog, "health_interval_s": args.health_interval,
           "etcd_lease_ttl": args.ttl if args.catalog == "etcd" else None, "tmp": tmp}
    try:
        if args.catalog == "etcd":
            ports = start_etcd_cluster(tmp, args.pidfile)
            url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/fleet"
        else:
            ports = []
            url = "local://" + os.path.join(tmp, "catalog")
        res["catalog_url"] = url
        env = dict(os.environ, AUTOPILOT_CATALOG=url, AUTOPILOT_ETCD_TTL=args.ttl,
                   AUTOPILOT_STATE_DIR=os.path.join(tmp, "state"))
        env.pop("AUTOPILOT_SOCKET", None)
        hlog = os.path.join(tmp, "handlers.log")
        open(hlog, "w").close()
        # The source of the changes: one agent registering service `ping`.
        src_sock = os.path.join(tmp, "src.sock")
        src_cfg = os.path.join(tmp, "src.json5")
        with open(src_cfg, "w") as f:
            f.write('{ control: { socket: "%s" }, jobs: [{ name: "ping", exec: "sleep 86400", port: 7999,'
                    ' interfaces: "static:127.0.0.1", initial_status: "passing" }] }' % src_sock)
        record(subprocess.Popen([binary, "-config", src_cfg], env=dict(env, AUTOPILOT_HOSTNAME="src"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
               args.pidfile)
        agent_cfg = None
        out = open(hlog, "a")  # O_APPEND: each handler's one-line write lands whole
        agents = []
        t0 = time.time()
        for i in range(n):
            sock = os.path.join(tmp, f"a{i}.sock")
            agent_cfg = (
                '{ control: { socket: "%s" },\n'
                '  watches: [{ name: "ping", interval: 60 }],\n'
                '  jobs: [\n'
                '    { name: "app", exec: "sleep 86400", port: %d, interfaces: "static:127.0.0.1",\n'
                '      health: { exec: "true", interval: %d, ttl: %d } },\n'
                '    { name: "h", when: { source: "watch.ping", each: "changed" },\n'
                '      exec: ["date", "+h%d %%s%%N"], logging: { raw: true } }\n'
                '  ] }' % (sock, 20000 + i, args.health_interval, 3 * args.health_interval, i))
            cfg = os.path.join(tmp, f"a{i}.json5")
            with open(cfg, "w") as f:
                f.write(agent_cfg)
            agents.append(record(subprocess.Popen(
                [binary, "-config", cfg], env=dict(env, AUTOPILOT_HOSTNAME=f"a{i}"),
                stdin=subprocess.DEVNULL, stdout=out, stderr=open(os.path.join(tmp, f"a{i}.log"), "w")),
                args.pidfile))
        res["spawn_all_s"] = round(time.time() - t0, 2)
        res["agent_config_example"] = agent_cfg
        deadline = t0 + 120
        seen = 0
        while time.time() < deadline:
            seen = passing(binary, url, "app")
            if seen >= n:
                break
            time.sleep(0.2)
        res["all_registered_s"] = round(time.time() - t0, 2) if seen >= n else None
        res["registered_at_end"] = seen
        dead = [i for i, p in enumerate(agents) if p.poll() is not None]
        if dead:
            res["agents_exited"] = len(dead)
            # Why: the last line each exited agent logged, counted.
            why = {}
            for i in dead:
                with open(os.path.join(tmp, f"a{i}.log")) as f:
                    lines = f.read().strip().splitlines()
                last = re.sub(r"\d+", "N", lines[-1])[:200] if lines else f"exit {agents[i].returncode}"
                why[last] = why.get(last, 0) + 1
            res["agents_exited_why"] = why
        # Let the first handlers (the watch's first sighting) land.
        settle_deadline = time.time() + 30
        while len(handler_lines(hlog)) < n and time.time() < settle_deadline:
            time.sleep(0.2)
        time.sleep(2)
        # Change fan-out.
        lat, worst = [], []
        for r in range(args.rounds):
            before = len(handler_lines(hlog))
            start_ns = time.time_ns()
            post(src_sock, "/v3/maintenance/enable" if r % 2 == 0 else "/v3/maintenance/disable")
            dl = time.time() + 30
            while len(handler_lines(hlog)) - before < n and time.time() < dl:
                time.sleep(0.01)
            new = handler_lines(hlog)[before:]
            got = {}
            for idx, ts in new:
                got.setdefault(idx, ts)
            ds = [(ts - start_ns) / 1e6 for ts in got.values()]
            lat.extend(ds)
            worst.append(round(max(ds), 1) if ds else None)
            res.setdefault("fanout_reached", []).append(len(got))
            time.sleep(2)
        res["fanout_ms"] = {"p50": round(pct(lat, 0.5), 1) if lat else None,
                            "p99": round(pct(lat, 0.99), 1) if lat else None,
                            "last_watcher_per_round": worst}
        # Idle window.
        time.sleep(3)
        agent_pids = [p.pid for p in agents]
        etcd_pids = [p.pid for p in PIDS[:3]] if args.catalog == "etcd" else []
        a0 = sum(cpu_ticks(p) for p in agent_pids)
        e0 = sum(cpu_ticks(p) for p in etcd_pids)
        m0 = etcd_received(ports) if ports else {}
        time.sleep(args.idle)
        a1 = sum(cpu_ticks(p) for p in agent_pids)
        e1 = sum(cpu_ticks(p) for p in etcd_pids)
        m1 = etcd_received(ports) if ports else {}
        res["idle_window_s"] = args.idle
        res["idle_agents_cpu_pct_of_one_core"] = round(100.0 * (a1 - a0) / CLK / args.idle, 1)
        if ports:
            rates = {m: round((m1.get(m, 0) - m0.get(m, 0)) / args.idle, 2) for m in m1}
            res["idle_etcd_requests_per_s"] = {m: r for m, r in rates.items() if r > 0}
            res["idle_etcd_cpu_pct_of_one_core"] = round(100.0 * (e1 - e0) / CLK / args.idle, 1)
            ttl_s = float(args.ttl.rstrip("s"))
            res["expected_keepalives_per_s"] = round((n + 1) / (ttl_s / 3), 1)
        res["memory_agents"] = memory(agent_pids)
    finally:
        cleanup()
    cfg = res.pop("agent_config_example", None)
    print("--- agent config (the last of %d agents) ---\n%s" % (n, cfg or ""), file=sys.stderr)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
