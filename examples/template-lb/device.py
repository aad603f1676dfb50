"""A stand-in for a load balancer appliance's REST API (the source material's NetScaler): it keeps
the set of backends it was last given, counts the calls, and shows both.

    python3 device.py 9900      # then: curl -s http://127.0.0.1:9900/api/backends
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"service": None, "backends": [], "puts": 0}


class Device(BaseHTTPRequestHandler):
    def _answer(self, code: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, state) if self.path == "/api/backends" else self._answer(404, {"error": "not found"})

    def do_PUT(self) -> None:
        if self.path != "/api/backends":
            return self._answer(404, {"error": "not found"})
        doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        state.update(service=doc["service"], backends=doc["backends"])
        state["puts"] += 1
        self._answer(200, {"backends": len(doc["backends"])})

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9900), Device).serve_forever()
