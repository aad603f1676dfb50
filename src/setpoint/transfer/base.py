"""The one interface every transport of desired state implements, and what they share.

An informer owns the cache and the handlers; a :class:`Transport` only moves state into it, by
calling :meth:`Target.replace` (a complete, consistent picture: after a list) and
:meth:`Target.apply` (one change, with its revision). The informer runs :meth:`Transport.step`
in a loop and handles failures the same way whatever the transport: a 410 Gone forgets the
revision (the next step lists), a request the server refuses stops the informer, anything else
is retried after a backoff. So a controller's reconcile code cannot tell the transports apart,
and its tests run unchanged on each.

The transports differ in what makes them fetch, which is the subject of the source material:

- ``watch``: the server pushes every change on a long-lived stream (list + watch + bookmarks);
- ``poll``: the agent asks on an interval for what changed since its revision (one bookmark
  when nothing did);
- ``interrupt``: the server publishes "key K changed at revision R" on NATS; the agent then asks
  for what changed, coalescing interrupts that arrive while it is busy; a periodic resync
  recovers lost ones;
- ``command``: the server publishes each object's newest state on a NATS JetStream stream that
  keeps one message per key; the agent consumes it with explicit acks, dropping anything older
  than what it has.

Every transport applies the same rule at the end: a change older than the cached object (by
revision) is dropped, so no agent ever goes backwards, whatever the network did.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import setpoint.transfer.digest as digest
from setpoint.client import Client, Resource, WatchEvent
from setpoint.types import Object


@dataclass
class TransferStats:
    """Counters for metrics, tests and the transfer benchmark; fixed size."""

    lists: int = 0  # successful lists (the first one included)
    expired: int = 0  # 410s that forced a relist
    watches: int = 0  # watch streams opened
    watch_errors: int = 0  # lists, watches and fetches that failed and were retried after a backoff
    idle_timeouts: int = 0  # watches given up because nothing arrived within idle_timeout
    events: int = 0  # ADDED/MODIFIED/DELETED events applied
    stale: int = 0  # changes dropped because the cache already had that revision or a newer one
    bookmarks: int = 0
    skipped: int = 0  # events the server coalesced away while this agent was behind
    resyncs: int = 0
    polls: int = 0  # catch-up requests (poll, interrupt)
    interrupts: int = 0  # interrupts received (interrupt)
    commands: int = 0  # messages received from the command stream (command)
    recovered: int = 0  # lost deliveries read from the stream directly instead of awaiting redelivery (command)
    digest_syncs: int = 0  # catch-ups by bucket digests instead of a full list
    digest_buckets_fetched: int = 0
    last_error: str = ""


class Target(Protocol):
    """What a transport fills: the informer, as seen from below."""

    client: Client
    resource: Resource
    namespace: str | None
    label_selector: str | None
    field_selector: str | None
    page_size: int
    idle_timeout: float
    stats: TransferStats

    @property
    def resource_version(self) -> str | None: ...

    def replace(self, items: builtins.list[Object], resource_version: str,
                scope: Callable[[str], bool] | None = None) -> None:
        """Make the cache exactly ``items`` as of ``resource_version`` (for the keys ``scope``
        accepts, when given), telling handlers the differences."""

    def cached_versions(self) -> builtins.list[tuple[str, str]]:
        """(key, resourceVersion) of every cached object."""

    def apply(self, event: WatchEvent) -> None:
        """One change (or a BOOKMARK). Older than what the cache has: dropped."""

    def apply_latest(self, event: WatchEvent) -> bool:
        """One object's newest state from a source that may deliver objects out of global order
        or twice: applied only if newer than the cached object. Returns whether it was."""

    def forget_revision(self) -> None:
        """The revision is no longer served (compacted): the next step lists."""


class Transport(abc.ABC):
    """How one informer's desired state reaches it. One instance per informer."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def step(self, target: Target) -> None:
        """One round: list if the target has no revision yet, then follow changes until the
        round is over (a watch stream ended, a poll interval passed, ...). Raises the client's
        errors; the informer decides what they mean."""

    async def close(self) -> None:
        """Release connections the transport opened (NATS); called when the informer stops."""
        return None


# An informer with at least this many cached objects catches up by digests instead of a list.
DIGEST_MIN_OBJECTS = 1_000
_BUCKETS_PER_REQUEST = 400  # bucket numbers per request: keeps the URL under 4 KB


async def list_into(target: Target) -> None:
    """A consistent picture into the target (the start of every transport, and after a 410).

    A first list is a paginated list. An informer that already holds many objects (it was away
    long enough for its revision to be compacted) compares bucket digests with the server
    instead, and fetches only the buckets that differ."""
    if len(target.cached_versions()) >= DIGEST_MIN_OBJECTS:
        await digest_sync(target)
        return
    result = await target.client.list_all(
        target.resource, namespace=target.namespace, label_selector=target.label_selector,
        field_selector=target.field_selector, limit=target.page_size,
    )
    target.stats.lists += 1
    target.replace(result.items, result.resource_version)


async def digest_sync(target: Target) -> None:
    """Make the target equal to the server by fetching only the buckets whose digests differ.

    The digests are taken at revision R, the buckets fetched at R or later; the target then
    resumes from R, and anything it replays that its cache already has newer is dropped (the
    informer never applies an older state of an object)."""
    cached = target.cached_versions()
    n = digest.bucket_count(len(cached))
    rv, encoded = await target.client.bucket_digests(
        target.resource, n, namespace=target.namespace, label_selector=target.label_selector,
        field_selector=target.field_selector)
    theirs = digest.decode(encoded, n)
    mine = digest.digests(cached, n)
    wanted = digest.differing(mine, theirs)
    items: builtins.list[Object] = []
    for i in range(0, len(wanted), _BUCKETS_PER_REQUEST):
        page = await target.client.list_buckets(
            target.resource, wanted[i:i + _BUCKETS_PER_REQUEST], n, namespace=target.namespace,
            label_selector=target.label_selector, field_selector=target.field_selector)
        items += page.items
    target.stats.digest_syncs += 1
    target.stats.digest_buckets_fetched += len(wanted)
    chosen = set(wanted)
    target.replace(items, rv, scope=lambda key: digest.bucket_of(key, n) in chosen)


async def catch_up(target: Target) -> int:
    """Every change after the target's revision up to the server's current one, in one short
    request (the server's ``catchUp`` watch). Returns how many changes it applied."""
    assert target.resource_version is not None
    before = target.stats.events
    target.stats.polls += 1
    stream = target.client.watch(
        target.resource, namespace=target.namespace, resource_version=target.resource_version,
        label_selector=target.label_selector, field_selector=target.field_selector,
        allow_bookmarks=True, idle_timeout=target.idle_timeout, catch_up=True,
    )
    async with stream:
        async for event in stream:
            target.apply(event)
    return target.stats.events - before
