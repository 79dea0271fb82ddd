#!/usr/bin/env python3
"""Election benchmarks for docs/benchmarks.md, on etcd with election TTL 5 s:
- failover: kill -9 of the leader's agent (and its job) -> the new leader's
  `elected` handler running, p50/p99 over 20 trials;
- graceful handover: SIGTERM to the leader's agent -> the new leader's
  `elected` handler running, over 10 trials.
Run via bench/election.sh."""
import json, os, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import start_etcd  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
TMP = tempfile.mkdtemp(prefix="ap-elect-")
TRIALS = int(os.environ.get("TRIALS", "20"))




def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class Node:
    def __init__(self, i, url):
        self.i, self.url = i, url
        self.dir = os.path.join(TMP, f"n{i}")
        os.makedirs(self.dir, exist_ok=True)
        self.events = os.path.join(self.dir, "elected")
        self.cfg = os.path.join(self.dir, "c.json5")
        with open(self.cfg, "w") as f:
            f.write(f"""{{ control: {{ socket: "{self.dir}/s.sock" }}, jobs: [
  {{ name: "db", exec: ["sh", "-c", "exec sleep 3600", "ap-bench-n{i}"], port: {7300 + i}, interfaces: "static:127.0.0.1",
     health: {{ exec: "true", interval: "200ms", ttl: 5 }}, election: {{ name: "bench", ttl: "5s" }} }},
  {{ name: "on-elected", when: {{ source: "db", each: "elected" }}, exec: ["sh", "-c", "date +%s%N >> {self.events}"] }} ] }}""")
        self.proc = None

    def start(self):
        env = dict(os.environ, AUTOPILOT_CATALOG=self.url, AUTOPILOT_HOSTNAME=f"n{self.i}",
                   AUTOPILOT_STATE_DIR=os.path.join(self.dir, "state"))
        self.proc = subprocess.Popen([BIN, "-config", self.cfg], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def elected(self):
        try:
            return [int(x) for x in open(self.events).read().split()]
        except FileNotFoundError:
            return []


def leader(url):
    out = subprocess.run([BIN, "leader", "bench", "--json", "--catalog", url], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)["id"]


def wait(pred, limit=30):
    end = time.time() + limit
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit("timed out")


def main():
    etcd, cport = start_etcd(os.path.join(TMP, "etcd"))
    url = f"etcd://127.0.0.1:{cport}/bench"
    nodes = []
    try:
        nodes = [Node(i, url) for i in (1, 2, 3)]
        for n in nodes:
            n.start()
        results = {}
        for kind, sig, trials in (("kill9", signal.SIGKILL, TRIALS), ("graceful", signal.SIGTERM, max(10, TRIALS // 2))):
            lat = []
            for _ in range(trials):
                lid = wait(lambda: leader(url))
                victim = nodes[int(lid.removeprefix("db-n")) - 1]
                others = [n for n in nodes if n is not victim]
                before = {n.i: len(n.elected()) for n in others}
                time.sleep(0.5)
                t0 = time.time_ns()
                if sig == signal.SIGKILL:
                    # The agent and its job (in its own process group) die together.
                    victim.proc.send_signal(signal.SIGKILL)
                    subprocess.run(["pkill", "-9", "-f", f"ap-bench-n{victim.i}"], check=False)
                else:
                    victim.proc.send_signal(signal.SIGTERM)
                new = wait(lambda: next(((n, n.elected()[before[n.i]]) for n in others if len(n.elected()) > before[n.i]), None))
                lat.append((new[1] - t0) / 1e6)
                victim.proc.wait(timeout=30)
                victim.start()
                time.sleep(1)
            results[kind] = {"p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                             "min_ms": round(min(lat), 1), "max_ms": round(max(lat), 1), "n": len(lat)}
        rss = {}
        for n in nodes:
            st = open(f"/proc/{n.proc.pid}/status").read()
            rss[f"n{n.i}"] = [l.split(":")[1].strip() for l in st.splitlines() if l.startswith("VmRSS")][0]
        results["agent_rss"] = rss
        print(json.dumps({"election_ttl_s": 5, **results}, indent=2))
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
                n.proc.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", "ap-bench-n"], check=False)
        etcd.send_signal(signal.SIGTERM)
        etcd.wait(timeout=30)


if __name__ == "__main__":
    main()
