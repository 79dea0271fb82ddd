#!/usr/bin/env python3
"""A small HTTP backend for the nginx blueprint.

GET / answers with the backend's name; GET /health is its health check.
On SIGTERM it keeps serving for DRAIN_SECONDS (autopilot has already taken
it out of the catalog, so nginx stops sending new requests), then exits.
"""
import http.server
import os
import signal
import socketserver
import sys
import threading
import time

NAME = os.environ.get("BACKEND_NAME") or os.environ.get("AUTOPILOT_HOSTNAME") or "backend"
PORT = int(os.environ.get("BACKEND_PORT", "8081"))
DRAIN = float(os.environ.get("DRAIN_SECONDS", "1.5"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else f"{NAME}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    server = Server(("127.0.0.1", PORT), Handler)

    def drain(signum, frame):
        def stop():
            time.sleep(DRAIN)
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    print(f"backend {NAME} listening on 127.0.0.1:{PORT}", flush=True)
    server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
