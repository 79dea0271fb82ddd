"""Backend removal in the nginx blueprint (docs/benchmarks.md).

Three backends and nginx from examples/nginx on the embedded catalog. Each trial kills one
backend's server with SIGKILL and measures the time until the rendered upstream no longer
lists it, and until nginx has started its new workers (the reload). The backend's agent
restarts it; the next trial waits until it is back in the upstream.

Usage: python3 bench/nginx.py AUTOPILOT_BIN [--trials N]
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import free_port  # noqa: E402
from failover import pct, rss_mb, spawn, kill_group, wait_until, PROCS  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def children(pid):
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--trials", type=int, default=20)
    a = ap.parse_args()
    bin_path = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="autopilot-nginx-bench-")
    base = dict(os.environ)
    base["PATH"] = os.path.dirname(bin_path) + ":" + base.get("PATH", "")
    base.update({"AUTOPILOT_CATALOG": f"local://{work}/catalog", "AUTOPILOT_INTERFACE": "static:127.0.0.1",
                 "TMPDIR": work, "AUTOPILOT_STATE_DIR": f"{work}/state"})
    cwd = os.path.join(ROOT, "examples", "nginx")
    backends = {}
    try:
        for i in range(3):
            port = free_port()
            env = dict(base, BACKEND_PORT=str(port), AUTOPILOT_HOSTNAME=f"b{i}")
            backends[port] = spawn([bin_path, "-config", "backend.json5"], f"{work}/b{i}.log", cwd=cwd, env=env)
        nport = free_port()
        state = f"{work}/nginx"
        env = dict(base, NGINX_STATE=state, NGINX_PORT=str(nport), NGINX_ADDR="127.0.0.1", AUTOPILOT_HOSTNAME="lb")
        lb = spawn([bin_path, "-config", "nginx.json5"], f"{work}/nginx.log", cwd=cwd, env=env)
        conf = f"{state}/nginx.conf"

        def listed(port):
            try:
                return f"server 127.0.0.1:{port} " in open(conf).read()
            except OSError:
                return False

        if not wait_until(lambda: all(listed(p) for p in backends) and os.path.exists(f"{state}/nginx.pid"), 30):
            raise SystemExit(f"nginx blueprint did not start; logs in {work}")
        render, reload = [], []
        for t in range(a.trials):
            port = random.choice(list(backends))
            if not wait_until(lambda: all(listed(p) for p in backends), 30):
                raise SystemExit("a backend did not come back")
            time.sleep(1.5)  # let the reload of its return finish
            sock = f"{work}/autopilot-backend-{port}.sock"
            st = subprocess.run([bin_path, "status", "--json"], capture_output=True, text=True,
                                env=dict(os.environ, AUTOPILOT_SOCKET=sock))
            pid = next(j["pid"] for j in json.loads(st.stdout)["jobs"] if j["name"] == "backend")
            master = int(open(f"{state}/nginx.pid").read())
            workers = children(master)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while listed(port):
                time.sleep(0.0005)
            t1 = time.monotonic()
            wait_until(lambda: children(master) - workers, 10, 0.001)
            t2 = time.monotonic()
            render.append(t1 - t0)
            reload.append(t2 - t0)
        rss = rss_mb(lb.pid)
    finally:
        for p in PROCS:
            kill_group(p)
        for p in PROCS:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(p, signal.SIGKILL)
    ms = lambda xs, q: pct(xs, q) * 1000  # noqa: E731
    print(f"backend kill -9 -> upstream re-rendered without it: p50 {ms(render, 50):.1f} ms, "
          f"p99 {ms(render, 99):.1f} ms (n={len(render)})")
    print(f"backend kill -9 -> nginx reloaded (new workers): p50 {ms(reload, 50):.1f} ms, "
          f"p99 {ms(reload, 99):.1f} ms (n={len(reload)}); the health interval is 1000 ms")
    print(f"RSS of nginx's agent: {rss:.1f} MB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
