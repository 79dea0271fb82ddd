#!/usr/bin/env python3
"""DNS benchmark for docs/benchmarks.md: etcd on loopback, AGENTS agents each
registering `web` (agent 0's tagged `primary`) and `api` instances on their own
loopback address, agent 0 also running a job with an election and a `dns`
block; the standalone `autopilot dns` on the same catalog. dnsperf sends a mix
of queries (A, SRV, tag, leader, NXDOMAIN) at QPS queries/s for SECS seconds
over UDP to each server in turn; its per-query log (-v) gives p50/p99/max.
Run via bench/dns.sh."""
import os, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, start_etcd  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
AGENTS = int(os.environ.get("AGENTS", "20"))
QPS = int(os.environ.get("QPS", "10000"))
SECS = int(os.environ.get("SECS", "10"))
# Seconds the fleet settles after every answer is there (agents start their
# checks, the election settles), and of an unrecorded warm-up run per server.
SETTLE = int(os.environ.get("SETTLE", "10"))
WARMUP = int(os.environ.get("WARMUP", "2"))
TMP = tempfile.mkdtemp(prefix="ap-dns-")
QUERIES = [
    ("web.service.autopilot.", "A"),
    ("_web._tcp.service.autopilot.", "SRV"),
    ("primary.web.service.autopilot.", "A"),
    ("api.service.autopilot.", "A"),
    ("bench.leader.autopilot.", "A"),
    ("nope.service.autopilot.", "A"),
]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def dig_short(port, name, qtype):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+short", "+time=1", "+tries=1"],
                         capture_output=True, text=True)
    return [l for l in out.stdout.splitlines() if l and not l.startswith(";")]


