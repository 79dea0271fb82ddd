"""Fleet rollouts (docs/benchmarks.md), with real agents on one etcd.

1. Rollout: N agents (default 100), each running a trivial artifact job (a shell script that
   logs its start and sleeps, health check `true` every second). One version is deployed
   through the units (default 1,10%,50%,100%) at probation P with `deploy --wait`: the time
   from `deploy` to Completed, from `deploy` to the first start of the new version (unit 0),
   and to the first start in each unit.
2. Idle load: etcd's received gRPC messages per second by method, with the fleet idle, once
   before any rollout and once after one completed (agents must not poll: one lease
   keep-alive per agent every TTL/3, plus the watch stream's progress request every 5 s of
   silence that the etcd backend has always sent; no reads).
3. Artifact speed: one more agent whose artifact is a directory of --mb MiB of random data;
   three versions are deployed in turn (each a fresh fetch: only current and previous stay on
   disk), deploy to job start, minus the same with a tiny artifact, is the fetch (file://
   store), sha256 and unpack time. Against `cp` of the stored object and `tar -x` of it
   (page cache warm in every case).

Usage: python3 bench/rollout.py AUTOPILOT_BIN [--instances N] [--probation 2s] [--units U]
       [--mb 256] [--seconds 30] [--ttl 10s] [--skip-fleet] [--skip-speed]
"""
import argparse, hashlib, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import etcd_rates, free_port, start_etcd  # noqa: E402
from failover import PROCS, kill_group, rss_mb, spawn, wait_until  # noqa: E402

RUN_SH = """#!/bin/sh
# A trivial artifact job of bench/rollout.py: log the start, then idle.
echo "start $AUTOPILOT_HOSTNAME {version} $(date +%s.%N)" >> "$BENCH_LOG"
exec sleep 1000000
"""


def parse_secs(s):
    s = s.strip()
    if s.endswith("ms"):
        return float(s[:-2]) / 1000
    if s.endswith("s"):
        return float(s[:-1])
    return float(s)


