"""A tiny HTTP backend for the LoadBalancer example: answers every GET with the port it listens
on (so you can see which replica served you).

On SIGTERM it keeps serving for ``STOP_DELAY`` seconds (default 1) before it stops listening:
a replica being scaled away is told to stop at the moment the load balancers are told to remove
it, and they need a moment to do so. Behind any load balancer (Kubernetes' preStop hooks exist
for this) a service that must not fail a request on scale-down does the same; the ProcessSet's
``stopGracePeriodSeconds`` must leave it that time."""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))
STOP_DELAY = float(os.environ.get("STOP_DELAY", "1"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = f"{PORT}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    stop = threading.Timer(STOP_DELAY, server.shutdown)

    def stopping(*_: object) -> None:
        if not stop.is_alive() and not stop.finished.is_set():
            stop.start()

    signal.signal(signal.SIGTERM, stopping)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
