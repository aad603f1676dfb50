"""The framing and the messages of the store service (``service.py``) and its client
(``remote.py``): how several API server processes share one embedded store.

A frame is a 4-byte big-endian length and a MessagePack array of messages; each side gathers the
messages of one event-loop turn into one frame, so a burst of requests costs one write(2) and one
decode, not one per request. Every message is an array whose first item is the request id:

- request: ``[id, op, *args]``: op ``get``, ``list``, ``create``, ``update``, ``delete``,
  ``rev`` (the current revision), ``compacted``, ``compact`` or ``watch``, with the arguments of
  the :class:`Backend` method of that name, in order;
- reply:   ``[id, OK, result]`` or ``[id, ERROR, class name, args]`` (a create's or an update's
  result is only ``[create_revision, mod_revision]``: the caller has the key and the value);
- a watch's batch of events: ``[id, EVENTS, [[type, key, value, create_rev, mod_rev], ...]]``;
  a watch ends only with an ERROR reply (the contract's watches end only on errors);
- ``[id, "unwatch"]`` from the client stops watch ``id``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from setpoint.store.backend import (
    Compacted,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    RevisionMismatch,
    StoreError,
    Unavailable,
    WatchOverflow,
)

OK, ERROR, EVENTS = 0, 1, 2
HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # the client lists in pages of LIST_PAGE keys: 256 of the largest objects fit
LIST_PAGE = 256

# The errors that cross the socket as themselves; anything else becomes Unavailable.
ERRORS: dict[str, Callable[..., Exception]] = {
    cls.__name__: cls
    for cls in (KeyExists, KeyNotFound, RevisionMismatch, Compacted, FutureRevision, WatchOverflow, Unavailable,
                ValueError)
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def frame(messages: Sequence[Any]) -> bytes:
    payload = _encoder.encode(messages)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"a frame of {len(payload)} bytes is over the limit")
    return HEADER.pack(len(payload)) + payload


def frames(messages: Sequence[Any], refuse: Callable[[Any, Exception], None]) -> bytes:
    """One frame of ``messages`` or, when that cannot be made (too big together, or a message
    that cannot be encoded), a frame per message; ``refuse(message, error)`` is told of each
    message that cannot go at all, so that its caller gets an error instead of waiting forever."""
    try:
        return frame(messages)
    except (TypeError, ValueError, OverflowError):
        pass
    parts = []
    for message in messages:
        try:
            parts.append(frame([message]))
        except (TypeError, ValueError, OverflowError) as e:
            refuse(message, e)
    return b"".join(parts)


def error_message(rid: int, error: BaseException) -> list[Any]:
    name = type(error).__name__
    if name in ERRORS and isinstance(error, (StoreError, ValueError)):
        return [rid, ERROR, name, list(error.__reduce__()[1])]
    return [rid, ERROR, "Unavailable", [f"store service: {type(error).__name__}: {error}"]]


def error_from(name: str, args: list[Any]) -> Exception:
    cls = ERRORS.get(name)
    if cls is None:
        return Unavailable(f"store service: {name}: {args}")
    try:
        return cls(*args)
    except TypeError:
        return Unavailable(f"store service: {name}: {args}")


def kv_out(kv: KeyValue) -> tuple[str, bytes, int, int]:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision)


def kv_in(item: list[Any]) -> KeyValue:
    return KeyValue(item[0], item[1], item[2], item[3])


def events_out(batch: list[Event]) -> list[tuple[str, str, bytes, int, int]]:
    return [(ev.type, ev.kv.key, ev.kv.value, ev.kv.create_revision, ev.kv.mod_revision) for ev in batch]


def events_in(items: list[list[Any]]) -> list[Event]:
    return [Event(t, KeyValue(k, v, c, m)) for t, k, v, c, m in items]


class Outbox:
    """The messages of one event-loop turn, sent as one frame when the turn ends (see the module
    docstring); ``refuse(message, error)`` is told of a message that cannot be sent.

    ``max_delay`` (seconds) also sends what has gathered once the first of it has waited that
    long, even in mid-turn. Why: an API server that is handed 32 requests in one turn spends
    milliseconds on them before the turn ends; sent only then, they reach the store together,
    the store's writer sits idle meanwhile and the server sits idle during the commit. Sent in
    pieces, the store commits the first while the server prepares the next.
    """

    __slots__ = ("_first", "_loop", "_max_delay", "_out", "_refuse", "_scheduled", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, refuse: Callable[[Any, Exception], None],
                 max_delay: float | None = None) -> None:
        self._loop = loop
        self._refuse = refuse
        self._max_delay = max_delay
        self._first = 0.0
        self._out: list[Any] = []
        self._scheduled = False
        self.transport: asyncio.Transport | None = None  # set by the protocol while connected

    def send(self, message: list[Any]) -> None:
        out = self._out
        out.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        if self._max_delay is None:
            return
        if len(out) == 1:
            self._first = time.perf_counter()
        elif time.perf_counter() - self._first >= self._max_delay:
            self._write()

    def _flush(self) -> None:
        self._scheduled = False
        self._write()

    def _write(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames(out, self._refuse))


class Reader:
    """Splits a byte stream into decoded frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        """The complete frames ``data`` finishes, each a list of messages. Raises ValueError on
        a frame no peer of this protocol would send."""
        buf = self._buf
        buf += data
        out: list[list[Any]] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - pos >= 4:
                (size,) = HEADER.unpack_from(view, pos)
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes is over the limit")
                if end - pos - 4 < size:
                    break
                messages = _decoder.decode(view[pos + 4:pos + 4 + size])
                if not isinstance(messages, list):
                    raise ValueError("a frame must hold a list of messages")
                out.append(messages)
                pos += 4 + size
        if pos:
            del buf[:pos]
        return out
