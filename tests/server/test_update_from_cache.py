"""Updates start from the watch cache and fall back to the store: a stale cache may cost a
retry, never a wrong answer. The cache is made stale on purpose by stopping it, so that writes
it has not seen are in the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from setpoint.server.builtins import builtin_types
from setpoint.server.errors import Conflict, NotFound
from setpoint.server.handlers import ResourceHandlers
from setpoint.server.idempotency import IdempotencyCache
from setpoint.server.objects import for_storage
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import Registry, ResourceType
from setpoint.server.schema import compile_schema
from setpoint.server.settings import Settings
from setpoint.server.watchcache import WatchCache
from setpoint.store import SQLiteBackend

KEY = "/registry/coordination.k8s.io/leases/ns/l1"


def lease(holder: str, rv: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "l1", "namespace": "ns", "uid": "u1",
                            "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder}}


@pytest.fixture
async def stale(tmp_path: Path) -> AsyncIterator[tuple[ResourceHandlers, SQLiteBackend, int]]:
    """Handlers whose cache saw the lease at its first revision only; the store is one write ahead."""
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    cache = WatchCache(backend)
    handlers = ResourceHandlers(backend, cache, Registry(builtin_types(compile_schema)),
                                IdempotencyCache(), Settings())
    first = await backend.create(KEY, for_storage(lease("a")))
    await cache.start()
    assert cache.get(KEY) is not None and cache.get(KEY).revision == first.mod_revision  # type: ignore[union-attr]
    await cache.stop()  # sees nothing from here on
    second = await backend.update(KEY, for_storage(lease("b")), first.mod_revision)
    try:
        yield handlers, backend, second.mod_revision
    finally:
        await backend.close()


def _rtype(h: ResourceHandlers) -> ResourceType:
    rtype = h.registry.lookup("coordination.k8s.io", "v1", "leases")
    assert rtype is not None
    return rtype


def _info() -> RequestInfo:
    return RequestInfo(path="", verb="update", resource_request=True, group="coordination.k8s.io",
                       version="v1", namespace="ns", resource="leases", name="l1")


async def _stored(backend: SQLiteBackend) -> dict[str, Any]:
    kv = await backend.get(KEY)
    assert kv is not None
    return msgspec.json.decode(kv.value)  # type: ignore[no-any-return]


async def test_a_patch_applies_to_the_stored_object_not_the_cached_one(stale: Any) -> None:
    h, backend, _rev = stale

    def mutate(old: dict[str, Any]) -> dict[str, Any]:
        old["spec"]["leaseDurationSeconds"] = 10
        return old

    status, _ = await h.update_object(_info(), _rtype(h), mutate)
    assert status == 200
    spec = (await _stored(backend))["spec"]
    assert spec == {"holderIdentity": "b", "leaseDurationSeconds": 10}  # "b" not lost


async def test_a_precondition_on_the_current_revision_is_no_conflict(stale: Any) -> None:
    h, backend, rev = stale
    status, _ = await h.update_object(_info(), _rtype(h), lambda old: lease("c", str(rev)), rev)
    assert status == 200
    assert (await _stored(backend))["spec"]["holderIdentity"] == "c"


async def test_a_precondition_on_the_cached_revision_is_a_conflict(stale: Any) -> None:
    h, backend, rev = stale
    with pytest.raises(Conflict):
        await h.update_object(_info(), _rtype(h), lambda old: lease("c", str(rev - 1)), rev - 1)
    assert (await _stored(backend))["spec"]["holderIdentity"] == "b"


async def test_no_change_from_the_cache_is_still_a_change_to_the_store(stale: Any) -> None:
    h, backend, rev = stale
    # The cache holds "a"; writing "a" back changes the stored "b".
    status, _ = await h.update_object(_info(), _rtype(h), lambda old: lease("a"))
    assert status == 200
    assert (await _stored(backend))["spec"]["holderIdentity"] == "a"
    assert await backend.current_revision() == rev + 1


async def test_gone_from_the_store_is_not_found_whatever_the_cache_says(stale: Any) -> None:
    h, backend, _rev = stale
    await backend.delete(KEY)
    with pytest.raises(NotFound):
        await h.update_object(_info(), _rtype(h), lambda old: lease("c"))
    assert await backend.get(KEY) is None