class Bench:
    def __init__(self, bin_path, work, catalog, store):
        self.bin, self.work, self.catalog, self.store = bin_path, work, catalog, store
        self.log = f"{work}/starts.log"
        open(self.log, "a").close()

    def ap(self, *args, timeout=600, check=True):
        env = dict(os.environ, AUTOPILOT_CATALOG=self.catalog, AUTOPILOT_ARTIFACT_STORE=self.store)
        env.pop("AUTOPILOT_SOCKET", None)
        p = subprocess.run([self.bin, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise SystemExit(f"autopilot {' '.join(args)}: exit {p.returncode}: {p.stdout}{p.stderr}")
        return p

    def push(self, name, path, version):
        self.ap("artifact", "push", name, path, "--version", version)
        rec = json.loads(self.ap("kv", "get", f"_fleet/artifacts/{name}/{version}").stdout)
        return rec

    def members(self, name):
        p = self.ap("catalog", "instances", f"_artifacts.{name}", "--json", check=False)
        if p.returncode != 0:
            return []
        return json.loads(p.stdout)

    def rollout(self, name):
        p = self.ap("kv", "ls", f"_fleet/rollouts/{name}/", "-o", "json", check=False)
        if p.returncode != 0:
            return None
        recs = json.loads(p.stdout)
        return json.loads(recs[max(recs)]) if recs else None

    def starts(self, version):
        """(instance host, time) of every start of `version`."""
        out = []
        for line in open(self.log):
            w = line.split()
            if len(w) == 4 and w[0] == "start" and w[2] == version:
                out.append((w[1], float(w[3])))
        return out

    def agent(self, host, name, script_dir_fn, ttl):
        """Starts one agent whose job `svc` runs `<dest>/current/run.sh` from artifact `name`."""
        d = f"{self.work}/{host}"
        dest = f"{d}/app"
        os.makedirs(f"{dest}/current", exist_ok=True)
        os.chmod(dest, 0o755)
        script_dir_fn(f"{dest}/current")  # what the image ships
        port = free_port()
        cfg = f"{d}/agent.json5"
        with open(cfg, "w") as f:
            f.write(json.dumps({
                "control": {"socket": f"{d}/ctl.sock"},
                "stopTimeout": "5s",
                "jobs": [{
                    "name": "svc", "exec": [f"{dest}/current/run.sh"], "restarts": "unlimited",
                    "port": port, "interfaces": ["static:127.0.0.1"],
                    "artifact": {"name": name, "dest": dest, "store": self.store},
                    "health": {"exec": "true", "interval": 1, "ttl": 5},
                }],
            }))
        env = dict(os.environ, AUTOPILOT_CATALOG=self.catalog, AUTOPILOT_HOSTNAME=host,
                   AUTOPILOT_ETCD_TTL=ttl, AUTOPILOT_STATE_DIR=f"{d}/state", BENCH_LOG=self.log)
        env.pop("AUTOPILOT_SOCKET", None)
        return spawn([self.bin, "-config", cfg], f"{d}/agent.log", env=env)


def write_run(d, version):
    os.makedirs(d, exist_ok=True)
    p = f"{d}/run.sh"
    with open(p, "w") as f:
        f.write(RUN_SH.format(version=version))
    os.chmod(p, 0o755)
    return p


def instance_hash(instance):
    return int.from_bytes(hashlib.sha256(instance.encode()).digest()[:8], "big")


def unit_of(r, instance):
    h = instance_hash(instance)
    for k, b in enumerate(r["bounds"]):
        if b is not None and h <= b:
            return k
    return len(r["bounds"]) - 1


def fleet(b, a, etcd_port):
    n, ttl = a.instances, parse_secs(a.ttl)
    cfg = {"instances": n, "units": a.units, "probation": a.probation, "lease_ttl_s": ttl,
           "health": "exec true every 1s", "job": "sh script -> sleep", "store": "file://",
           "cores": os.cpu_count()}
    for i in range(n):
        b.agent(f"i{i:03d}", "bench", lambda d: write_run(d, "image"), a.ttl)
    t = time.monotonic()
    ok = wait_until(lambda: sum(m["status"] == "passing" for m in b.members("bench")) == n, 300, 0.5)
    if not ok:
        raise SystemExit(f"only {len(b.members('bench'))} of {n} members came up; logs in {b.work}")
    up = time.monotonic() - t
    time.sleep(5)
    idle_before = etcd_rates(etcd_port, a.seconds)

    rec = b.push("bench", write_run(f"{b.work}/rel-1.0.0", "1.0.0"), "1.0.0")
    t0 = time.time()
    p = b.ap("deploy", "bench", "1.0.0", "--units", a.units, "--probation", a.probation, "--wait",
             check=False)
    total = time.time() - t0
    r = b.rollout("bench")
    if p.returncode != 0 or r is None or r["state"] != "completed":
        raise SystemExit(f"rollout did not complete (exit {p.returncode}): {p.stdout}{p.stderr}\n{r}")
    if r["target"]["sha256"] != rec["sha256"]:
        raise SystemExit(f"the record targets another sha: {r}")
    starts = b.starts("1.0.0")
    first_by_unit = {}
    for host, at in starts:
        k = unit_of(r, f"svc-{host}")
        first_by_unit[k] = min(first_by_unit.get(k, at), at)
    rss = statistics.median(rss_mb(q.pid) for q in PROCS[:n])
    time.sleep(5)
    idle_after = etcd_rates(etcd_port, a.seconds)
    expected = round(n / (ttl / 3), 3)
    print(json.dumps({
        "config": cfg,
        "fleet_up_s": round(up, 2),
        "deploy_to_completed_s": round(total, 2),
        "deploy_to_first_unit_start_s": round(min(first_by_unit.values()) - t0, 3),
        "first_start_by_unit_s": {k: round(v - t0, 2) for k, v in sorted(first_by_unit.items())},
        "unit_sizes": r["unit_sizes"],
        "instances_started_on_target": len({h for h, _ in starts}),
        "agent_rss_mb_median": round(rss, 1),
        "idle_etcd_requests_per_s_before_any_rollout": idle_before,
        "idle_etcd_requests_per_s_after_a_rollout": idle_after,
        # Per agent: one lease keep-alive every TTL/3, and one progress request on its single
        # watch stream every 5 s of silence (the etcd backend's stall detection, WATCH_IDLE).
        "expected_per_s": {"LeaseKeepAlive": expected, "Watch": round(n / 5, 3)},
        "idle_seconds": a.seconds,
    }, indent=2), flush=True)


def timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def speed(b, a):
    mib = a.mb
    one = b.agent("speed", "blob", lambda d: write_run(d, "image"), a.ttl)
    if not wait_until(lambda: len(b.members("blob")) == 1, 60, 0.2):
        raise SystemExit(f"the speed agent did not come up; logs in {b.work}")

    def release(version, data_mib):
        d = f"{b.work}/blob-{version}"
        write_run(d, version)
        for i in range(data_mib // 4):
            with open(f"{d}/data{i:03d}.bin", "wb") as f:
                f.write(os.urandom(4 << 20))
        return b.push("blob", d, version)

    def deploy_to_start(version):
        t0 = time.time()
        b.ap("deploy", "blob", version, "--units", "100%", "--probation", "3s", "--wait")
        st = [at for _, at in b.starts(version)]
        if not st:
            raise SystemExit(f"blob {version} never started")
        return min(st) - t0

    tiny, big, recs = [], [], []
    for k in range(3):
        v = f"tiny{k}"
        release(v, 0)
        tiny.append(deploy_to_start(v))
    for k in range(3):
        v = f"big{k}"
        recs.append(release(v, mib))
        big.append(deploy_to_start(v))
    size = recs[0]["size"]
    obj = f"{b.store[len('file://'):]}/artifacts/{recs[0]['sha256']}.snap"
    cp, tar, sha = [], [], []
    for k in range(3):
        dst = f"{b.work}/cp{k}"
        cp.append(timed(["cp", obj, dst]))
        os.unlink(dst)
        d = f"{b.work}/tar{k}"
        os.makedirs(d)
        tar.append(timed(["tar", "-xf", obj, "-C", d]))
        shutil.rmtree(d)
        sha.append(timed(["sha256sum", obj]))
    install = statistics.median(big) - statistics.median(tiny)
    mbps = lambda s: round(size / (1 << 20) / s, 1) if s > 0 else None  # noqa: E731
    kill_group(one)
    print(json.dumps({
        "config": {"artifact_mib": round(size / (1 << 20), 1), "files": mib // 4 + 1,
                   "store": "file:// (same disk)", "trials": 3, "page_cache": "warm"},
        "deploy_to_start_tiny_s": [round(x, 3) for x in tiny],
        "deploy_to_start_big_s": [round(x, 3) for x in big],
        "fetch_verify_unpack_s": round(install, 3),
        "fetch_verify_unpack_mib_per_s": mbps(install),
        "cp_mib_per_s": mbps(statistics.median(cp)),
        "tar_x_mib_per_s": mbps(statistics.median(tar)),
        "sha256sum_mib_per_s": mbps(statistics.median(sha)),
        # What a script would do by hand: copy, check, unpack (sum of the medians).
        "cp_sha256sum_tar_x_mib_per_s": mbps(statistics.median(cp) + statistics.median(sha) + statistics.median(tar)),
    }, indent=2), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--probation", default="2s")
    ap.add_argument("--units", default="1,10%,50%,100%")
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "30")))
    ap.add_argument("--ttl", default="10s")
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ap-rollout-")
    etcd, cport = start_etcd(os.path.join(work, "etcd"))
    store = f"file://{work}/store"
    os.makedirs(f"{work}/store")
    b = Bench(os.path.abspath(a.bin), work, f"etcd://127.0.0.1:{cport}/bench", store)
    try:
        if not a.skip_fleet:
            fleet(b, a, cport)
        if not a.skip_speed:
            speed(b, a)
    finally:
        for p in PROCS:
            kill_group(p)
        for p in PROCS:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_group(p, signal.SIGKILL)
        etcd.send_signal(signal.SIGTERM)
        etcd.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
