"""Revisioned key/value storage behind one small interface (see backend.py)."""

from __future__ import annotations

from pathlib import Path

from setpoint.store.backend import (
    Backend,
    Compacted,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionMismatch,
    StoreError,
    Unavailable,
    WatchOverflow,
)
from setpoint.store.compactor import Compactor
from setpoint.store.sqlite import SQLiteBackend

DEFAULT_SQLITE_FILE = "state.db"


def open_backend(url: str | None, data_dir: Path) -> Backend:
    """The backend a store URL names (not started yet).

    - empty or None: SQLite at ``data_dir / "state.db"``;
    - ``sqlite:///abs/path.db``: SQLite at that absolute path;
    - ``sqlite://name.db`` (or ``sqlite://dir/name.db``): SQLite relative to ``data_dir``.

    Raises ValueError for anything else, so a typo fails at start-up instead of quietly
    writing somewhere unexpected.
    """
    url = (url or "").strip()
    if not url:
        return SQLiteBackend(data_dir / DEFAULT_SQLITE_FILE)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"store URL {url!r} has no scheme; expected sqlite:///path/to/state.db")
    if scheme == "sqlite":
        path = rest.split("?", 1)[0]
        if not path:
            return SQLiteBackend(data_dir / DEFAULT_SQLITE_FILE)
        if path == ":memory:":
            raise ValueError("store URL sqlite://:memory: is not supported: the store must be a file")
        if path.endswith("/"):
            raise ValueError(f"store URL {url!r} names a directory, not a database file")
        return SQLiteBackend(Path(path) if path.startswith("/") else data_dir / path)
    if scheme in ("postgres", "postgresql", "etcd"):
        raise ValueError(f"store URL scheme {scheme}:// is not supported yet; use sqlite:// (the default)")
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}; expected sqlite://")


__all__ = [
    "Backend",
    "Compacted",
    "Compactor",
    "Event",
    "FutureRevision",
    "KeyExists",
    "KeyNotFound",
    "KeyValue",
    "ListResult",
    "RevisionMismatch",
    "SQLiteBackend",
    "StoreError",
    "Unavailable",
    "WatchOverflow",
    "open_backend",
]
