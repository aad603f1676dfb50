"""Files replaced whole: a reader (a load balancer reloading its configuration, a service
reading a rendered template, an agent reading its records after a crash) sees the old content
or the new, never a mix, and the new survives a power cut once this returns."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``data`` (a temporary file of its own in the same directory, fsync,
    rename, fsync of the directory). Returns False, writing nothing, when the file already holds
    exactly ``data`` with ``mode``: an unchanged file keeps its timestamp, so watchers are not
    woken. Two writers of one file, in one process or several, never share a temporary file: the
    last rename wins, whole."""
    try:
        st = path.stat()
        if st.st_size == len(data) and (st.st_mode & 0o7777) == mode and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp made it 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True
