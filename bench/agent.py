#!/usr/bin/env python3
"""Agent benchmarks for docs/benchmarks.md: RSS, exec-to-main-job latency,
shutdown time, and idle CPU with 10 health checks. Run via bench/agent.sh."""
import json, os, signal, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
TMP = tempfile.mkdtemp(prefix="ap-bench-")
CLK = os.sysconf("SC_CLK_TCK")


def config(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text.replace("@SOCK@", os.path.join(TMP, name + ".sock")))
    return path


def start(cfg, **kw):
    return subprocess.Popen([BIN, "-config", cfg], stdin=subprocess.DEVNULL, **kw)


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def rss():
    cfg = config("rss.json5", """{ control: { socket: "@SOCK@" },
      jobs: [""" + ",".join(
        '{ name: "j%d", exec: "sleep 600", health: { exec: "true", interval: 1, ttl: 5 } }' % i for i in range(5)
    ) + """],
      telemetry: { port: 19390, interfaces: ["static:127.0.0.1"], metrics: [{ name: "m", type: "counter", help: "m" }] } }""")
    p = start(cfg, stdout=subprocess.DEVNULL)
    time.sleep(5)
    status = open(f"/proc/{p.pid}/status").read()
    vals = {l.split(":")[0]: l.split(":")[1].strip() for l in status.splitlines() if l.startswith(("VmRSS", "VmHWM"))}
    stop(p)
    return vals


def exec_latency(n=30):
    out = []
    for i in range(n):
        cfg = config("lat.json5", """{ control: { socket: "@SOCK@" },
          jobs: [{ name: "app", exec: ["date", "+%s%N"], logging: { raw: true } }] }""")
        t0 = time.time_ns()
        r = subprocess.run([BIN, "-config", cfg], capture_output=True, text=True, timeout=30)
        first = [l for l in r.stdout.splitlines() if l.strip().isdigit()]
        out.append((int(first[0]) - t0) / 1e6)
    return out


def shutdown_time(n=30):
    out = []
    for i in range(n):
        cfg = config("stop.json5", """{ control: { socket: "@SOCK@" }, stopTimeout: "10s",
          jobs: [""" + ",".join(
            '{ name: "j%d", exec: ["sh", "-c", "trap \'exit 0\' TERM; while :; do sleep 0.05; done"] }' % j for j in range(5)
        ) + """] }""")
        p = start(cfg, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        out.append((time.monotonic() - t0) * 1000)
    return out


def idle_cpu(seconds=30):
    cfg = config("idle.json5", """{ control: { socket: "@SOCK@" },
      jobs: [{ name: "app", exec: "sleep 600" }, """ + ",".join(
        '{ name: "svc%d", exec: "sleep 600", port: %d, interfaces: "static:127.0.0.1", health: { exec: "true", interval: 1, ttl: 5 } }' % (i, 20000 + i)
        for i in range(10)
    ) + """] }""")
    p = start(cfg, stdout=subprocess.DEVNULL)
    time.sleep(3)

    def ticks():
        f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])

    a0, c0 = ticks()
    time.sleep(seconds)
    a1, c1 = ticks()
    stop(p)
    return 100.0 * (a1 - a0) / CLK / seconds, 100.0 * (c1 - c0) / CLK / seconds


def main():
    r = rss()
    lat = exec_latency()
    sd = shutdown_time()
    agent_cpu, child_cpu = idle_cpu()
    res = {
        "rss_5_jobs_telemetry": r,
        "exec_to_main_job_ms": {"p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2), "n": len(lat)},
        "shutdown_ms": {"p50": round(pct(sd, 0.5), 2), "p99": round(pct(sd, 0.99), 2), "n": len(sd)},
        "idle_cpu_percent_10_checks_1s": {"agent": round(agent_cpu, 3), "checks_reaped_children": round(child_cpu, 3)},
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
