"""Revisioned key/value storage behind one small interface (see backend.py)."""

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

__all__ = [
    "Backend",
    "Compacted",
    "Event",
    "FutureRevision",
    "KeyExists",
    "KeyNotFound",
    "KeyValue",
    "ListResult",
    "RevisionMismatch",
    "StoreError",
    "Unavailable",
    "WatchOverflow",
]
