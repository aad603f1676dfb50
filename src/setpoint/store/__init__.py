"""Revisioned key/value storage behind one small interface (see backend.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    - ``sqlite://name.db`` (or ``sqlite://dir/name.db``): SQLite relative to ``data_dir``;
    - ``postgresql://user:password@host:port/database`` (or ``postgres://``): PostgreSQL, tables
      in the schema ``setpoint`` unless ``?schema=name`` says otherwise; other query parameters
      go to the connection (``sslmode=require``, ...);
    - ``etcd://host:port[,host:port...]``: an etcd cluster over plain HTTP, ``etcds://`` over
      HTTPS (the members of one cluster; requests go to the next one when one is down).

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
    if scheme in ("postgres", "postgresql"):
        return _postgres(url)
    if scheme in ("etcd", "etcds"):
        return _etcd(scheme, rest, url)
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}; expected sqlite://, postgresql:// or etcd://")


def _postgres(url: str) -> Backend:
    from setpoint.store.postgres import PostgresBackend

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    if not parts.hostname and not parts.path.strip("/") and not query:
        raise ValueError(f"store URL {url!r} names no PostgreSQL server or database")
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return PostgresBackend(dsn, schema=schemas[-1] if schemas else "setpoint")


def _etcd(scheme: str, rest: str, url: str) -> Backend:
    from setpoint.store.etcd import EtcdBackend

    hosts = rest.split("?", 1)[0].split("/", 1)[0]
    http = "https" if scheme == "etcds" else "http"
    endpoints = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            continue
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"store URL {url!r}: {host!r} is not host:port")
        endpoints.append(f"{http}://{host}")
    if not endpoints:
        raise ValueError(f"store URL {url!r} names no etcd member (etcd://host:port[,host:port...])")
    return EtcdBackend(endpoints)


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
