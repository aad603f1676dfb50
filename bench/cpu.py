"""Who used the CPU during a measurement: the server under test, the load generator, and anyone
else on the machine (other people's test runs on a shared box skew figures; this makes it visible)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(x) for x in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICK


def own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children: wrk, load workers
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class CpuWindow:
    """Average cores used over a window: by the server(s), by this bench (incl. finished
    children such as wrk), and by everything else."""

    pids: tuple[int, ...]
    t0: float = 0.0
    server0: float = 0.0
    own0: float = 0.0
    machine0: float = 0.0

    def __enter__(self) -> CpuWindow:
        self.t0 = time.monotonic()
        self.server0 = sum(process_cpu(p) for p in self.pids)
        self.own0 = own_cpu()
        self.machine0 = machine_busy()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self.t0)
        server = sum(process_cpu(p) for p in self.pids) - self.server0
        own = own_cpu() - self.own0
        machine = machine_busy() - self.machine0
        self.result = {
            "server_cores": round(server / wall, 2),
            "bench_cores": round(own / wall, 2),
            "other_cores": round(max(0.0, machine - server - own) / wall, 2),
        }
