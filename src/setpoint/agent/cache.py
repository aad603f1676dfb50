"""The informer's local cache: objects by key, plus indexes the caller names.

A key is ``"namespace/name"`` for a namespaced object and ``"name"`` for a cluster-scoped one.
Two indexes are always there: ``"namespace"`` (the object's namespace) and ``"label"`` (one
value ``"key=value"`` per label). More are added with :meth:`Indexer.add_indexer`, each a
function from an object to the index values it is filed under:

    cache.add_indexer("node", lambda obj: [obj["spec"]["nodeName"]] if "nodeName" in obj["spec"] else [])
    cache.by_index("node", "host-1")

An object may be held as the JSON the server sent (``bytes``) until it is first read: a large
list, and a change to an object nobody has read, is filed by name without being decoded,
because a decoded object costs several times its JSON in memory, and allocating it (with the
collector traversing it again and again as the cache grows) is most of a large list's time.
The first read decodes it (``decode``, given by the informer: JSON, then its transform) and
keeps the result, so every later read gets that same object, until the object changes. An
index is built the first time it is read, then kept current: an index nobody reads costs
nothing per object.

The cache is only written by its informer, synchronously, between awaits; readers on the same
event loop always see a consistent state. Objects are shared with event handlers and readers:
treat them as read-only (copy before changing one).
"""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import msgspec

from setpoint.types import Object

log = logging.getLogger(__name__)

IndexFunc = Callable[[Object], Iterable[str]]
Entry = Object | bytes
"""What the cache holds under a key: the object, or its JSON as the server sent it."""

NAMESPACE_INDEX = "namespace"
LABEL_INDEX = "label"
_json = msgspec.json.Decoder(dict[str, Any])


