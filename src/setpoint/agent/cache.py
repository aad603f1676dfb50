"""The informer's local cache: objects by key, plus indexes the caller names.

A key is ``"namespace/name"`` for a namespaced object and ``"name"`` for a cluster-scoped one.
Two indexes are always there: ``"namespace"`` (the object's namespace) and ``"label"`` (one
value ``"key=value"`` per label). More are added with :meth:`Indexer.add_indexer`, each a
function from an object to the index values it is filed under:

    cache.add_indexer("node", lambda obj: [obj["spec"]["nodeName"]] if "nodeName" in obj["spec"] else [])
    cache.by_index("node", "host-1")

The cache is only written by its informer, synchronously, between awaits; readers on the same
event loop always see a consistent state. Objects are shared with event handlers and readers:
treat them as read-only (copy before changing one).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Iterator

from setpoint.types import Object

log = logging.getLogger(__name__)

IndexFunc = Callable[[Object], Iterable[str]]

NAMESPACE_INDEX = "namespace"
LABEL_INDEX = "label"


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


class Indexer:
    """Objects by key, and for each named index a map from index value to keys."""

    def __init__(self) -> None:
        self._items: dict[str, Object] = {}
        self._funcs: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self.add_indexer(NAMESPACE_INDEX, namespace_index)
        self.add_indexer(LABEL_INDEX, label_index)

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, key: str) -> Object | None:
        return self._items.get(key)

    def list(self) -> list[Object]:
        return list(self._items.values())

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
        return [self._items[k] for k in self.index_keys(index, value)]

    def index_values(self, index: str) -> builtins.list[str]:
        """Every value ``index`` currently holds, sorted."""
        return sorted(self._index(index))

    def by_label(self, key: str, value: str) -> builtins.list[Object]:
        return self.by_index(LABEL_INDEX, f"{key}={value}")

    def _index(self, name: str) -> dict[str, set[str]]:
        try:
            return self._indices[name]
        except KeyError:
            raise KeyError(f"no index named {name!r}") from None

    # ---- indexes --------------------------------------------------------------------------------

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        """Add an index and file every cached object in it."""
        if name in self._funcs:
            raise ValueError(f"an index named {name!r} already exists")
        self._funcs[name] = fn
        index: dict[str, set[str]] = {}
        self._indices[name] = index
        for key, obj in self._items.items():
            for value in self._values(name, fn, obj):
                index.setdefault(value, set()).add(key)

    @staticmethod
    def _values(name: str, fn: IndexFunc, obj: Object) -> set[str]:
        try:
            return set(fn(obj))
        except Exception:
            # A bad index function must not cost the cache its object; it is only unindexed.
            log.exception("index function %r failed for %s", name, object_key(obj))
            return set()

    # ---- writes (the informer's) ----------------------------------------------------------------

    def put(self, obj: Object) -> Object | None:
        """Insert or replace ``obj``; returns the object it replaced."""
        key = object_key(obj)
        old = self._items.get(key)
        self._items[key] = obj
        for name, fn in self._funcs.items():
            new_values = self._values(name, fn, obj)
            old_values = self._values(name, fn, old) if old is not None else set()
            if new_values != old_values:
                self._unfile(name, key, old_values - new_values)
                index = self._indices[name]
                for value in new_values - old_values:
                    index.setdefault(value, set()).add(key)
        return old

    def remove(self, key: str) -> Object | None:
        """Remove the object under ``key``; returns it (None if absent)."""
        old = self._items.pop(key, None)
        if old is not None:
            for name, fn in self._funcs.items():
                self._unfile(name, key, self._values(name, fn, old))
        return old

    def _unfile(self, name: str, key: str, values: Iterable[str]) -> None:
        index = self._indices[name]
        for value in values:
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]  # no empty sets left behind: the index stays as small as the cache
