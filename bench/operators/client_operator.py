"""The kopf side of bench/clients.py: reports when its cache holds every object and each event
after that, as ``BENCH {json}`` lines on stdout."""

import json
import os
import time

import kopf

N = int(os.environ["BENCH_OBJECTS"])
seen: set[str] = set()
events = [0]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.watching.server_timeout = 600
    print("BENCH " + json.dumps({"started_ns": time.monotonic_ns()}), flush=True)


@kopf.on.event("example.com", "v1", "widgets")
async def event(type: str | None, name: str, **_: object) -> None:  # async: handled on the loop, one at a time
    if type is None or type == "ADDED":
        if name not in seen:
            seen.add(name)
            if len(seen) == N:
                print("BENCH " + json.dumps({"ready": True, "full_cache_ns": time.monotonic_ns()}), flush=True)
        return
    if type == "MODIFIED":
        events[0] += 1
        print("BENCH " + json.dumps({"event": events[0], "t_ns": time.monotonic_ns()}), flush=True)