def wait(pred, limit=60):
    end = time.time() + limit
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def agent(i, url, dns_port):
    d = os.path.join(TMP, f"n{i}")
    os.makedirs(d, exist_ok=True)
    ip = f"127.0.1.{i + 1}"
    tags = '["primary"]' if i == 0 else "[]"
    extra = ""
    if i == 0:
        extra = f"""dns: {{ listen: "127.0.0.1:{dns_port}" }},"""
    elect = ""
    if i == 0:
        elect = f"""{{ name: "db", exec: "sleep 3600", port: 5432, interfaces: "static:{ip}",
     health: {{ exec: "true", interval: "5s", ttl: 30 }}, election: {{ name: "bench", ttl: "5s" }} }},"""
    cfg = os.path.join(d, "c.json5")
    with open(cfg, "w") as f:
        f.write(f"""{{ control: {{ socket: "{d}/s.sock" }}, {extra} jobs: [
  {{ name: "web", exec: "sleep 3600", port: 8080, interfaces: "static:{ip}", tags: {tags},
     health: {{ exec: "true", interval: "5s", ttl: 30 }} }},
  {{ name: "api", exec: "sleep 3600", port: 9090, interfaces: "static:{ip}",
     health: {{ exec: "true", interval: "5s", ttl: 30 }} }},
  {elect} ] }}""")
    env = dict(os.environ, AUTOPILOT_CATALOG=url, AUTOPILOT_HOSTNAME=f"n{i}",
               AUTOPILOT_STATE_DIR=os.path.join(d, "state"))
    return subprocess.Popen([BIN, "-config", cfg], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def cpu_seconds(pid):
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_dnsperf(port, secs=None, rt=False):
    secs = secs or SECS
    qfile = os.path.join(TMP, "queries.txt")
    with open(qfile, "w") as f:
        for name, t in QUERIES:
            f.write(f"{name} {t}\n")
    cmd = (["chrt", "-f", "50"] if rt else []) + ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(secs),
           "-Q", str(QPS), "-q", "200", "-t", "2", "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lat, codes, sent, lost = [], {}, None, None
    for line in out.stdout.splitlines():
        if line.startswith("> "):
            parts = line.split()
            try:
                lat.append(float(parts[-1]))
            except ValueError:  # a query that timed out: no latency
                codes["timeout"] = codes.get("timeout", 0) + 1
                continue
            codes[parts[1]] = codes.get(parts[1], 0) + 1
        elif "Queries sent:" in line:
            sent = int(line.split()[-1])
        elif "Queries lost:" in line:
            lost = int(line.split()[2])
    if not lat:
        raise SystemExit("dnsperf got no answers:\n" + out.stdout[-2000:] + out.stderr[-2000:])
    return {
        "command": " ".join(cmd),
        "sent": sent, "answered": len(lat), "lost": lost,
        "qps": round(len(lat) / secs),
        "p50_us": round(pct(lat, 0.50) * 1e6), "p90_us": round(pct(lat, 0.90) * 1e6),
        "p99_us": round(pct(lat, 0.99) * 1e6), "p999_us": round(pct(lat, 0.999) * 1e6),
        "max_us": round(max(lat) * 1e6), "codes": codes,
    }


def main():
    procs = []
    try:
        etcd, cport = start_etcd(os.path.join(TMP, "etcd"))
        procs.append(etcd)
        url = f"etcd://127.0.0.1:{cport}/bench"
        agent_port, dns_port = free_port(), free_port()
        for i in range(AGENTS):
            procs.append(agent(i, url, agent_port))
        dns = subprocess.Popen([BIN, "dns", "--listen", f"127.0.0.1:{dns_port}", "--catalog", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(dns)
        for port in (dns_port, agent_port):
            if not wait(lambda: len(dig_short(port, "web.service.autopilot.", "A")) == AGENTS
                        and dig_short(port, "bench.leader.autopilot.", "A")):
                raise SystemExit(f"port {port}: the answers never showed {AGENTS} instances and a leader")
        time.sleep(SETTLE)
        print(f"config: {AGENTS} agents, {2 * AGENTS} instances (web, api) + 1 leader, "
              f"{QPS} q/s offered for {SECS} s (after {SETTLE} s settling and a {WARMUP} s warm-up run) over UDP on loopback, dnsperf -q 200, "
              f"query mix: {', '.join(n + ' ' + t for n, t in QUERIES)}; "
              f"{os.cpu_count()} CPUs shared with etcd, the agents and dnsperf; binary {BIN}")
        for label, port, pid in (("autopilot dns", dns_port, dns.pid), ("agent dns block", agent_port, procs[1].pid)):
            run_dnsperf(port, WARMUP)
            for rt in (False, True):
                # rt: the server's threads and dnsperf under SCHED_FIFO 50, so other
                # tenants of the machine's cores cannot preempt them (etcd and the
                # other agents stay at normal priority).
                subprocess.run(["chrt", "-a", "-f" if rt else "-o", "-p", "50" if rt else "0", str(pid)],
                               check=True, stdout=subprocess.DEVNULL)
                before = cpu_seconds(pid)
                r = run_dnsperf(port, rt=rt)
                cpu_us = (cpu_seconds(pid) - before) / max(1, r["answered"]) * 1e6
                sched = "SCHED_FIFO" if rt else "default scheduling"
                print(f"{label}, {sched}: answered {r['answered']} of {r['sent']} sent (lost {r['lost']}), "
                      f"{r['qps']} q/s, p50 {r['p50_us']} us, p90 {r['p90_us']} us, p99 {r['p99_us']} us, "
                      f"p99.9 {r['p999_us']} us, max {r['max_us']} us, "
                      f"server CPU {cpu_us:.0f} us/query, rcodes {r['codes']}")
            subprocess.run(["chrt", "-a", "-o", "-p", "0", str(pid)], check=True, stdout=subprocess.DEVNULL)
        print("dnsperf: " + r["command"].replace(str(agent_port), "PORT").replace(TMP + "/", ""))
        print(f"load average after the runs: {os.getloadavg()}")
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM) if p is not procs[0] else p.terminate()
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
