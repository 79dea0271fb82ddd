#!/usr/bin/env python3
"""Catalog benchmarks for docs/benchmarks.md (embedded backend):
- change propagation: a registration change in one agent -> the watch handler
  exec'd in another agent, p50/p99 over 200 changes;
- steady-state disk and CPU cost with 50 registered services.
Run via bench/catalog.sh."""
import json, os, signal, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
TMP = tempfile.mkdtemp(prefix="ap-catbench-")
CAT = "local://" + os.path.join(TMP, "catalog")
CLK = os.sysconf("SC_CLK_TCK")
ENV = dict(os.environ, AUTOPILOT_CATALOG=CAT)


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def post(sock, path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    while s.recv(4096):
        pass
    s.close()


def wait_sock(sock):
    for _ in range(500):
        if os.path.exists(sock):
            return
        time.sleep(0.01)
    raise SystemExit(f"agent socket {sock} never appeared")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def propagation(n=200):
    log = os.path.join(TMP, "handler.log")
    open(log, "w").close()
    wsock, asock = os.path.join(TMP, "w.sock"), os.path.join(TMP, "a.sock")
    wcfg = write("w.json5", f"""{{ control: {{ socket: "{wsock}" }},
      watches: [{{ name: "svc", interval: 60 }}],
      jobs: [{{ name: "app", exec: "sleep 3600" }},
             {{ name: "h", when: {{ source: "watch.svc", each: "changed" }}, exec: ["sh", "-c", "date +%s%N >> {log}"] }}] }}""")
    acfg = write("a.json5", f"""{{ control: {{ socket: "{asock}" }},
      jobs: [{{ name: "svc", port: 8000, interfaces: "static:127.0.0.1", initial_status: "passing" }}] }}""")
    w = subprocess.Popen([BIN, "-config", wcfg], env=ENV, stdout=subprocess.DEVNULL)
    a = subprocess.Popen([BIN, "-config", acfg], env=dict(ENV, AUTOPILOT_HOSTNAME="a"), stdout=subprocess.DEVNULL)
    wait_sock(wsock)
    wait_sock(asock)

    def lines():
        with open(log) as f:
            return f.read().split()

    deadline = time.time() + 10
    while len(lines()) < 1 and time.time() < deadline:
        time.sleep(0.01)
    out = []
    for i in range(n):
        before = len(lines())
        t0 = time.time_ns()
        post(asock, "/v3/maintenance/enable" if i % 2 == 0 else "/v3/maintenance/disable")
        deadline = time.time() + 10
        while len(lines()) <= before:
            if time.time() > deadline:
                raise SystemExit(f"change {i} never reached the handler")
            time.sleep(0.0005)
        out.append((int(lines()[before]) - t0) / 1e6)
        time.sleep(0.02)
    for p in (a, w):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    return out


def steady(seconds=60):
    sock = os.path.join(TMP, "s.sock")
    jobs = ",".join(
        f'{{ name: "svc{i}", port: {9000 + i}, interfaces: "static:127.0.0.1", initial_status: "passing" }}' for i in range(50)
    )
    cfg = write("s.json5", f'{{ control: {{ socket: "{sock}" }}, jobs: [{jobs}] }}')
    p = subprocess.Popen([BIN, "-config", cfg], env=dict(ENV, AUTOPILOT_HOSTNAME="s"), stdout=subprocess.DEVNULL)
    wait_sock(sock)
    time.sleep(5)

    def sample():
        st = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        io = dict(l.split(": ") for l in open(f"/proc/{p.pid}/io").read().splitlines())
        return int(st[11]) + int(st[12]), int(io["write_bytes"]), int(io["syscw"])

    c0, w0, s0 = sample()
    time.sleep(seconds)
    c1, w1, s1 = sample()
    catdir = os.path.join(TMP, "catalog")
    size = sum(os.path.getsize(os.path.join(catdir, f)) for f in os.listdir(catdir))
    rss = [l for l in open(f"/proc/{p.pid}/status").read().splitlines() if l.startswith("VmRSS")][0].split(":")[1].strip()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return {
        "agent_cpu_percent": round(100.0 * (c1 - c0) / CLK / seconds, 3),
        "disk_write_bytes_per_s": round((w1 - w0) / seconds),
        "write_syscalls_per_s": round((s1 - s0) / seconds, 2),
        "catalog_files_bytes": size,
        "agent_rss": rss,
    }


def main():
    lat = propagation()
    res = {
        "propagation_ms": {"p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2), "max": round(max(lat), 2), "n": len(lat)},
        "steady_50_services_60s": steady(),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
