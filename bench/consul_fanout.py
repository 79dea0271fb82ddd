#!/usr/bin/env python3
"""Consul API blocking-query fan-out for docs/benchmarks.md: `autopilot consul-api` over an
embedded catalog in a temp dir; service X registered through /v1/agent/service/register with a
TTL check, passed; WATCHERS concurrent readers of /v1/health/service/X?index=I&wait=60s (one
connection each), all blocked; then one change (the check fails) and the time from the change
request until each watcher has its answer: p50/p99/max over ROUNDS rounds. Run via
bench/consul-fanout.sh."""
import asyncio, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/autopilot"
WATCHERS = int(os.environ.get("WATCHERS", "500"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
TMP = tempfile.mkdtemp(prefix="ap-consul-fanout-")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def req(port, method, path, body=b""):
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body if method != "GET" else None,
                               method=method)
    with urllib.request.urlopen(r, timeout=10) as resp:
        return resp.headers.get("X-Consul-Index"), resp.read()


async def watcher(port, index, sent, out):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/health/service/X?index={index}&wait=60s HTTP/1.1\r\n"
                 f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    sent.append(1)
    head = await reader.readuntil(b"\r\n\r\n")
    out.append(time.monotonic())
    length = 0
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    await reader.readexactly(length)
    writer.close()


async def round_(port, status):
    index, _ = req(port, "GET", "/v1/health/service/X")
    sent, out = [], []
    tasks = [asyncio.create_task(watcher(port, index, sent, out)) for _ in range(WATCHERS)]
    while len(sent) < WATCHERS:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # every request read and blocked on the server
    early = len(out)
    t0 = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(
        None, req, port, "PUT", f"/v1/agent/check/{status}/service:X", b"")
    await asyncio.gather(*tasks)
    lat = [(t - t0) * 1000 for t in out]
    return early, lat


def main():
    port = free_port()
    srv = subprocess.Popen([BIN, "consul-api", "--listen", f"127.0.0.1:{port}",
                            "--catalog", f"local://{TMP}/catalog", "--node", "bench"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(200):
            try:
                req(port, "GET", "/v1/status/leader")
                break
            except OSError:
                time.sleep(0.1)
        req(port, "PUT", "/v1/agent/service/register",
            json.dumps({"Name": "X", "Port": 80, "Check": {"TTL": "600s"}}).encode())
        req(port, "PUT", "/v1/agent/check/pass/service:X")
        print(f"config: {WATCHERS} watchers (one connection each) on /v1/health/service/X?index=I&wait=60s, "
              f"{ROUNDS} rounds, one change per round (the TTL check fails / passes), embedded catalog, "
              f"binary {BIN}, {os.cpu_count()} cpus")
        allat = []
        for r in range(ROUNDS):
            status = "fail" if r % 2 == 0 else "pass"
            early, lat = asyncio.run(round_(port, status))
            allat += lat
            print(f"round {r + 1}: {len(lat)} answers ({early} before the change), "
                  f"p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
        print(f"all rounds: {len(allat)} answers, p50 {pct(allat, 0.5):.1f} ms, "
              f"p99 {pct(allat, 0.99):.1f} ms, max {max(allat):.1f} ms")
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(10)
        shutil.rmtree(TMP, ignore_errors=True)


main()
