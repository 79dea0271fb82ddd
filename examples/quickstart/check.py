"""Health check: exit 0 when the app's /health answers 200."""
import os, sys, urllib.request

port = os.environ.get("APP_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