def object_key(obj: Object) -> str:
    """``"namespace/name"``, or ``"name"`` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)


def split_key(key: str) -> tuple[str, str]:
    """``"ns/name"`` -> ``("ns", "name")``; ``"name"`` -> ``("", "name")``."""
    namespace, _, name = key.rpartition("/")
    return namespace, name


def namespace_index(obj: Object) -> list[str]:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [namespace] if namespace else []


def label_index(obj: Object) -> list[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return [f"{k}={v}" for k, v in labels.items()]


def share_strings(obj: Object) -> Object:
    """The strings most objects of a cache repeat (apiVersion, kind, namespace, label values)
    made one string each (``sys.intern``: freed with the last object that uses it). Each copy
    costs ~50 bytes; a decoded object of a few kilobytes carries five or more of them."""
    intern = sys.intern
    for field in ("apiVersion", "kind"):
        value = obj.get(field)
        if type(value) is str:
            obj[field] = intern(value)
    meta = obj.get("metadata")
    if type(meta) is dict:
        namespace = meta.get("namespace")
        if type(namespace) is str:
            meta["namespace"] = intern(namespace)
        labels = meta.get("labels")
        if type(labels) is dict:
            for key, value in labels.items():
                if type(value) is str:
                    labels[key] = intern(value)
    return obj


class _Meta(msgspec.Struct, gc=False):
    name: Any = ""
    namespace: Any = None
    uid: Any = None
    resourceVersion: Any = None


class _Head(msgspec.Struct, gc=False):
    metadata: _Meta | None = None


_head = msgspec.json.Decoder(_Head)
_NO_META = _Meta()


def raw_identity(raw: bytes) -> tuple[str, Any, Any]:
    """``(key, metadata.uid, metadata.resourceVersion)`` of an object's JSON, without building
    the object (msgspec skips the rest)."""
    meta = _head.decode(raw).metadata or _NO_META
    name, namespace = meta.name, meta.namespace
    return (f"{namespace}/{name}" if namespace else str(name)), meta.uid, meta.resourceVersion


def entry_versions(entry: Entry) -> tuple[Any, Any]:
    """``(metadata.uid, metadata.resourceVersion)`` of an entry, decoded or not."""
    if isinstance(entry, bytes):
        head = _head.decode(entry).metadata or _NO_META
        return head.uid, head.resourceVersion
    meta = entry.get("metadata") or {}
    return meta.get("uid"), meta.get("resourceVersion")


class Indexer:
    """Objects by key, and for each named index a map from index value to keys.

    ``decode`` turns an object's JSON into the object cached and handed out (the informer's:
    JSON, then its transform); without one, JSON only."""

    def __init__(self, decode: Callable[[bytes], Object] | None = None) -> None:
        self._items: dict[str, Entry] = {}
        self._funcs: dict[str, IndexFunc] = {}
        # Only the indexes read at least once are here (and kept current from then on).
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._decode_json: Callable[[bytes], Object] = decode or _json.decode
        self.add_indexer(NAMESPACE_INDEX, namespace_index)
        self.add_indexer(LABEL_INDEX, label_index)

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, key: str) -> Object | None:
        entry = self._items.get(key)
        if isinstance(entry, bytes):
            return self._keep(key, entry)
        return entry

    def list(self) -> list[Object]:
        items = self._items
        for key, entry in [(k, e) for k, e in items.items() if isinstance(e, bytes)]:
            self._keep(key, entry)
        return cast("list[Object]", list(items.values()))  # every entry is decoded now

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def index_keys(self, index: str, value: str) -> builtins.list[str]:
        """The keys filed under ``value`` in ``index``, sorted."""
        return sorted(self._index(index).get(value, ()))

    def by_index(self, index: str, value: str) -> builtins.list[Object]:
        """The objects filed under ``value`` in ``index``, sorted by key."""
        return [obj for k in self.index_keys(index, value) if (obj := self.get(k)) is not None]

    def index_values(self, index: str) -> builtins.list[str]:
        """Every value ``index`` currently holds, sorted."""
        return sorted(self._index(index))

    def by_label(self, key: str, value: str) -> builtins.list[Object]:
        return self.by_index(LABEL_INDEX, f"{key}={value}")

    def _index(self, name: str) -> dict[str, set[str]]:
        built = self._indices.get(name)
        if built is not None:
            return built
        fn = self._funcs.get(name)
        if fn is None:
            raise KeyError(f"no index named {name!r}")
        index: dict[str, set[str]] = {}
        for key, entry in self._items.items():
            for value in self._values(name, fn, self.decode(entry)):
                index.setdefault(value, set()).add(key)
        # Kept only once complete: a decode that raises midway (a transform's bug) leaves no half
        # index behind for put_entry to keep current and by_index to answer from.
        self._indices[name] = index
        return index

    # ---- entries (the informer's) ---------------------------------------------------------------

    def entry(self, key: str) -> Entry | None:
        """What is held under ``key``, decoded or not (the informer compares versions on it)."""
        return self._items.get(key)

    def decode(self, entry: Entry) -> Object:
        """The object of an entry, for one caller (a handler): an entry still held as JSON is
        decoded for it and stays as it is."""
        return self._decode_json(entry) if isinstance(entry, bytes) else entry

    def peek(self, key: str) -> Object | None:
        """Like :meth:`get`, but an object still held as JSON is decoded for this caller only."""
        entry = self._items.get(key)
        return None if entry is None else self.decode(entry)

    def entries(self) -> builtins.list[tuple[str, Entry]]:
        """Every (key, entry), as held."""
        return list(self._items.items())

    def objects(self) -> Iterator[Object]:
        """Every object, each decoded for this pass only if held as JSON (for telling handlers
        about all of them without keeping every one decoded)."""
        for entry in list(self._items.values()):
            yield self.decode(entry)

    def _keep(self, key: str, entry: bytes) -> Object:
        obj = share_strings(self._decode_json(entry))
        self._items[key] = obj  # same key, same index values: the indexes stand
        return obj

    # ---- indexes --------------------------------------------------------------------------------

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        """Add an index; it is built from every cached object when first read."""
        if name in self._funcs:
            raise ValueError(f"an index named {name!r} already exists")
        self._funcs[name] = fn

    def _values(self, name: str, fn: IndexFunc, obj: Object) -> set[str]:
        try:
            return set(fn(obj))
        except Exception:
            # A bad index function must not cost the cache its object; it is only unindexed.
            log.exception("index function %r failed for %s", name, object_key(obj))
            return set()

    # ---- writes (the informer's) ----------------------------------------------------------------

    def put(self, obj: Object) -> Object | None:
        """Insert or replace ``obj``; returns the object it replaced."""
        old = self.put_entry(object_key(obj), obj)
        return None if old is None else self.decode(old)

    def put_entry(self, key: str, entry: Entry) -> Entry | None:
        """Insert or replace what is held under ``key``; returns what it replaced, as it was held."""
        items = self._items
        old = items.get(key)
        items[key] = share_strings(entry) if type(entry) is dict else entry
        if self._indices:
            # Each decoded once for every index (a kept object is not decoded at all).
            new_obj = self.decode(entry)
            old_obj = self.decode(old) if old is not None else None
            for name, index in self._indices.items():
                fn = self._funcs[name]
                new_values = self._values(name, fn, new_obj)
                old_values = self._values(name, fn, old_obj) if old_obj is not None else set()
                if new_values != old_values:
                    self._unfile(index, key, old_values - new_values)
                    for value in new_values - old_values:
                        index.setdefault(value, set()).add(key)
        return old

    def remove(self, key: str) -> Object | None:
        """Remove the object under ``key``; returns it (None if absent)."""
        old = self.remove_entry(key)
        return None if old is None else self.decode(old)

    def remove_entry(self, key: str) -> Entry | None:
        """Remove what is held under ``key``; returns it as it was held (None if absent)."""
        old = self._items.pop(key, None)
        if old is not None and self._indices:
            old_obj = self.decode(old)
            for name, index in self._indices.items():
                self._unfile(index, key, self._values(name, self._funcs[name], old_obj))
        return old

    @staticmethod
    def _unfile(index: dict[str, set[str]], key: str, values: Iterable[str]) -> None:
        for value in values:
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]  # no empty sets left behind: the index stays as small as the cache

