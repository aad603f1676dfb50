"""Idempotency-Key for POST: a retried create returns the first response instead of a second object.

A client that timed out cannot know whether its create happened; with a key it may simply send
the same request again. The same key with the same body replays the recorded response; with a
different body it is a client bug (422); while the first request is still running the retry
gets 409 and should try again shortly.

Records live in memory for ``ttl`` seconds, bounded in number. A create that did happen but whose
record was lost (server restarted) is still recognised: the server stamps the key's digest on the
object it creates (annotation ``setpoint.dev/idempotency-key``), and derives generated names from
the key, so the retry meets the existing object instead of making another.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from setpoint.server.errors import Conflict, Invalid

ANNOTATION = "setpoint.dev/idempotency-key"


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(slots=True)
class Recorded:
    body_digest: str
    expires: float
    done: asyncio.Future[tuple[int, bytes]]


class IdempotencyCache:
    def __init__(self, ttl: float = 24 * 3600.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Recorded] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._entries:
            key, rec = next(iter(self._entries.items()))
            if rec.expires > now and len(self._entries) <= self.max_entries:
                break
            if not rec.done.done() and rec.expires > now:
                break  # never evict a request that is still running
            self._entries.pop(key)

    def begin(self, key: str, body_digest: str) -> tuple[int, bytes] | None:
        """Reserve ``key``. Returns the recorded (status, body) for a replay, None to proceed."""
        now = time.monotonic()
        self._expire(now)
        rec = self._entries.get(key)
        if rec is not None and rec.expires > now:
            if rec.body_digest != body_digest:
                raise Invalid(
                    "Idempotency-Key was already used with a different request body",
                    causes=[("FieldValueInvalid", "reused with a different body", "Idempotency-Key")],
                )
            if not rec.done.done():
                raise Conflict(
                    "a request with this Idempotency-Key is still in progress; retry shortly",
                    retry_after=1,
                )
            return rec.done.result()
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._entries[key] = Recorded(body_digest, now + self.ttl, fut)
        return None

    def finish(self, key: str, status: int, body: bytes) -> None:
        rec = self._entries.get(key)
        if rec is None or rec.done.done():
            return
        if status >= 500 or (status == 409 and b'"reason":"Conflict"' in body):
            # Transient outcome: forget it, so that a retry runs the request again.
            self._entries.pop(key, None)
            rec.done.set_result((status, body))
            return
        rec.done.set_result((status, body))

    def abandon(self, key: str) -> None:
        rec = self._entries.pop(key, None)
        if rec is not None and not rec.done.done():
            rec.done.cancel()
