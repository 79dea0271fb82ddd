#!/usr/bin/env python3
"""Change -> handler latency through the Consul backend: `autopilot consul-api` over an embedded
catalog; a watcher agent with `catalog: consul://...` has a `watches` entry on `svc` and a
`changed` handler; another agent on the same server flips its `svc` instance in and out of
maintenance; each sample is the time from the flip request to the handler having run.
Run via bench/consul-latency.sh."""
import os, signal, socket, subprocess, sys, tempfile, time, urllib.request

from benchlib import free_port

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 100
TMP = tempfile.mkdtemp(prefix="ap-consulbench-")


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
    for _ in range(1000):
        if os.path.exists(sock):
            return
        time.sleep(0.01)
    raise SystemExit(f"agent socket {sock} never appeared")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main():
    addr = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([BIN, "consul-api", "--listen", addr, "--catalog", "local://" + os.path.join(TMP, "server")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [server]
    try:
        for _ in range(300):
            try:
                req = urllib.request.Request(f"http://{addr}/v1/status/leader")
                if urllib.request.urlopen(req, timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("consul-api did not come up")
        url = f"consul://{addr}/bench"
        env = dict(os.environ, AUTOPILOT_CATALOG=url, AUTOPILOT_STATE_DIR=os.path.join(TMP, "state"))
        log = write("handler.log", "")
        wsock, asock = os.path.join(TMP, "w.sock"), os.path.join(TMP, "a.sock")
        wcfg = write("w.json5", f"""{{ control: {{ socket: "{wsock}" }},
          watches: [{{ name: "svc", interval: 60 }}],
          jobs: [{{ name: "app", exec: "sleep 3600" }},
                 {{ name: "h", when: {{ source: "watch.svc", each: "changed" }}, exec: ["sh", "-c", "date +%s%N >> {log}"] }}] }}""")
        acfg = write("a.json5", f"""{{ control: {{ socket: "{asock}" }},
          jobs: [{{ name: "svc", port: 8000, interfaces: "static:127.0.0.1", initial_status: "passing" }}] }}""")
        procs.append(subprocess.Popen([BIN, "-config", wcfg], env=dict(env, AUTOPILOT_HOSTNAME="w"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([BIN, "-config", acfg], env=dict(env, AUTOPILOT_HOSTNAME="a"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_sock(wsock)
        wait_sock(asock)

        def lines():
            with open(log) as f:
                return f.read().split()

        deadline = time.time() + 20
        while len(lines()) < 1 and time.time() < deadline:
            time.sleep(0.01)
        out = []
        for i in range(N):
            before = len(lines())
            t0 = time.time_ns()
            post(asock, "/v3/maintenance/enable" if i % 2 == 0 else "/v3/maintenance/disable")
            deadline = time.time() + 20
            while len(lines()) <= before:
                if time.time() > deadline:
                    raise SystemExit(f"change {i} never reached the handler")
                time.sleep(0.0005)
            out.append((int(lines()[before]) - t0) / 1e6)
            time.sleep(0.05)
        print(f"config: binary {BIN}; consul-api over an embedded catalog; 1 watcher agent, 1 flipping agent; "
              f"{N} maintenance flips; blocking queries wait=30s")
        print(f"change -> handler via consul://: p50 {pct(out, 0.5):.1f} ms, p99 {pct(out, 0.99):.1f} ms, "
              f"max {max(out):.1f} ms over {len(out)} changes")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
