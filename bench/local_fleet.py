#!/usr/bin/env python3
"""N real agents on one embedded catalog (issue 19): idle CPU of all agents
together and change -> every watch handler latency.

Each agent: one trivial job with a port and a native TCP health check every
5 s, TTL 3 s (a keep-alive every second), and a watch on `probe` whose
`each: changed` handler appends `date +%s%N`. A probe agent toggles
maintenance (deregister / register of `probe`) through its control socket;
every toggle must reach all N handlers.

usage: bench/local_fleet.py BINARY N [CHANGES]
prints one JSON line."""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

BIN, N = sys.argv[1], int(sys.argv[2])
CHANGES = int(sys.argv[3]) if len(sys.argv) > 3 else 10
TMP = tempfile.mkdtemp(prefix="ap-localfleet-")
CAT = "local://" + os.path.join(TMP, "catalog")
CLK = os.sysconf("SC_CLK_TCK")
ENV = dict(os.environ, AUTOPILOT_CATALOG=CAT)
PROCS = []


def cleanup(*_):
    for p in PROCS:
        try:
            p.kill()
        except OSError:
            pass
    for p in PROCS:
        p.wait()
    shutil.rmtree(TMP, ignore_errors=True)


def post(sock, path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    while s.recv(4096):
        pass
    s.close()


def ticks(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(st[11]) + int(st[12])


def lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    hport = lsock.getsockname()[1]
    threading.Thread(target=lambda: [lsock.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    logs = []
    t0 = time.time()
    for i in range(N):
        d = os.path.join(TMP, f"n{i}")
        os.makedirs(d)
        log = os.path.join(d, "changes")
        logs.append(log)
        cfg = os.path.join(d, "c.json5")
        with open(cfg, "w") as f:
            f.write(f"""{{ control: {{ socket: "{d}/ctl.sock" }},
  jobs: [{{ name: "app", exec: "sleep 3600", port: 9000, interfaces: ["static:127.0.0.1"],
            health: {{ tcp: "127.0.0.1:{hport}", interval: "5s", ttl: "3s" }} }},
         {{ name: "h", when: {{ source: "watch.probe", each: "changed" }}, exec: ["sh", "-c", "date +%s%N >> {log}"] }}],
  watches: [{{ name: "probe", interval: 60 }}] }}""")
        PROCS.append(subprocess.Popen([BIN, "-config", cfg], env=dict(ENV, AUTOPILOT_HOSTNAME=f"n{i}"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    agents = list(PROCS)
    psock = os.path.join(TMP, "p.sock")
    pcfg = os.path.join(TMP, "p.json5")
    with open(pcfg, "w") as f:
        f.write(f"""{{ control: {{ socket: "{psock}" }},
  jobs: [{{ name: "probe", port: 8000, interfaces: "static:127.0.0.1", initial_status: "passing" }}] }}""")
    while True:
        out = subprocess.run([BIN, "catalog", "--catalog", CAT, "instances", "app", "--json"],
                             capture_output=True, env=ENV).stdout
        try:
            n = sum(1 for i in json.loads(out) if i["status"] == "passing")
        except ValueError:
            n = 0
        if n == N:
            break
        if time.time() - t0 > 120:
            raise SystemExit(f"only {n} of {N} registered after 120 s")
        time.sleep(0.2)
    registered = time.time() - t0
    PROCS.append(subprocess.Popen([BIN, "-config", pcfg], env=dict(ENV, AUTOPILOT_HOSTNAME="probe"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    while not os.path.exists(psock):
        time.sleep(0.01)
    # Let the probe's registration reach every handler, then settle.
    while any(len(lines(l)) == 0 for l in logs):
        time.sleep(0.05)
    time.sleep(3)
    c0, w0 = sum(ticks(p.pid) for p in agents), time.time()
    time.sleep(10)
    idle = 100.0 * (sum(ticks(p.pid) for p in agents) - c0) / CLK / (time.time() - w0)
    lat = []
    for k in range(CHANGES):
        before = [len(lines(l)) for l in logs]
        sent = time.time_ns()
        post(psock, "/v3/maintenance/enable" if k % 2 == 0 else "/v3/maintenance/disable")
        deadline = time.time() + 30
        while True:
            now = [lines(l) for l in logs]
            if all(len(x) > b for x, b in zip(now, before)):
                break
            if time.time() > deadline:
                raise SystemExit(f"change {k} reached {sum(len(x) > b for x, b in zip(now, before))} of {N}")
            time.sleep(0.01)
        lat += [(int(x[b]) - sent) / 1e6 for x, b in zip(now, before)]
        time.sleep(1.5)
    print(json.dumps({
        "agents": N, "all_registered_s": round(registered, 1), "idle_cpu_percent_all_agents": round(idle, 2),
        "change_to_every_handler_ms": {"p50": round(pct(lat, 0.5)), "p99": round(pct(lat, 0.99)),
                                       "max": round(max(lat)), "n": len(lat)},
    }))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, cleanup)
    try:
        main()
    finally:
        cleanup()
