#!/usr/bin/env python3
"""etcd requests per second from one idle agent (20 jobs with health checks,
5 watches), read from etcd's own gRPC counters. Run via bench/etcd.sh."""
import json, os, re, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import start_etcd  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
TMP = tempfile.mkdtemp(prefix="ap-etcdidle-")
SECONDS = int(os.environ.get("BENCH_SECONDS", "60"))




def counters(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'grpc_server_msg_received_total\{([^}]*)\} (\S+)', line)
        if m:
            method = re.search(r'grpc_method="([^"]+)"', m.group(1)).group(1)
            out[method] = out.get(method, 0) + float(m.group(2))
    return out


def main():
    etcd, cport = start_etcd(os.path.join(TMP, "data"))
    try:
        jobs = ",".join(
            f'{{ name: "svc{i}", exec: "sleep 3600", port: {9000 + i}, interfaces: "static:127.0.0.1", '
            f'health: {{ exec: "true", interval: 1, ttl: 5 }} }}' for i in range(20))
        watches = ",".join(f'{{ name: "svc{i}", interval: 30 }}' for i in range(5))
        cfg = os.path.join(TMP, "idle.json5")
        with open(cfg, "w") as f:
            f.write(f'{{ control: {{ socket: "{TMP}/s.sock" }}, jobs: [{jobs}], watches: [{watches}] }}')
        env = dict(os.environ, AUTOPILOT_CATALOG=f"etcd://127.0.0.1:{cport}/bench", AUTOPILOT_ETCD_TTL="10s")
        agent = subprocess.Popen([BIN, "-config", cfg], env=env, stdout=subprocess.DEVNULL)
        time.sleep(10)
        before = counters(cport)
        time.sleep(SECONDS)
        after = counters(cport)
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        rates = {m: round((after.get(m, 0) - before.get(m, 0)) / SECONDS, 3) for m in after}
        rates = {m: r for m, r in rates.items() if r > 0}
        print(json.dumps({"seconds": SECONDS, "lease_ttl_s": 10, "jobs": 20, "watches": 5,
                          "requests_per_s_by_method": rates, "total_per_s": round(sum(rates.values()), 3)}, indent=2))
    finally:
        etcd.send_signal(signal.SIGTERM)
        etcd.wait(timeout=30)


if __name__ == "__main__":
    main()
