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
