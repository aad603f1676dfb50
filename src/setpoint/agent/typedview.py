"""An informer's cache as instances of a kind's class (``informer.typed(Lamp)``).

The informer keeps the objects as the server sent them (dicts: what indexers, transforms and
dict-based handlers work on). A typed view decodes an object into the class the first time it is
asked for and keeps the result until the informer replaces or drops that object, so each version
of each object is decoded once however often it is read (msgspec: a few microseconds each).

The instances are shared by everyone reading the view: treat them as read-only. A controller that
changes what it is given gets its own copy (:class:`~setpoint.agent.controller.TypedController`
decodes one per reconcile).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Generic

from setpoint.agent.cache import object_key
from setpoint.client.typed import K, decode
from setpoint.types import Object

if TYPE_CHECKING:
    from setpoint.agent.informer import Informer


class TypedView(Generic[K]):
    def __init__(self, informer: Informer, cls: type[K]) -> None:
        self.informer = informer
        self.cls = cls
        self.decodes = 0  # how many objects were decoded (not served from the memo)
        # key -> (the cached dict it was decoded from, the instance); an entry lives as long as
        # its dict is the cached one, so the memo never outgrows the cache.
        self._memo: dict[str, tuple[Object, K]] = {}
        informer.add_handler(on_update=lambda old, new: self._forget(new), on_delete=self._forget)

    def _forget(self, obj: Object) -> None:
        self._memo.pop(object_key(obj), None)

    def decode(self, obj: Object) -> K:
        """``obj`` as an instance; from the memo when ``obj`` is the cached object it was decoded
        from. Raises :class:`~setpoint.client.typed.InvalidObject` naming the field."""
        key = object_key(obj)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        typed = decode(self.cls, obj)
        self.decodes += 1
        if self.informer.get(key) is obj:
            self._memo[key] = (obj, typed)
        return typed

    def get(self, key: str) -> K | None:
        """The cached object under ``"namespace/name"`` (or ``"name"``), as an instance."""
        obj = self.informer.get(key)
        return None if obj is None else self.decode(obj)

    def list(self) -> builtins.list[K]:
        return [self.decode(o) for o in self.informer.list()]

    def by_index(self, index: str, value: str) -> builtins.list[K]:
        return [self.decode(o) for o in self.informer.by_index(index, value)]

    def __len__(self) -> int:
        return len(self._memo)
