"""A list followed by a watch that resumes after a broken stream, for ``setpoint watch`` and
``--wait``."""


from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from setpoint.backoff import Backoff
from setpoint.cli.objects.common import WATCH_IDLE_TIMEOUT
from setpoint.client import (
    Client,
    ConnectionFailed,
    Gone,
    Resource,
    ServerError,
)
from setpoint.types import Object

# ---- list + watch with resume --------------------------------------------------------------------

def namespaced_name(obj: Object) -> tuple[str, str]:
    """(namespace, name): what the commands sort and match by. (The SDK's ``object_key`` is the
    ``namespace/name`` string its caches are keyed by.)"""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def resource_version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


async def follow(
    client: Client,
    resource: Resource,
    namespace: str | None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    on_trouble: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[str, Object]]:
    """List, then watch from the list's revision, forever.

    Yields ``("LIST", {"items": [...]})`` for the first list, then every ADDED, MODIFIED and
    DELETED event. A stream that ends or breaks is watched again from the last resourceVersion
    seen (events and bookmarks), after a backoff when the server is unreachable; when that
    revision has been compacted (410) it lists again and yields the differences against what it
    had seen as ADDED, MODIFIED and DELETED events. The first list's errors are raised.
    """
    known: dict[tuple[str, str], Object] = {}
    rv = ""
    listed = False
    need_list = True
    # Two backoffs: one for streams that end at once (they must not spin), one for a server that
    # cannot be reached; each starts again after an event.
    quick_ends = Backoff(initial=0.1, cap=10.0, jitter=0.0)
    outage = Backoff(initial=0.5, cap=10.0, jitter=0.0)
    while True:
        try:
            if need_list:
                page = await client.list_all(resource, namespace=namespace, label_selector=label_selector,
                                             field_selector=field_selector)
                fresh = {namespaced_name(o): o for o in page.items}
                if not listed:
                    yield "LIST", {"items": page.items}
                    listed = True
                else:
                    for k, o in fresh.items():
                        old = known.get(k)
                        if old is None:
                            yield "ADDED", o
                        elif resource_version(old) != resource_version(o):
                            yield "MODIFIED", o
                    for k, o in known.items():
                        if k not in fresh:
                            yield "DELETED", o
                known = fresh
                rv = page.resource_version
                need_list = False
            quiet = True
            async with client.watch(resource, namespace=namespace, resource_version=rv,
                                    label_selector=label_selector, field_selector=field_selector,
                                    idle_timeout=WATCH_IDLE_TIMEOUT) as stream:
                async for event in stream:
                    quiet = False
                    quick_ends.reset()
                    outage.reset()
                    if event.resource_version:
                        rv = event.resource_version
                    if event.type == "BOOKMARK":
                        continue
                    k = namespaced_name(event.object)
                    if event.type == "DELETED":
                        known.pop(k, None)
                    else:
                        known[k] = event.object
                    yield event.type, event.object
            if quiet:  # a stream that ends at once, again and again, must not spin
                await asyncio.sleep(quick_ends.next())
        except Gone:
            need_list = True
            if on_trouble is not None:
                on_trouble(f"revision {rv} is no longer available; listing again")
        except (ConnectionFailed, ServerError) as e:
            if not listed:
                raise
            delay = outage.next()
            if on_trouble is not None:
                on_trouble(f"watch interrupted ({e}); resuming from revision {rv} in {delay:g}s")
            await asyncio.sleep(delay)


