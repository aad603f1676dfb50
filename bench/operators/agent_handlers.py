"""The kopf side of bench/agent.py's comparison: one line per handled update, then a fixed delay
standing for the reconcile's work (the same delay setpoint's controller gets)."""

import asyncio
import os
import time

import kopf

_fd = os.open(os.environ["BENCH_KOPF_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
_delay = float(os.environ["BENCH_KOPF_DELAY"])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    settings.posting.enabled = False  # no Event per handler call: setpoint's controller posts none either


@kopf.on.update("example.com", "v1", "widgets")
async def updated(name: str, spec: dict[str, object], **_: object) -> None:
    os.write(_fd, f"{name} {spec.get('size')} {time.monotonic_ns()}\n".encode())
    await asyncio.sleep(_delay)
