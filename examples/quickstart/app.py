"""A tiny HTTP service for the quickstart: /health answers 200 unless the
file named by $APP_SICK exists, so the health check can be flipped by hand."""
import http.server, os

SICK = os.environ.get("APP_SICK", "/tmp/quickstart-sick")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health" and os.path.exists(SICK):
            self.send_response(503)
        else:
            self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from the quickstart app\n")

    def log_message(self, *args):
        pass


port = int(os.environ.get("APP_PORT", "8080"))
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
