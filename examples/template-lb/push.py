"""Send the rendered backends to the device's REST API: the whole set in one idempotent PUT, as
the source material's script turned consul-template's JSON into REST calls.

    python3 push.py backends.json http://127.0.0.1:9900
"""

import json
import sys
import urllib.request

path, device = sys.argv[1], sys.argv[2].rstrip("/")
body = json.dumps(json.load(open(path))).encode()
req = urllib.request.Request(f"{device}/api/backends", data=body, method="PUT",
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    print(f"device answered {r.status}: {r.read().decode().strip()}")
