#!/usr/bin/env python3
"""Footprint benchmarks for docs/benchmarks.md (issue 18): the agent's memory
(VmRSS, RssAnon, RssFile, PSS) after 30 s with the issue's config, the binary's
size, and exec -> main job exec with 5 jobs and telemetry. Run via bench/footprint.sh.

Usage: footprint.py BINARY [--catalog local|etcd|both] [--runs N] [--settle S] [--lat N]
The config used is printed with the figures."""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, start_etcd  # noqa: E402

TMP = tempfile.mkdtemp(prefix="ap-footprint-")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def issue_config(name, main_exec, telemetry_port):
    """The issue's config: 5 jobs, each health-checked every second, one of them
    registered as a service with a port, and a telemetry block (itself registered)."""
    jobs = [
        '{ name: "web", exec: "sleep 600", port: %d, interfaces: ["static:127.0.0.1"],'
        ' health: { exec: "true", interval: 1, ttl: 5 } }' % free_port()
    ]
    for i in range(1, 5):
        jobs.append('{ name: "j%d", exec: "sleep 600", health: { exec: "true", interval: 1, ttl: 5 } }' % i)
    if main_exec is not None:
        # The measured job comes first; it is not health-checked (it exits at once).
        jobs.insert(0, '{ name: "main", exec: %s, logging: { raw: true } }' % json.dumps(main_exec))
        jobs.pop()  # still 5 jobs in all
    sock = os.path.join(TMP, name + ".sock")
    text = (
        '{ control: { socket: "%s" },\n  jobs: [\n    ' % sock
        + ",\n    ".join(jobs)
        + '\n  ],\n  telemetry: { port: %d, interfaces: ["static:127.0.0.1"],'
        ' metrics: [{ name: "m", type: "counter", help: "m" }] } }\n' % telemetry_port
    )
    return write(name + ".json5", text), text


def mem(pid):
    st = open(f"/proc/{pid}/status").read()
    kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(\w+):\s+(\d+ kB)", st, re.M)}
    roll = open(f"/proc/{pid}/smaps_rollup").read()
    rk = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", roll, re.M)}
    # Resident pages by mapping: the binary's own text/data, shared libraries, anonymous.
    by = {}
    cur = None
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            cur = parts[5] if len(parts) > 5 else "[anon]"
            cur = os.path.basename(cur) if cur.startswith("/") else cur
        elif line.startswith("Rss:"):
            by[cur] = by.get(cur, 0) + int(line.split()[1])
    top = dict(sorted(by.items(), key=lambda kv: -kv[1])[:6])
    return {
        "VmRSS_kB": kb["VmRSS"], "VmHWM_kB": kb["VmHWM"], "RssAnon_kB": kb["RssAnon"],
        "RssFile_kB": kb["RssFile"], "Pss_kB": rk.get("Pss", 0),
        "Private_kB": rk.get("Private_Clean", 0) + rk.get("Private_Dirty", 0),
        "rss_by_mapping_kB": top,
    }


def agent_env(catalog):
    env = dict(os.environ)
    env["AUTOPILOT_CATALOG"] = catalog
    env["AUTOPILOT_STATE_DIR"] = os.path.join(TMP, "state")
    env.pop("AUTOPILOT_SOCKET", None)
    return env


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def rss_runs(binary, catalog, runs, settle):
    out = []
    text = None
    for r in range(runs):
        cfg, text = issue_config(f"rss{r}", None, free_port())
        p = subprocess.Popen([binary, "-config", cfg], env=agent_env(catalog),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(settle)
            if p.poll() is not None:
                raise SystemExit(f"agent exited early with {p.returncode}")
            out.append(mem(p.pid))
        finally:
            stop(p)
    return out, text


def first_line_ns(p):
    for line in p.stdout:
        line = line.strip()
        if line.isdigit():
            return int(line)
    raise SystemExit("main job printed nothing")


def exec_latency(binary, catalog, n):
    out = []
    text = None
    for i in range(n):
        cfg, text = issue_config(f"lat{i % 2}", ["date", "+%s%N"], free_port())
        t0 = time.time_ns()
        p = subprocess.Popen([binary, "-config", cfg], env=agent_env(catalog), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            out.append((first_line_ns(p) - t0) / 1e6)
        finally:
            stop(p)
    return out, text


def bare_exec(n):
    out = []
    for _ in range(n):
        t0 = time.time_ns()
        r = subprocess.run(["date", "+%s%N"], capture_output=True, text=True, timeout=10)
        out.append((int(r.stdout.strip()) - t0) / 1e6)
    return out


def summary(xs):
    return {"p50": round(pct(xs, 0.5), 2), "p99": round(pct(xs, 0.99), 2), "max": round(max(xs), 2), "n": len(xs)}


def run_for(binary, kind, url, args):
    rss, cfg_text = rss_runs(binary, url, args.runs, args.settle)
    lat, lat_cfg = exec_latency(binary, url, args.lat)
    keys = ["VmRSS_kB", "RssAnon_kB", "RssFile_kB", "Pss_kB", "Private_kB", "VmHWM_kB"]
    return {
        "catalog": kind,
        "rss_config": cfg_text,
        "memory_after_%ds" % args.settle: {k: [r[k] for r in rss] for k in keys},
        "rss_by_mapping_kB_first_run": rss[0]["rss_by_mapping_kB"],
        "exec_to_main_ms": summary(lat),
        "exec_config": lat_cfg,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--catalog", default="both", choices=["local", "etcd", "both"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=int, default=30)
    ap.add_argument("--lat", type=int, default=50)
    args = ap.parse_args()
    res = {"binary_bytes": os.path.getsize(args.binary),
           "bare_exec_date_ms": summary(bare_exec(args.lat))}
    if args.catalog in ("local", "both"):
        res["local"] = run_for(args.binary, "local", "local://" + os.path.join(TMP, "catalog"), args)
    if args.catalog in ("etcd", "both"):
        etcd, port = start_etcd(os.path.join(TMP, "etcd"))
        try:
            res["etcd"] = run_for(args.binary, "etcd", f"etcd://127.0.0.1:{port}/bench", args)
        finally:
            etcd.send_signal(signal.SIGTERM)
            etcd.wait(timeout=30)
    for k in ("local", "etcd"):
        if k in res:
            print(f"--- config ({k}, memory runs) ---\n{res[k].pop('rss_config')}", file=sys.stderr)
            print(f"--- config ({k}, exec runs) ---\n{res[k].pop('exec_config')}", file=sys.stderr)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
