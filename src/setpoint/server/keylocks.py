"""Per-key locks for writes that retry on conflict.

A write without a client precondition (a merge patch, a finalizer change) re-reads and
retries when another write lands first. Many such writers on one key in one server can
starve one of them: each retry reads, another writer commits, the retry loses again.
Queueing them on a lock per key makes this server's writers to a key take turns (asyncio
locks wake waiters in order), so a retry only loses to writers in other servers. The map
holds a key only while someone holds or waits for its lock, so it stays as small as the
number of keys being written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def users(self, key: str) -> int:
        """How many writers hold or wait for ``key``'s lock."""
        entry = self._locks.get(key)
        return entry[1] if entry else 0

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
