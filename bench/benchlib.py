"""Helpers shared by the bench scripts: free ports and a single-node etcd on loopback."""
import socket, subprocess, time, urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_etcd(data_dir):
    """Starts etcd on free loopback ports and waits until it is healthy; returns (process, client port)."""
    cport, pport = free_port(), free_port()
    proc = subprocess.Popen(
        ["etcd", "--data-dir", data_dir,
         "--listen-client-urls", f"http://127.0.0.1:{cport}", "--advertise-client-urls", f"http://127.0.0.1:{cport}",
         "--listen-peer-urls", f"http://127.0.0.1:{pport}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"default=http://127.0.0.1:{pport}", "--logger", "zap", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{cport}/health", timeout=1).status == 200:
                return proc, cport
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("etcd did not become healthy")


def etcd_received(port):
    """etcd's gRPC messages received so far, by method (`grpc_server_msg_received_total` of /metrics)."""
    import re
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'grpc_server_msg_received_total\{([^}]*)\} (\S+)', line)
        if m:
            method = re.search(r'grpc_method="([^"]+)"', m.group(1)).group(1)
            out[method] = out.get(method, 0) + float(m.group(2))
    return out


def etcd_rates(port, seconds):
    """etcd's received gRPC messages per second by method over the next `seconds` (zero rates left out)."""
    before = etcd_received(port)
    time.sleep(seconds)
    after = etcd_received(port)
    rates = {m: round((after.get(m, 0) - before.get(m, 0)) / seconds, 3) for m in after}
    return {m: r for m, r in rates.items() if r > 0}
