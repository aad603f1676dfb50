"""The storage contract: a revisioned key/value log with watch-from-revision and compaction.

Every backend (SQLite, PostgreSQL, etcd) implements this one small interface, and the whole
control plane above it is written once. The semantics follow etcd's MVCC store:

- one global revision counter; every successful write (create, update, delete) takes the next
  revision, strictly increasing, without gaps;
- a key's ``mod_revision`` is the revision of its last write, ``create_revision`` that of the write
  that created it (a key deleted and created again starts a new life);
- reads may name a past revision; a revision at or below the compacted revision is gone and
  raises :class:`Compacted`;
- a watch from revision R delivers every event with revision > R, in revision order, each once.

Values are opaque bytes: the store never parses objects, so it cannot disagree with the API layer
about what an object is.

Keys follow one rule on every backend (:func:`check_key`): a non-empty string of Unicode text
without NUL. PostgreSQL text cannot hold NUL and etcd keys are UTF-8 bytes, so the narrowest of
the engines sets the rule for all of them; a key that breaks it is refused on write (ValueError)
and found nowhere on read, since no stored key can hold it.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import AsyncGenerator
from typing import Literal

import msgspec

EventType = Literal["PUT", "DELETE"]


class KeyValue(msgspec.Struct, frozen=True, gc=False):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


class Event(msgspec.Struct, frozen=True, gc=False):
    """One write. For a DELETE, ``kv.value`` is the last value the key had and ``kv.mod_revision``
    is the revision of the delete itself."""

    type: EventType
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    @property
    def created(self) -> bool:
        return self.type == "PUT" and self.kv.create_revision == self.kv.mod_revision


class ListResult(msgspec.Struct, frozen=True, gc=False):
    items: list[KeyValue]
    revision: int  # the revision the list was read at
    more: bool  # True when ``limit`` cut the result short


class StoreError(Exception):
    """Base of every error a backend raises on purpose."""


class KeyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} already exists")
        self.key = key

    def __reduce__(self) -> tuple[type, tuple[str]]:  # copy and pickle, e.g. one error for many watchers
        return (type(self), (self.key,))


class KeyNotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} not found")
        self.key = key

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.key,))


class RevisionMismatch(StoreError):
    """The optimistic-concurrency guard: the key was written since the caller read it."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"key {key!r} is at revision {actual}, not {expected}")
        self.key = key
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:
        return (type(self), (self.key, self.expected, self.actual))


class Compacted(StoreError):
    """The requested revision is older than the history the store still keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted; the oldest available is {compacted + 1}"
        )
        self.requested = requested
        self.compacted = compacted

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.requested, self.compacted))


class FutureRevision(StoreError):
    def __init__(self, requested: int, current: int) -> None:
        super().__init__(f"revision {requested} is newer than the current revision {current}")
        self.requested = requested
        self.current = current

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.requested, self.current))


class WatchOverflow(StoreError):
    """A watcher fell too far behind and was cut off; it resumes from its last revision."""


class Unavailable(StoreError):
    """The store cannot serve right now (closed, restarting, disk error); the call may be retried."""


def check_key(key: str) -> None:
    """Raise ValueError unless ``key`` may be written (see the rule in the module docstring)."""
    if not isinstance(key, str) or not key:
        raise ValueError("a key must be a non-empty string")
    if "\x00" in key:
        raise ValueError("a key must not contain NUL characters")
    try:
        key.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"key {key!r} is not valid Unicode text") from exc


def storable(key: str) -> bool:
    """Whether ``key`` could be stored at all; reads of any other key find nothing."""
    try:
        check_key(key)
    except ValueError:
        return False
    return True


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: no bound).

    Skips the surrogate range, which no storable key holds (and PostgreSQL text cannot), so the
    bound also encodes to UTF-8, whose byte order is code point order: etcd's byte range end is
    this string encoded."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = last + 1 if not 0xD7FF <= last < 0xE000 else 0xE000
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


def check_read_revision(revision: int, current: int, compacted: int) -> None:
    """The guard of every read at a past revision: ahead of the store is FutureRevision, at or
    below the compacted revision is Compacted."""
    if revision > current:
        raise FutureRevision(revision, current)
    if revision <= compacted:
        raise Compacted(revision, compacted)


def check_watch_start(after_revision: int, current: int, compacted: int) -> None:
    """The guard of a watch from ``after_revision``: it may start at the compacted revision itself
    (every event after it is still there), not below it, and not ahead of the store."""
    if after_revision > current:
        raise FutureRevision(after_revision, current)
    if after_revision < compacted:
        raise Compacted(after_revision, compacted)


def check_list_args(revision: int, limit: int = 0) -> None:
    if limit < 0 or revision < 0:
        raise ValueError("limit and revision must not be negative")


class Backend(abc.ABC):
    """A revisioned key/value store. Keys are '/'-separated paths; ``prefix`` arguments end in '/'."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the store; after it returns, every other method may be called."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop accepting writes, finish those in flight, end every watch, release resources."""

    @abc.abstractmethod
    async def current_revision(self) -> int: ...

    @abc.abstractmethod
    async def compacted_revision(self) -> int:
        """Revisions at or below this one are gone (0 when nothing was compacted yet)."""

    @abc.abstractmethod
    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        """The key as of ``revision`` (0: now), or None if it did not exist then."""

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        """Keys under ``prefix`` as of ``revision`` (0: now), sorted by key, those after
        ``start_after`` only, at most ``limit`` of them (0: all)."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> KeyValue:
        """Raises KeyExists if the key is live."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, expected_revision: int = 0) -> KeyValue:
        """Replace a live key. ``expected_revision`` (0: any) must equal its mod_revision,
        else RevisionMismatch. Raises KeyNotFound if the key is not live."""

    @abc.abstractmethod
    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        """Delete a live key and return its last value, with mod_revision set to the delete's
        revision. Same guards as update."""

    @abc.abstractmethod
    def watch(self, prefix: str, after_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        """Every event under ``prefix`` with revision > ``after_revision``, in order, in batches.

        Raises Compacted (on first iteration) when ``after_revision`` < compacted revision,
        FutureRevision when it is ahead of the store, WatchOverflow when the consumer falls
        behind the backend's bounded buffer. Close it with ``aclose()``.

        (``builtins.list`` in the annotation: inside this class, ``list`` is the method above.)
        """

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history at or below ``revision`` (the newest value of each live key stays)."""

    async def __aenter__(self) -> Backend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
