"""The store service's framing: when a side's messages leave for the other side.

A frame goes at the end of the event loop's turn; with ``max_delay`` also in mid-turn, once the
first message of it has waited that long, so that a long turn (an API server handed many
requests at once) does not hold its first calls back from the store until its last is ready.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from setpoint.store import _wire as wire

from .conformance import DEADLINE


def _work(seconds: float) -> None:
    """Stand-in for a request's CPU work inside one loop turn (the loop does not run meanwhile)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def _outbox(a: socket.socket, max_delay: float | None) -> tuple[wire.Outbox, asyncio.Transport]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=a)
    box = wire.Outbox(loop, lambda message, error: None, max_delay=max_delay)
    box.transport = transport
    return box, transport


def _frames_now(b: socket.socket, reader: wire.Reader) -> list[list[Any]]:
    """The frames already in the socket, read without waiting."""
    try:
        return reader.feed(b.recv(1 << 20))
    except BlockingIOError:
        return []


async def _frames_until(b: socket.socket, reader: wire.Reader, count: int,
                        got: list[list[Any]]) -> list[list[Any]]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        while sum(len(f) for f in got) < count:
            got += reader.feed(await loop.sock_recv(b, 1 << 20))
    return got


async def test_a_turns_messages_leave_together_at_its_end(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    box, transport = await _outbox(a, max_delay=None)
    reader = wire.Reader()
    seen_mid_turn: list[list[Any]] = []

    def turn() -> None:
        for i in range(3):
            box.send([i, "get", "/k", 0])
            _work(0.002)
            seen_mid_turn.extend(_frames_now(b, reader))

    asyncio.get_running_loop().call_soon(turn)
    frames = await _frames_until(b, reader, 3, [])
    assert seen_mid_turn == []
    assert frames == [[[0, "get", "/k", 0], [1, "get", "/k", 0], [2, "get", "/k", 0]]]
    transport.close()


async def test_in_a_long_turn_waiting_messages_leave_after_max_delay(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    box, transport = await _outbox(a, max_delay=0.001)
    reader = wire.Reader()
    mid_turn: list[list[list[Any]]] = []

    def turn() -> None:
        box.send([1, "get", "/a", 0])
        box.send([2, "get", "/b", 0])  # no time has passed: both still wait
        mid_turn.append(_frames_now(b, reader))
        _work(0.002)
        box.send([3, "get", "/c", 0])  # the first has waited past max_delay: all three go now
        mid_turn.append(_frames_now(b, reader))
        box.send([4, "get", "/d", 0])  # the start of the next frame, sent when the turn ends
        mid_turn.append(_frames_now(b, reader))

    asyncio.get_running_loop().call_soon(turn)
    rest = await _frames_until(b, reader, 1, [])
    assert mid_turn == [[], [[[1, "get", "/a", 0], [2, "get", "/b", 0], [3, "get", "/c", 0]]], []]
    assert rest == [[[4, "get", "/d", 0]]]
    transport.close()
