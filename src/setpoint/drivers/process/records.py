"""What is kept on disk per replica, so that supervision survives a restart of the agent.

One JSON file per replica (``<state_dir>/<uid>/<replica>.json``), written atomically and made
durable before the driver relies on it: a record written before a spawn lets a new agent find a
process whose spawn a crash interrupted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import msgspec

RECORD_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.json")


class Record(msgspec.Struct, kw_only=True):
    replica: int
    namespace: str = ""
    name: str = ""
    spec_hash: str = ""
    pid: int = 0  # 0: no process (not started yet, or its death has been recorded)
    start_ticks: int = 0  # /proc/<pid>/stat field 22
    started_at: float = 0.0  # clock time of the spawn
    port: int | None = None
    restarts: int = 0
    streak: int = 0  # consecutive deaths of short-lived processes
    exited_at: float | None = None
    exit_code: int | None = None
    retry_at: float | None = None
    pending: bool = False  # written just before a spawn; cleared once the pid is known
    grace: float = 5.0


encode_record = msgspec.json.Encoder().encode
decode_record = msgspec.json.Decoder(Record).decode


def write_files(files: Iterable[tuple[Path, bytes]]) -> None:
    """Write each file atomically (tmp + fsync + rename), then make the renames durable."""
    dirs: set[Path] = set()
    for path, data in files:
        parent = path.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            dirs.add(parent.parent)
        tmp = parent / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dirs.add(parent)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


